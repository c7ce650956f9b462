"""Showing a run: live progress while it runs, then the result as JSON, text and (optionally) a
PNG.

Live progress is a rich table redrawn in place when stdout is a terminal and rich is installed,
and otherwise one plain line every ``--interval`` seconds (CI logs, pipes). The result is one
JSON document (its shape is :func:`build_result`'s; ``schema`` names its version) from which the
console summary, the pass/fail verdict and the plot are all derived, so the three never
disagree. matplotlib is optional: without it the plot is skipped and the JSON says why.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kelp.loadtest.runner import LoadTest

SCHEMA = "kelp-loadtest/1"
KELP_PROCESSES = ("broker", "gateway", "sidecar")
# Resident memory needs time to settle (allocator arenas, client buffers, caches) before growth
# means anything: growth is measured from this far into the produce phase.
WARMUP_FRACTION, WARMUP_MAX_S = 0.2, 30.0


@dataclass
class Progress:
    """One second of a run, as the displays show it (rates are over the last interval)."""

    profile: str
    phase: str
    elapsed: float
    duration: float
    sent: int
    acked: int
    consumed: int
    outstanding: int
    duplicates: int
    errors: int
    acked_per_s: float
    consumed_per_s: float
    produce_mb_per_s: float
    consume_mb_per_s: float
    produce_p99_ms: float | None
    e2e_p99_ms: float | None
    processes: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


class Display(Protocol):
    def update(self, progress: Progress) -> None: ...
    def log(self, text: str) -> None: ...
    def close(self) -> None: ...


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _proc_text(name: str, cpu: float | None, rss: float | None) -> str:
    cpu_text = "-" if cpu is None else f"{cpu:.0f}%"
    rss_text = "-" if rss is None else f"{rss:.0f}MB"
    return f"{name} {cpu_text} {rss_text}"


class PlainDisplay:
    """A progress line every ``interval`` seconds and at every phase change."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = 0.0
        self._phase = ""

    def update(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and p.phase == self._phase:
            return
        self._last, self._phase = now, p.phase
        procs = " ".join(_proc_text(n, c, r) for n, (c, r) in p.processes.items())
        print(f"[{p.elapsed:6.1f}s/{p.duration:.0f}s {p.phase}] sent {p.sent:,} "
              f"acked {p.acked:,} ({p.acked_per_s:,.0f}/s {p.produce_mb_per_s:.2f} MB/s) "
              f"consumed {p.consumed:,} ({p.consumed_per_s:,.0f}/s) "
              f"outstanding {p.outstanding:,} dup {p.duplicates:,} err {p.errors:,} | p99 "
              f"produce {_ms(p.produce_p99_ms)} e2e {_ms(p.e2e_p99_ms)} | {procs}", flush=True)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class RichDisplay:
    """A table redrawn in place (rich.live)."""

    def __init__(self) -> None:
        from rich.live import Live

        self._live = Live(refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, p: Progress) -> None:
        from rich.table import Table

        table = Table(title=f"kelp loadtest {p.profile}: {p.phase} {p.elapsed:.0f}s of "
                            f"{p.duration:.0f}s", show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("produced", f"{p.acked:,} acked of {p.sent:,} sent   "
                                  f"{p.acked_per_s:,.0f} rec/s   {p.produce_mb_per_s:.2f} MB/s")
        table.add_row("consumed", f"{p.consumed:,}   {p.consumed_per_s:,.0f} rec/s   "
                                  f"{p.consume_mb_per_s:.2f} MB/s   outstanding "
                                  f"{p.outstanding:,}")
        table.add_row("p99", f"produce {_ms(p.produce_p99_ms)}   end-to-end {_ms(p.e2e_p99_ms)}")
        style = "red" if p.duplicates or p.errors else "green"
        table.add_row("problems", f"[{style}]duplicates {p.duplicates:,}   errors "
                                  f"{p.errors:,}[/{style}]")
        for name, (cpu, rss) in p.processes.items():
            table.add_row(name, _proc_text("", cpu, rss).strip())
        self._live.update(table)

    def log(self, text: str) -> None:
        self._live.console.print(text)

    def close(self) -> None:
        self._live.stop()


def make_display(live: bool, interval: float) -> Display:
    """rich when asked for, on a terminal, and installed; plain lines otherwise."""
    if live and sys.stdout.isatty():
        try:
            return RichDisplay()
        except ImportError:
            pass
    return PlainDisplay(interval)


# ---------------------------------------------------------------------------------------------
# the result


def _rate(count: float, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and seconds > 0 else None


def build_result(test: LoadTest) -> dict[str, Any]:
    """Everything a run measured, as one JSON-able dict (see the README for each field)."""
    p, t = test.profile, test.tally
    verdict = test.ledger.verdict()
    producers = test.workers_of("producer")
    consumers = test.workers_of("consumer")
    firsts = [w.final["first_ns"] for w in producers if w.final.get("first_ns")]
    first_ns = min(firsts) if firsts else 0
    last_ack_ns = max((w.last_ns for w in producers), default=0)
    last_consume_ns = max((w.last_ns for w in consumers), default=0)
    produce_s = (last_ack_ns - first_ns) / 1e9 if first_ns and last_ack_ns else None
    consume_s = (last_consume_ns - first_ns) / 1e9 if first_ns and last_consume_ns else None
    target = p.producers * p.rate if p.rate else None
    produce_rate = _rate(t.acked, produce_s)

    load_start = test.load_start if test.load_start is not None else 0.0
    end = test.drain_end if test.drain_end is not None else test.now()
    warm = load_start + min(WARMUP_MAX_S, WARMUP_FRACTION * p.duration)
    resources: dict[str, Any] = {}
    for name in KELP_PROCESSES:
        series = test.kelp.get(name)
        resources[name] = (series.summary(load_start - 1.5, warm, end) if series is not None
                           else None)
    for name, series in test.kelp.items():
        if name not in resources:
            resources[name] = series.summary(load_start - 1.5, warm, end)
    for name, series in test.clients.items():
        resources[name] = series.summary(load_start - 1.5, warm, end)

    undelivered = sum(w.final.get("undelivered", 0) for w in producers)
    failed = sum(test.ledger.failure_reasons.values())
    consumer_errors = sum(t.consumer_errors.values())
    errors = (test.ledger.error_count() + undelivered + consumer_errors + t.decode_errors
              + t.header_mismatches + verdict.unacked_consumed + verdict.invalid)
    return {
        "schema": SCHEMA,
        "profile": dataclasses.asdict(p),
        "run": {"id": f"{test.run_id:08x}", "bootstrap": test.options.bootstrap,
                "topics": list(test.topics), "group": test.group,
                "started_at": datetime.fromtimestamp(test.started_wall, UTC).isoformat(),
                "interrupted": bool(test.interrupts)},
        "phases_s": {
            "setup": round(load_start, 2),
            "produce": _round_or_none(test.produce_end, load_start),
            "drain": _round_or_none(test.drain_end, test.produce_end)},
        "produced": {"sent": sum(w.sent for w in producers), "acked": t.acked,
                     "failed": failed, "failure_reasons": dict(test.ledger.failure_reasons),
                     "undelivered": undelivered, "bytes": t.acked_bytes},
        "consumed": {"records": t.consumed, "unique": verdict.consumed_unique,
                     "bytes": t.consumed_bytes, "errors": dict(t.consumer_errors),
                     "decode_errors": t.decode_errors,
                     "first_decode_error": t.first_decode_error or None,
                     "header_mismatches": t.header_mismatches,
                     "foreign_records": t.foreign, "schema_ids": sorted(t.schema_ids)},
        "throughput": {
            "produce_records_per_s": produce_rate,
            "produce_mb_per_s": _mb(t.acked_bytes, produce_s),
            "consume_records_per_s": _rate(t.consumed, consume_s),
            "consume_mb_per_s": _mb(t.consumed_bytes, consume_s),
            "target_records_per_s": target,
            "achieved_ratio": round(produce_rate / target, 3) if target and produce_rate
            else None},
        "latency_ms": {"produce": t.produce.summary_ms(), "end_to_end": t.e2e.summary_ms()},
        "verification": {**dataclasses.asdict(verdict), "ok": verdict.ok},
        "errors": {"total": errors, "max_allowed": p.max_errors},
        "registry": test.registry,
        "resources": resources,
        "timeline": test.timeline,
        "plot": None,
        "notes": list(test.notes),
        "failures": list(test.failures),
    }


def _round_or_none(end: float | None, start: float | None) -> float | None:
    return round(end - start, 2) if end is not None and start is not None else None


def _mb(nbytes: int, seconds: float | None) -> float | None:
    return round(nbytes / seconds / 1e6, 3) if seconds and seconds > 0 else None


def judge(result: dict[str, Any]) -> list[str]:
    """Why the run failed (empty when it passed); also sets ``ok`` and ``exit_code``."""
    failures = list(result["failures"])
    v, profile = result["verification"], result["profile"]
    if result["produced"]["acked"] == 0:
        failures.append("no record was acknowledged")
    if v["lost"]:
        failures.append(f"{v['lost']:,} acknowledged records were never consumed")
    if v["aborted_consumed"]:
        failures.append(f"{v['aborted_consumed']:,} records of aborted transactions were "
                        "consumed")
    if v["duplicated"]:
        failures.append(f"{v['duplicated']:,} records were consumed more than once "
                        f"({v['extra_deliveries']:,} extra deliveries)")
    if result["errors"]["total"] > profile["max_errors"]:
        failures.append(f"{result['errors']['total']:,} errors (at most "
                        f"{profile['max_errors']} allowed)")
    if result["profile"]["value"] == "avro" and result["consumed"]["records"] and not (
            result["consumed"]["schema_ids"]):
        failures.append("Avro values carried no schema id")
    limit = profile["rss_growth_limit_mb"]
    if limit is not None:
        for name in KELP_PROCESSES:
            res = result["resources"].get(name)
            if res and res.get("sampled") and res["rss_growth_mb"] > limit:
                failures.append(f"{name} RSS grew {res['rss_growth_mb']} MB after warm-up "
                                f"(bound {limit} MB)")
    result["failures"] = failures
    result["ok"] = not failures
    result["exit_code"] = 0 if not failures else 1
    return failures


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def plot(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """Throughput, p50/p99 latency and kelp's RSS over time, as a PNG (if matplotlib is)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return {"path": str(path), "written": False,
                "note": "matplotlib is not installed (pip install matplotlib); no plot"}
    timeline = result["timeline"]
    if not timeline:
        return {"path": str(path), "written": False, "note": "no samples to plot"}
    ts = [point["t"] for point in timeline]
    fig, (rate_ax, lat_ax, mem_ax) = plt.subplots(3, 1, sharex=True, figsize=(10, 9))
    rate_ax.plot(ts, [pt["acked_per_s"] for pt in timeline], label="acked/s")
    rate_ax.plot(ts, [pt["consumed_per_s"] for pt in timeline], label="consumed/s")
    rate_ax.set_ylabel("records/s")
    rate_ax.legend(loc="upper right")
    for key, label in (("produce_p50_ms", "produce p50"), ("produce_p99_ms", "produce p99"),
                       ("e2e_p50_ms", "end-to-end p50"), ("e2e_p99_ms", "end-to-end p99")):
        lat_ax.plot(ts, [pt[key] if pt[key] is not None else float("nan") for pt in timeline],
                    label=label)
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_yscale("log")
    lat_ax.legend(loc="upper right")
    for name in sorted({n for pt in timeline for n in pt["rss_mb"]}):
        mem_ax.plot(ts, [pt["rss_mb"].get(name) or float("nan") for pt in timeline], label=name,
                    linestyle="-" if name in KELP_PROCESSES else ":")  # the load generators
    mem_ax.set_ylabel("RSS (MB)")
    mem_ax.set_xlabel("seconds since load started")
    mem_ax.legend(loc="upper right")
    fig.suptitle(f"kelp loadtest {result['profile']['name']} ({result['run']['id']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"path": str(path), "written": True}


def _fmt(value: float | None, unit: str = "", spec: str = ",.0f") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render_summary(result: dict[str, Any]) -> str:
    """The console report: the same numbers as the JSON, for people."""
    p, v = result["profile"], result["verification"]
    tp, lat = result["throughput"], result["latency_ms"]
    produced, consumed = result["produced"], result["consumed"]
    verdict = "PASS" if result.get("ok") else "FAIL"
    rate = f"{p['rate']:,} rec/s per producer" if p["rate"] else "unthrottled"
    lines = [
        f"kelp loadtest {p['name']}: {verdict} ({v['lost']:,} lost, {v['duplicated']:,} "
        f"duplicated, {result['errors']['total']:,} errors)"
        + (" - interrupted, stopped early" if result["run"]["interrupted"] else ""),
        f"  workload   {p['producers']} producers x {p['consumers']} consumers, {p['topics']} "
        f"topics x {p['partitions']} partitions, {p['value']} {p['size']} B, {rate}, "
        f"acks={p['acks']}{' idempotent' if p['idempotence'] else ''}, "
        f"compression={p['compression']}, {p['duration']:g} s",
        f"  produced   {produced['acked']:,} acked of {produced['sent']:,} sent "
        f"({produced['failed']:,} failed, {produced['undelivered']:,} undelivered): "
        f"{_fmt(tp['produce_records_per_s'])} rec/s, {_fmt(tp['produce_mb_per_s'], '', '.2f')}"
        f" MB/s" + (f" (target {tp['target_records_per_s']:,} rec/s, achieved "
                    f"{tp['achieved_ratio'] or 0:.1%})" if tp["target_records_per_s"] else ""),
        f"  consumed   {consumed['records']:,} ({consumed['unique']:,} unique): "
        f"{_fmt(tp['consume_records_per_s'])} rec/s, {_fmt(tp['consume_mb_per_s'], '', '.2f')}"
        " MB/s",
    ]
    for label, key in (("produce", "produce"), ("end-to-end", "end_to_end")):
        h = lat[key]
        lines.append(f"  {label:10} latency p50 {_fmt(h['p50'], ' ms', '.2f')}, p99 "
                     f"{_fmt(h['p99'], ' ms', '.2f')}, p99.9 {_fmt(h['p999'], ' ms', '.2f')}, "
                     f"max {_fmt(h['max'], ' ms', '.2f')}")
    lines.append(f"  verify     lost {v['lost']:,}, duplicated {v['duplicated']:,}, out of order "
                 f"{v['out_of_order']:,}, failed {v['failed']:,}, unacked consumed "
                 f"{v['unacked_consumed']:,}, header mismatches {consumed['header_mismatches']:,}"
                 f", decode errors {consumed['decode_errors']:,}")
    if result["registry"]:
        reg = result["registry"]
        lines.append(f"  registry   {reg['url']}: {len(reg['subjects'])} subjects, schema ids "
                     f"{reg['schema_ids']}; consumed values carried ids {consumed['schema_ids']}")
    lines.append("  process       cpu avg  cpu max  rss start  rss warm  rss end  rss max  growth"
                 "  slope/min")
    for name, res in result["resources"].items():
        if not res or not res.get("sampled"):
            lines.append(f"  {name:12} (not found)")
            continue
        lines.append(
            f"  {name:12} {_fmt(res['cpu_percent_avg'], '%'):>7}  "
            f"{_fmt(res['cpu_percent_max'], '%'):>7}  {res['rss_mb_start']:>7.1f}MB  "
            f"{res['rss_mb_warm']:>6.1f}MB  {res['rss_mb_end']:>5.1f}MB  "
            f"{res['rss_mb_max']:>5.1f}MB  {res['rss_growth_mb']:>+5.1f}MB  "
            f"{_fmt(res['rss_slope_mb_per_min'], 'MB', '+.1f'):>8}")
    if result.get("plot"):
        plot_info = result["plot"]
        lines.append(f"  plot       {plot_info['path'] if plot_info['written'] else ''}"
                     f"{plot_info.get('note', '')}")
    for note in result["notes"]:
        lines.append(f"  note       {note.splitlines()[0]}")
    for failure in result.get("failures", []):
        lines.append(f"  FAILURE    {failure}")
    return "\n".join(lines)
