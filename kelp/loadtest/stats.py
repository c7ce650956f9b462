"""Latency histograms that merge across processes: log-linear buckets, like HdrHistogram's.

A load test produces millions of latency samples in several processes; keeping them all to sort
them is not an option. Every sample (in microseconds) goes into a bucket whose width is at most
1/256 of its value, so any percentile read back is within 0.4 % of the true sample. Buckets are
plain ``{key: count}`` dicts: a worker ships the buckets it filled since its last report, the
coordinator adds them up, and percentiles come from the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# 8 significant bits per bucket: relative width <= 1/256 (values below 256 us are exact).
_BITS = 8


def bucket_of(micros: int) -> int:
    """The bucket key of a sample: (shift << 8) | top 8 bits of the value."""
    if micros < (1 << _BITS):
        return max(micros, 0)
    shift = micros.bit_length() - _BITS
    return (shift << _BITS) | (micros >> shift)


def bucket_value(key: int) -> float:
    """A representative value (the middle) of a bucket, in microseconds."""
    shift, top = key >> _BITS, key & ((1 << _BITS) - 1)
    if shift == 0:
        return float(top)
    return float((top << shift) + ((1 << shift) >> 1))


class Histogram:
    """Counts of latency samples per bucket; ``record`` is cheap enough for a per-message path."""

    __slots__ = ("buckets", "count", "max_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max_us = 0

    def record(self, micros: int) -> None:
        key = bucket_of(micros)
        self.buckets[key] = self.buckets.get(key, 0) + 1
        self.count += 1
        if micros > self.max_us:
            self.max_us = micros

    def merge(self, other: Histogram | Mapping[int, int], max_us: int = 0) -> None:
        """Add another histogram (or a shipped bucket dict and its max) into this one."""
        if isinstance(other, Histogram):
            buckets, max_us = other.buckets, max(max_us, other.max_us)
        else:
            buckets = other
        for key, count in buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + count
            self.count += count
        self.max_us = max(self.max_us, max_us)

    def percentiles(self, quantiles: Iterable[float]) -> list[float | None]:
        """Values (microseconds) at each quantile in [0, 1]; None when there are no samples."""
        wanted = list(quantiles)
        if not self.count:
            return [None] * len(wanted)
        ordered = sorted(self.buckets.items())
        out: list[float | None] = []
        for q in wanted:
            # The rank of the sample at quantile q (nearest-rank definition).
            rank = max(1, min(self.count, int(q * self.count + 0.999999)))
            seen = 0
            for key, count in ordered:
                seen += count
                if seen >= rank:
                    out.append(min(bucket_value(key), float(self.max_us)))
                    break
        return out

    def summary_ms(self) -> dict[str, float | int | None]:
        """p50/p99/p99.9/max in milliseconds, and the sample count: the shape of the report."""
        p50, p99, p999 = self.percentiles((0.50, 0.99, 0.999))
        return {"count": self.count, "p50": _ms(p50), "p99": _ms(p99), "p999": _ms(p999),
                "max": _ms(float(self.max_us)) if self.count else None}

    def take(self) -> tuple[dict[int, int], int]:
        """The buckets and max so far, leaving this histogram empty (a worker's delta report)."""
        buckets, max_us = self.buckets, self.max_us
        self.buckets, self.count, self.max_us = {}, 0, 0
        return buckets, max_us


def _ms(micros: float | None) -> float | None:
    return None if micros is None else round(micros / 1000.0, 3)
