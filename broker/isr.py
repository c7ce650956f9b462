"""A leader's view of its followers: how far each got, the high-water mark, ISR changes.

Sans-IO (times and offsets in, decisions out); ``broker.replication`` feeds it each follower's
fetch and writes the ISR changes it asks for to etcd. Kafka's rules (``Partition``,
``Replica``):

* a follower's fetch offset is its log end: everything below it is written (and, on the fsync
  policy, durable) on the follower;
* a follower is caught up at a fetch if it reached the leader's log end as of that fetch, or
  the log end the leader had at its previous fetch (then it was caught up as of the previous
  one: a follower fetching continuously under steady produce never quite reaches the end);
* it leaves the ISR when not caught up for ``replica.lag.time.max.ms``; it joins the ISR once
  a fetch shows its log end at the high-water mark and the start of this leader's epoch. The
  verdict is the fetch's, kept until the ISR is written: judged again later, against a
  high-water mark the other followers have since moved on, a follower a few records behind
  under steady produce could wait indefinitely (Kafka expands the ISR at that fetch too);
* the high-water mark is the smallest log end in the ISR (the leader's own included) and never
  goes back while this broker leads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FollowerProgress:
    log_end: int = -1               # unknown until its first fetch in this epoch
    caught_up_ms: float = 0.0       # the last time it was known caught up
    leader_end_at_fetch: int = -1   # the leader's log end at its previous fetch
    fetch_ms: float = 0.0           # when that fetch came
    # A fetch found its log end at the high-water mark and this epoch's start: it may join.
    # Lost if its log end goes back (it restarted and truncated) or it leaves the ISR.
    reached_hwm: bool = False


class LeaderProgress:
    def __init__(self, me: int, replicas: tuple[int, ...], isr: tuple[int, ...], *,
                 epoch_start: int, high_watermark: int, now_ms: float) -> None:
        self.me = me
        self.replicas = replicas
        self.isr = isr
        self.epoch_start = epoch_start  # the leader's log end when it started leading
        self.high_watermark = high_watermark
        # Followers count as caught up when leadership starts: a dead one is dropped after a
        # full lag, not at once (the controller drops it sooner if its lease ends).
        self.followers = {replica: FollowerProgress(caught_up_ms=now_ms)
                          for replica in replicas if replica != me}

    def forget(self, replicas: set[int]) -> None:
        """These left the ISR (the controller saw them die, or this leader shrank it): what
        they reached before says nothing now, so they rejoin only after fetching again (else
        a dead follower's last progress would add it straight back)."""
        for replica in replicas:
            if replica in self.followers:
                self.followers[replica] = FollowerProgress(caught_up_ms=-1e18)

    def on_fetch(self, replica: int, fetch_offset: int, leader_end: int, now_ms: float) -> None:
        progress = self.followers.setdefault(replica, FollowerProgress(caught_up_ms=now_ms))
        if fetch_offset < progress.log_end:
            progress.reached_hwm = False
        if fetch_offset >= max(self.high_watermark, self.epoch_start):
            progress.reached_hwm = True
        progress.log_end = fetch_offset
        if fetch_offset >= leader_end:
            progress.caught_up_ms = now_ms
        elif fetch_offset >= progress.leader_end_at_fetch >= 0:
            progress.caught_up_ms = max(progress.caught_up_ms, progress.fetch_ms)
        progress.leader_end_at_fetch = leader_end
        progress.fetch_ms = now_ms

    def advance(self, leader_end: int) -> bool:
        """Recompute the high-water mark; True if it moved."""
        ends = [leader_end]
        for replica in self.isr:
            if replica != self.me:
                progress = self.followers.get(replica)
                ends.append(progress.log_end if progress is not None else -1)
        candidate = min(ends)
        if candidate > self.high_watermark:
            self.high_watermark = candidate
            return True
        return False

    def wanted_isr(self, leader_end: int, now_ms: float, lag_ms: float) -> tuple[int, ...]:
        """The ISR this leader should write (the current one when nothing changes), in
        replica order, always with the leader."""
        keep = {self.me}
        for replica in self.replicas:
            if replica == self.me:
                continue
            progress = self.followers.get(replica)
            if progress is None:
                continue
            if replica in self.isr:
                if now_ms - progress.caught_up_ms <= lag_ms:
                    keep.add(replica)
            elif progress.reached_hwm and now_ms - progress.caught_up_ms <= lag_ms:
                keep.add(replica)
        return tuple(replica for replica in self.replicas if replica in keep)
