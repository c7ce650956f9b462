"""CPU and memory of processes, read from /proc: which kelp processes to watch, and how hard
they work.

Finding kelp: the gateway is the ``python -m gateway`` whose ``--listen`` (or ``--advertise``)
is the bootstrap address we drive (its default 127.0.0.1:9092 when the flag is absent); the
broker is the ``-m broker`` whose ``--grpc`` is that gateway's ``--broker``; the sidecar is the
``-m rdma`` pointed at the same broker. Matching on addresses instead of names keeps the tool
honest on a machine where several kelps run (test suites start their own on free ports). When
nothing matches, a single process of each kind is taken; otherwise that kind is left out.

Sampling: utime+stime from ``/proc/<pid>/stat`` (clock ticks) and VmRSS from
``/proc/<pid>/status``. CPU % is per core, as ``top`` shows it (200 % = two cores busy).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MODULES = {"broker": "broker", "gateway": "gateway", "rdma": "sidecar"}
_DEFAULTS = {"gateway": {"--listen": "127.0.0.1:9092", "--broker": "127.0.0.1:17777"},
             "broker": {"--grpc": "127.0.0.1:17777"},
             "sidecar": {"--broker": "127.0.0.1:17777"}}


@dataclass
class KelpProcess:
    kind: str                      # broker | gateway | sidecar
    pid: int
    flags: dict[str, str] = field(default_factory=dict)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _kelp_kind(argv: list[str]) -> str | None:
    """``broker``/``gateway``/``sidecar`` when argv runs ``python -m broker|gateway|rdma``."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] in _MODULES:
            return _MODULES[argv[i + 1]]
    return None


def _flags(argv: list[str], kind: str) -> dict[str, str]:
    flags = dict(_DEFAULTS.get(kind, {}))
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                flags[name] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[name] = argv[i + 1]
    return flags


def scan() -> list[KelpProcess]:
    """Every kelp process on this machine, with the flags it was started with."""
    found: list[KelpProcess] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        kind = _kelp_kind(argv)
        if kind is not None:
            found.append(KelpProcess(kind, int(entry.name), _flags(argv, kind)))
    return found


def find_kelp(bootstrap: str) -> dict[str, int]:
    """{kind: pid} of the kelp processes serving ``bootstrap`` (see the module docstring)."""
    procs = scan()
    by_kind: dict[str, list[KelpProcess]] = {}
    for proc in procs:
        by_kind.setdefault(proc.kind, []).append(proc)
    addresses = {a.strip() for a in bootstrap.split(",") if a.strip()}
    gateway = next((p for p in by_kind.get("gateway", []) if addresses & {
        p.flags.get("--listen"), p.flags.get("--advertise")}), None)
    out: dict[str, int] = {}
    if gateway is not None:
        out["gateway"] = gateway.pid
        grpc = gateway.flags.get("--broker")
        broker = next((p for p in by_kind.get("broker", []) if p.flags.get("--grpc") == grpc),
                      None)
        if broker is not None:
            out["broker"] = broker.pid
        sidecar = next((p for p in by_kind.get("sidecar", []) if p.flags.get("--broker") == grpc),
                       None)
        if sidecar is not None:
            out["sidecar"] = sidecar.pid
    for kind in ("broker", "gateway", "sidecar"):
        if kind not in out and len(by_kind.get(kind, [])) == 1 and gateway is None:
            out[kind] = by_kind[kind][0].pid
    return out


@dataclass
class Sample:
    t: float          # seconds since the run started
    cpu_ticks: int
    rss_bytes: int


def read_sample(pid: int, t: float) -> Sample | None:
    """One reading of a process, or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields resume after the last
    # ')'. utime and stime are fields 14 and 15 overall, so 12 and 13 after the name.
    rest = stat[stat.rfind(")") + 2:].split()
    ticks = int(rest[11]) + int(rest[12])
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return Sample(t, ticks, int(line.split()[1]) * 1024)
    return None  # a zombie: exited, not yet reaped, no memory left to speak of


@dataclass
class Series:
    """Readings of one process (or the sum of a few) over a run."""

    name: str
    pids: list[int]
    samples: list[Sample] = field(default_factory=list)
    # Last CPU ticks seen per pid: a process that exits keeps its share, so the summed ticks
    # never go backwards when one of several workers finishes before the others.
    _ticks: dict[int, int] = field(default_factory=dict)

    def take(self, t: float) -> None:
        rss, alive = 0, False
        for pid in self.pids:
            reading = read_sample(pid, t)
            if reading is not None:
                alive = True
                rss += reading.rss_bytes
                self._ticks[pid] = reading.cpu_ticks
        if alive:
            self.samples.append(Sample(t, sum(self._ticks.values()), rss))

    def cpu_percent_last(self) -> float | None:
        if len(self.samples) < 2:
            return None
        a, b = self.samples[-2], self.samples[-1]
        return _cpu(a, b)

    def rss_mb_last(self) -> float | None:
        return self.samples[-1].rss_bytes / 1e6 if self.samples else None

    def summary(self, start: float, warm: float, end: float) -> dict[str, object]:
        """CPU and RSS between ``start`` and ``end`` (run seconds); growth is measured from the
        first sample at or after ``warm`` (caches and buffers fill first) to ``end``."""
        window = [s for s in self.samples if start <= s.t <= end] or self.samples[-1:]
        if not window:
            return {"pids": self.pids, "sampled": False}
        first, last = window[0], window[-1]
        steps = [_cpu(a, b) for a, b in itertools.pairwise(window)]
        warm_sample = next((s for s in window if s.t >= warm), last)
        after = [s for s in window if s.t >= warm_sample.t]
        return {
            "pids": self.pids,
            "sampled": True,
            "cpu_percent_avg": round(_cpu(first, last), 1) if last.t > first.t else None,
            "cpu_percent_max": round(max(steps), 1) if steps else None,
            "cpu_seconds": round((last.cpu_ticks - first.cpu_ticks) / _TICKS, 2),
            "rss_mb_start": round(first.rss_bytes / 1e6, 1),
            "rss_mb_warm": round(warm_sample.rss_bytes / 1e6, 1),
            "rss_mb_end": round(last.rss_bytes / 1e6, 1),
            "rss_mb_max": round(max(s.rss_bytes for s in window) / 1e6, 1),
            "rss_growth_mb": round((last.rss_bytes - warm_sample.rss_bytes) / 1e6, 1),
            "rss_slope_mb_per_min": _slope_mb_per_min(after),
        }


def _cpu(a: Sample, b: Sample) -> float:
    if b.t <= a.t:
        return 0.0
    return 100.0 * (b.cpu_ticks - a.cpu_ticks) / _TICKS / (b.t - a.t)


def _slope_mb_per_min(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over time: a leak shows as a steady slope, noise does not."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(s.t for s in samples) / n
    mean_r = sum(s.rss_bytes for s in samples) / n
    var = sum((s.t - mean_t) ** 2 for s in samples)
    if var == 0:
        return None
    cov = sum((s.t - mean_t) * (s.rss_bytes - mean_r) for s in samples)
    return round(cov / var * 60 / 1e6, 2)
