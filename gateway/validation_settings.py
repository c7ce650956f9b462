"""Each topic's schema-validation settings, as the produce path needs them, cached.

The rules (which configs mean what, how a record is checked) are the registry's
(``registry/validation.py``); asking the broker for a topic's configs is the gateway's IO, so
it lives here. Entries live a couple of seconds, so the produce path asks the broker at most
that often per topic.
"""

from __future__ import annotations

import trio

from gateway.broker_client import BrokerClient, BrokerFailed, BrokerUnavailable
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb
from registry.validation import CONFIG_NAMES, NO_VALIDATION, Settings, settings_from_configs

SETTINGS_TTL_S = 2.0
MAX_CACHED_TOPICS = 10_000


class TopicSettings:
    """Each topic's validation settings, asked of the broker at most every few seconds."""

    def __init__(self, broker: BrokerClient, ttl: float = SETTINGS_TTL_S) -> None:
        self.broker = broker
        self.ttl = ttl
        self._cached: dict[str, tuple[float, Settings]] = {}

    def get(self, topic: str) -> Settings | None:
        """The cached settings, or None when they must be fetched first."""
        entry = self._cached.get(topic)
        if entry is None or trio.current_time() - entry[0] > self.ttl:
            return None
        return entry[1]

    def _bound(self, now: float) -> None:
        """Keep at most ``MAX_CACHED_TOPICS`` names: produce requests may name any number of
        topics (most of them made up, by a hostile client); expired ones go first, then the
        oldest (insertion order)."""
        if len(self._cached) < MAX_CACHED_TOPICS:
            return
        for name in [n for n, (at, _s) in self._cached.items() if now - at > self.ttl]:
            del self._cached[name]
        while len(self._cached) >= MAX_CACHED_TOPICS // 2:
            del self._cached[next(iter(self._cached))]

    def forget(self, topic: str) -> None:
        """Called when this gateway alters a topic's configs: the next produce asks again."""
        self._cached.pop(topic, None)

    async def refresh(self, topics: list[str]) -> None:
        """Fetch settings for ``topics``. If the broker cannot say, the old setting stays;
        a topic never seen stays unknown and the produce fails retriably."""
        request = pb.DescribeConfigsRequest(resources=[
            pb.DescribeConfigsRequestResource(type=2, name=t, keys=list(CONFIG_NAMES))
            for t in topics])
        try:
            reply = await self.broker.call(BROKER.describe_configs, request)
        except (BrokerUnavailable, BrokerFailed):
            return
        now = trio.current_time()
        self._bound(now)
        for resource in reply.resources:
            if resource.error_code:
                # Unknown topic: nothing to validate yet (auto-creation comes with defaults).
                self._cached[resource.name] = (now, NO_VALIDATION)
                continue
            self._cached[resource.name] = (
                now, settings_from_configs({e.name: e.value for e in resource.entries}))
