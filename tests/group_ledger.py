"""The books of a consumer-group scenario: what each member owns and what it consumed.

Members report every rebalance callback and every processed batch here; the scenario reads it
to decide whether the group behaved (see ``tests.group_scenarios`` for the rules it checks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.kelp_procs import Cluster


@dataclass
class Event:
    at: float
    member: str
    kind: str  # assign | revoke | lost | close
    partitions: tuple[int, ...]


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    consumed: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    owned: dict[str, set[int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    commit_failures: list[str] = field(default_factory=list)
    allowed_duplicates: set[tuple[int, int]] = field(default_factory=set)
    cluster: Cluster | None = None  # if set, waits fail at once when a process has exited

    def assigned(self, member: str, partitions: Iterable[int]) -> None:
        parts = tuple(sorted(partitions))
        with self.lock:
            for p in parts:
                holders = [m for m, owned in self.owned.items() if m != member and p in owned]
                if holders:
                    self.violations.append(
                        f"{member} was assigned partition {p} while {holders} still owned it")
            self.owned.setdefault(member, set()).update(parts)
            self.events.append(Event(time.monotonic(), member, "assign", parts))

    def revoked(self, member: str, partitions: Iterable[int], kind: str = "revoke") -> None:
        parts = tuple(sorted(partitions))
        with self.lock:
            self.owned.setdefault(member, set()).difference_update(parts)
            self.events.append(Event(time.monotonic(), member, kind, parts))

    def record(self, member: str, batch: list[tuple[int, int, bytes]]) -> None:
        with self.lock:
            owned = self.owned.get(member, set())
            for p, offset, value in batch:
                if p not in owned:
                    self.violations.append(
                        f"{member} consumed partition {p} offset {offset} without owning it")
                self.consumed.append((p, offset, value, member))

    def snapshot(self) -> dict[str, frozenset[int]]:
        with self.lock:
            return {m: frozenset(o) for m, o in self.owned.items()}

    def consumed_values(self) -> set[bytes]:
        with self.lock:
            return {value for _p, _o, value, _m in self.consumed}

    def events_since(self, since: float) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.at >= since]

    def fail_fast(self) -> None:
        with self.lock:
            if self.errors:
                raise AssertionError("a consumer thread failed:\n" + "\n".join(self.errors))
        if self.cluster is not None:
            for proc in (self.cluster.broker, self.cluster.gateway):
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise AssertionError(f"the {proc.name} exited unexpectedly with "
                                         f"{proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
