"""Client quotas enforced by the gateway: produce and fetch byte rates per client, measured
and throttled as Kafka does (KIP-13, KIP-219).

The quotas live in the broker (``broker.quotas``); each gateway reads them all, again as soon as
they change (a long poll) and at once after an AlterClientQuotas it served. A client's quota is
found by Kafka's precedence over user and client-id entities (the user is the connection's principal
name, ANONYMOUS without authentication). Its rate is measured over ``SAMPLES`` windows of
``WINDOW_S``; a response that takes it over the quota carries ``throttle_time_ms`` for the time
the client must wait to be back within it, and the gateway does not read that connection
meanwhile (KIP-219). A throttled fetch is answered empty, as Kafka answers it, so the data is
not counted twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from gateway.broker_client import BrokerClient, BrokerUnavailable
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.gateway.quotas")

ANONYMOUS = "ANONYMOUS"
PRODUCE, FETCH = "producer_byte_rate", "consumer_byte_rate"
WINDOW_S = 1.0  # Kafka's quota.window.size.seconds
SAMPLES = 11  # Kafka's quota.window.num
REFRESH_S = 5.0  # how often quotas are read again when the broker cannot be long-polled
POLL_WAIT_MS = 20_000  # how long the broker may hold a read of the quotas that did not change
MAX_TRACKED = 10_000  # clients with a rate being measured; the least recent are forgotten

Entity = tuple[tuple[str, str | None], ...]


def precedence(user: str, client_id: str) -> list[Entity]:
    """The entities whose quota applies to (user, client id), most specific first."""
    return [
        (("client-id", client_id), ("user", user)),
        (("client-id", None), ("user", user)),
        (("user", user),),
        (("client-id", client_id), ("user", None)),
        (("client-id", None), ("user", None)),
        (("user", None),),
        (("client-id", client_id),),
        (("client-id", None),),
    ]


@dataclass
class Rate:
    """Kafka's windowed rate: a total per window, over the last ``SAMPLES`` windows."""

    starts: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    def record(self, amount: float, now: float) -> None:
        if not self.starts or now >= self.starts[-1] + WINDOW_S:
            self.starts.append(now)
            self.totals.append(0.0)
        self.totals[-1] += amount
        while self.starts and self.starts[0] <= now - SAMPLES * WINDOW_S:
            del self.starts[0], self.totals[0]

    def measured(self, now: float) -> tuple[float, float]:
        """(rate per second, the span it is measured over)."""
        if not self.starts:
            return 0.0, 0.0
        # As Kafka: at least SAMPLES - 1 whole windows, so a first burst is not a huge rate.
        span = max(now - self.starts[0], (SAMPLES - 1) * WINDOW_S)
        return sum(self.totals) / span, span


def throttle_s(rate: Rate, quota: float, now: float) -> float:
    """How long the client must wait until its rate is back within ``quota``."""
    observed, span = rate.measured(now)
    if observed <= quota:
        return 0.0
    return min((observed - quota) / quota * span, SAMPLES * WINDOW_S)


class ClientQuotas:
    def __init__(self, broker: BrokerClient) -> None:
        self.broker = broker
        self.entries: dict[Entity, dict[str, float]] = {}
        self._rates: OrderedDict[tuple[str, Entity], Rate] = OrderedDict()
        self._changed = trio.Event()
        self._poll = trio.CancelScope()  # the long poll under way
        self.throttled = 0

    def quota(self, key: str, client_id: str, user: str = ANONYMOUS) -> tuple[Entity, float] | None:
        if not self.entries:
            return None
        for entity in precedence(user, client_id):
            value = self.entries.get(entity, {}).get(key)
            if value is not None:
                return entity, value
        return None

    def record(self, key: str, client_id: str, amount: float, now: float,
               user: str = ANONYMOUS) -> float:
        """Count ``amount`` bytes for the client; the throttle time it has earned (seconds)."""
        found = self.quota(key, client_id, user)
        if found is None:
            return 0.0
        entity, quota = found
        # A default entity's quota applies to each client by itself, as in Kafka.
        tracked = (key, tuple((kind, name if name is not None
                               else client_id if kind == "client-id" else user)
                              for kind, name in entity))
        rate = self._rates.get(tracked)
        if rate is None:
            rate = self._rates[tracked] = Rate()
            if len(self._rates) > MAX_TRACKED:
                self._rates.popitem(last=False)
        else:
            self._rates.move_to_end(tracked)
        rate.record(amount, now)
        delay = throttle_s(rate, quota, now)
        if delay:
            self.throttled += 1
        return delay

    def changed(self) -> None:
        """Read the quotas again now (an AlterClientQuotas went through this gateway; its
        broker may not be the one holding this gateway's long poll)."""
        self._changed.set()
        self._poll.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        version = 0
        while True:
            reply = None
            if self._changed.is_set():  # read them again at once
                self._changed = trio.Event()
                version = 0
            # A long poll: the broker answers when the quotas change (or after POLL_WAIT_MS),
            # so an idle gateway does not wake to ask again. On an outage, keep enforcing what
            # was last read (the outage is logged elsewhere).
            with trio.CancelScope() as self._poll, contextlib.suppress(BrokerUnavailable):
                reply = await self.broker.call(
                    BROKER.describe_client_quotas,
                    pb.DescribeClientQuotasRequest(known_version=version, wait_ms=POLL_WAIT_MS),
                    timeout=POLL_WAIT_MS / 1000 + 10)
            if self._changed.is_set():
                continue
            if reply is not None:
                version = reply.version
                self.entries = {
                    tuple(sorted((p.type, p.name) for p in e.entity)):
                        {v.key: v.value for v in e.values}
                    for e in reply.entries}
            if reply is None or not version:  # unreachable, or a broker without long polls
                with trio.move_on_after(REFRESH_S):
                    await self._changed.wait()
