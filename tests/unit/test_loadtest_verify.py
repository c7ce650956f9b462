"""The load test's sans-IO parts: exactly-once accounting (gaps, duplicates, order, failures),
latency histograms, the verdict, and profile overrides."""

from __future__ import annotations

import os
import random

import pytest

from kelp.loadtest import procs
from kelp.loadtest.profiles import PROFILES, parse
from kelp.loadtest.stats import Histogram
from kelp.loadtest.verify import Ledger


def _ledger(acked: dict[int, range]) -> Ledger:
    ledger = Ledger()
    for producer, seqs in acked.items():
        ledger.acked_many(producer, seqs)
    return ledger


def test_everything_consumed_once_is_ok() -> None:
    ledger = _ledger({0: range(1000), 1: range(500)})
    for producer, count in ((0, 1000), (1, 500)):
        for seq in range(count):
            ledger.consumed(producer, seq, stream=seq % 3)
    verdict = ledger.verdict()
    assert verdict.ok
    assert (verdict.acked, verdict.consumed_unique, verdict.deliveries) == (1500, 1500, 1500)
    assert (verdict.lost, verdict.duplicated, verdict.out_of_order) == (0, 0, 0)
    assert ledger.outstanding == 0


def test_gaps_are_lost_and_reported_as_ranges() -> None:
    ledger = _ledger({0: range(100), 7: range(10)})
    for seq in range(100):
        if not 10 <= seq < 20 and seq != 42 and seq != 99:
            ledger.consumed(0, seq, stream=0)
    for seq in range(10):
        ledger.consumed(7, seq, stream=0)
    verdict = ledger.verdict()
    assert not verdict.ok
    assert verdict.lost == 12
    assert verdict.lost_ranges == {"0": [[10, 19], [42, 42], [99, 99]]}
    assert ledger.outstanding == 12


def test_duplicates_are_counted_once_per_record_with_extra_deliveries() -> None:
    ledger = _ledger({0: range(10)})
    for seq in range(10):
        ledger.consumed(0, seq, stream=0)
    for _ in range(3):
        ledger.consumed(0, 4, stream=0)   # delivered four times in all
    ledger.consumed(0, 8, stream=0)
    verdict = ledger.verdict()
    assert (verdict.lost, verdict.duplicated, verdict.extra_deliveries) == (0, 2, 4)
    assert verdict.duplicate_samples == [[0, 4, 4], [0, 8, 2]]
    assert not verdict.ok


def test_redelivery_after_a_rebalance_is_a_duplicate_not_a_reorder() -> None:
    ledger = _ledger({0: range(20)})
    for seq in range(15):
        ledger.consumed(0, seq, stream=("t", 0))
    for seq in range(10, 20):             # the next owner starts from an older commit
        ledger.consumed(0, seq, stream=("t", 0))
    verdict = ledger.verdict()
    assert (verdict.duplicated, verdict.out_of_order, verdict.lost) == (5, 0, 0)


def test_out_of_order_within_a_stream_is_counted_but_not_lost() -> None:
    ledger = _ledger({0: range(6)})
    for seq in (0, 1, 3, 2, 5, 4):
        ledger.consumed(0, seq, stream=0)
    verdict = ledger.verdict()
    assert verdict.out_of_order == 2
    assert verdict.ok


def test_interleaved_streams_are_not_out_of_order() -> None:
    # Sequences are per producer, spread over partitions: each stream alone is increasing.
    ledger = _ledger({0: range(30)})
    order = [s for s in range(30) if s % 3 == 2] + [s for s in range(30) if s % 3 != 2]
    for seq in order:
        ledger.consumed(0, seq, stream=seq % 3)
    assert ledger.verdict().out_of_order == 0


def test_consumed_before_its_ack_arrives_keeps_outstanding_right() -> None:
    ledger = Ledger()
    for seq in range(5):
        ledger.consumed(0, seq)
    assert ledger.outstanding == 0
    assert ledger.verdict().unacked_consumed == 5
    ledger.acked_many(0, range(8))
    assert ledger.outstanding == 3
    verdict = ledger.verdict()
    assert (verdict.unacked_consumed, verdict.lost) == (0, 3)
    assert verdict.lost_ranges == {"0": [[5, 7]]}


def test_failed_records_are_errors_not_losses_even_if_they_show_up() -> None:
    ledger = _ledger({0: range(0, 10, 2)})
    for seq in range(1, 10, 2):
        ledger.failed(0, seq, "_MSG_TIMED_OUT")
    for seq in range(0, 10, 2):
        ledger.consumed(0, seq)
    ledger.consumed(0, 3)                 # timed out, yet written: Kafka allows that
    verdict = ledger.verdict()
    assert (verdict.failed, verdict.failed_consumed, verdict.lost) == (5, 1, 0)
    assert ledger.failure_reasons == {"_MSG_TIMED_OUT": 5}
    ledger.acked(0, 1)                    # a late contradictory report changes nothing
    assert ledger.verdict().failed == 5


def test_absurd_sequences_are_counted_invalid_without_growing_the_table() -> None:
    ledger = Ledger()
    ledger.consumed(0, 1 << 60)
    ledger.acked(0, -1)
    verdict = ledger.verdict()
    assert verdict.invalid == 2
    assert verdict.deliveries == 0


def test_large_shuffled_run_counts_match_a_naive_model() -> None:
    rng = random.Random(7)
    ledger, acked, seen = Ledger(), set(), {}
    for producer in range(3):
        for seq in range(20_000):
            if rng.random() < 0.999:
                acked.add((producer, seq))
    events = [key for key in acked if rng.random() > 0.0005]
    events += rng.sample(events, 50)      # duplicates
    rng.shuffle(events)
    for producer, seq in events:
        ledger.consumed(producer, seq)
        seen[(producer, seq)] = seen.get((producer, seq), 0) + 1
    for producer, seq in acked:
        ledger.acked(producer, seq)
    verdict = ledger.verdict()
    assert verdict.lost == len(acked - seen.keys()) == ledger.outstanding
    assert verdict.duplicated == sum(1 for n in seen.values() if n > 1)
    assert verdict.extra_deliveries == sum(n - 1 for n in seen.values())


def test_histogram_percentiles_are_within_half_a_percent() -> None:
    rng = random.Random(3)
    samples = [int(rng.lognormvariate(8, 1.5)) for _ in range(50_000)]
    first, second = Histogram(), Histogram()
    for i, sample in enumerate(samples):
        (first if i % 2 else second).record(sample)
    merged = Histogram()
    merged.merge(first)
    buckets, max_us = second.take()
    merged.merge(buckets, max_us)
    assert second.count == 0
    ordered = sorted(samples)
    for q, got in zip((0.5, 0.99, 0.999), merged.percentiles((0.5, 0.99, 0.999)), strict=True):
        exact = ordered[int(q * len(ordered) + 0.999999) - 1]
        assert got is not None
        assert abs(got - exact) <= max(1, exact * 0.005), (q, got, exact)
    assert merged.summary_ms()["max"] == max(samples) / 1000
    assert Histogram().summary_ms()["p99"] is None


def test_profile_flags_override_and_acks_turns_idempotence_off() -> None:
    profile, options = parse(["standard", "--duration", "8", "--rate", "0", "--acks", "1",
                              "--value", "json", "--kelp-pids", "broker=12,gateway=34"])
    assert (profile.duration, profile.rate, profile.acks, profile.value) == (8, 0, "1", "json")
    assert profile.idempotence is False
    assert (profile.topics, profile.partitions) == (5, 3)
    assert options.kelp_pids == {"broker": 12, "gateway": 34}
    assert PROFILES["quick"].producers == PROFILES["quick"].consumers == 1
    with pytest.raises(SystemExit):
        parse(["quick", "--acks", "1", "--idempotence", "true"])


def test_kelp_command_lines_are_recognised_and_sampled() -> None:
    argv = ["/usr/bin/python3", "-m", "gateway", "--listen", "127.0.0.1:5", "--broker=h:7"]
    assert procs._kelp_kind(argv) == "gateway"
    assert procs._flags(argv, "gateway")["--broker"] == "h:7"
    assert procs._kelp_kind(["python3", "-m", "rdma"]) == "sidecar"
    assert procs._kelp_kind(["python3", "-m", "pytest"]) is None
    series = procs.Series("me", [os.getpid()])
    series.take(0.0)
    sum(range(2_000_000))
    series.take(0.5)
    summary = series.summary(0.0, 0.0, 1.0)
    assert summary["sampled"] and summary["rss_mb_end"] > 1
