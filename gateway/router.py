"""Which broker serves each partition, in a cluster (the gateway's ``--etcd``).

The gateway stays stateless: it follows the brokers and partition states in etcd (as the
brokers write them, ``broker.membership`` and ``broker.controller``) and keeps one
``BrokerClient`` per live broker. Produce, Fetch and ListOffsets go to each partition's leader;
a partition with no leader, or whose leader the gateway cannot reach, answers
NOT_LEADER_OR_FOLLOWER, and the client retries after refreshing its metadata. Topics that are
not the cluster's (none in etcd) and every control call go to the gateway's own ``--broker``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from typing import Any, TypeVar

import trio

from broker.controller import PARTITIONS, partition_key
from broker.membership import BROKERS, BrokerInfo
from broker.placement import NO_LEADER, PartitionState
from gateway.broker_client import BrokerClient, BrokerUnavailable
from kelp import grpc
from kelp.etcd import Etcd, EtcdUnavailable, LeaseLost, Mirror

log = logging.getLogger("kelp.gateway.router")

# Each gateway is a Kafka node: /kelp/gateways/<node id> -> {"host", "port"} under a lease.
GATEWAYS = b"/kelp/gateways/"
GATEWAY_LEASE_S = 10

Rep = TypeVar("Rep")

CALL_ANY_TIMEOUT_S = 3.0


class Router:
    def __init__(self, etcd: Etcd, default: BrokerClient, *, tls: ssl.SSLContext | None = None,
                 token: str | None = None, node: tuple[int, str, int] = (0, "127.0.0.1", 9092)
                 ) -> None:
        self.etcd = etcd
        self.node = node  # this gateway: (node id, advertised host, port)
        self.gateways = Mirror(etcd, GATEWAYS)
        self.default = default
        self.tls = tls
        self.token = token
        self.brokers = Mirror(etcd, BROKERS)
        self.partitions = Mirror(etcd, PARTITIONS)
        self._clients: dict[str, BrokerClient] = {str(default.address): default}
        self._by_id: dict[int, BrokerClient] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.brokers.run)
                await nursery.start(self.partitions.run)
                await nursery.start(self.gateways.run)
                nursery.start_soon(self._register)
                self._connect_brokers()
                task_status.started()
                while True:
                    seen = self.brokers.revision
                    await self.brokers.wait_changed(seen)
                    self._connect_brokers()
        finally:
            self._nursery = None
            self.etcd.close()

    async def _register(self) -> None:
        """Keep this gateway listed as a Kafka node while it runs (a lease: a gateway that
        dies leaves the other gateways' Metadata within its TTL)."""
        node_id, host, port = self.node
        key = GATEWAYS + str(node_id).encode()
        value = json.dumps({"host": host, "port": port}).encode()
        while True:
            lease = 0
            try:
                lease = await self.etcd.grant(GATEWAY_LEASE_S)
                await self.etcd.put(key, value, lease=lease)
                await self.etcd.keep_alive(lease, GATEWAY_LEASE_S)
            except (EtcdUnavailable, LeaseLost) as exc:
                log.warning("gateway registration lost, registering again",
                            extra={"error": str(exc)})
            finally:
                if lease:
                    with trio.CancelScope(shield=True), trio.move_on_after(2), \
                            contextlib.suppress(EtcdUnavailable):
                        await self.etcd.revoke(lease)
            await trio.sleep(1.0)

    def nodes(self) -> list[tuple[int, str, int]]:
        """Every live gateway (node id, host, port), this one included, by node id."""
        found = {self.node[0]: self.node}
        for key, entry in self.gateways.entries.items():
            try:
                node_id = int(key[len(GATEWAYS):])
                value = json.loads(entry.value)
                found.setdefault(node_id, (node_id, str(value["host"]), int(value["port"])))
            except (ValueError, KeyError, TypeError):
                continue
        return [found[node_id] for node_id in sorted(found)]

    def _connect_brokers(self) -> None:
        """A client for every live broker (kept when one dies: it comes back at its address)."""
        assert self._nursery is not None
        for entry in self.brokers.entries.values():
            try:
                info = BrokerInfo.decode(entry.value)
            except (ValueError, KeyError, TypeError):
                continue
            client = self._clients.get(info.grpc)
            if client is None:
                client = BrokerClient(grpc.Address.parse(info.grpc), self.tls, self.token)
                self._clients[info.grpc] = client
                self._nursery.start_soon(client.run)
                log.info("broker found", extra={"broker_id": info.broker_id,
                                                "address": info.grpc})
            self._by_id[info.broker_id] = client

    async def call_any(self, method: grpc.Route[Any, Rep], request: Any) -> Rep:
        """A read-only call answered by the first other live broker that can (the caller
        tried the gateway's own); raises ``BrokerUnavailable`` when none can."""
        failure: BrokerUnavailable | None = None
        for client in [c for c in self._by_id.values() if c is not self.default]:
            try:
                return await client.call(method, request, timeout=CALL_ANY_TIMEOUT_S)
            except BrokerUnavailable as exc:
                failure = exc
        raise failure or BrokerUnavailable("no broker is registered")

    def leader_epoch(self, topic: str, partition: int) -> int:
        """The partition's leader epoch as etcd has it (0 when unknown), for Metadata."""
        entry = self.partitions.entries.get(partition_key(topic, partition))
        if entry is None:
            return 0
        try:
            return PartitionState.decode(entry.value).leader_epoch
        except (ValueError, KeyError, TypeError):
            return 0

    def clients(self) -> list[BrokerClient]:
        return list(self._clients.values())

    def leader(self, topic: str, partition: int) -> BrokerClient:
        """The client of the partition's leader; raises ``BrokerUnavailable`` when it has none
        the gateway can reach (the Kafka client is told NOT_LEADER_OR_FOLLOWER and retries)."""
        entry = self.partitions.entries.get(partition_key(topic, partition))
        if entry is None:
            return self.default  # not the cluster's partition: the gateway's own broker
        try:
            state = PartitionState.decode(entry.value)
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerUnavailable(f"unreadable state of {topic}-{partition}") from exc
        if state.leader == NO_LEADER:
            raise BrokerUnavailable(f"{topic}-{partition} has no leader")
        client = self._by_id.get(state.leader)
        if client is None:
            raise BrokerUnavailable(f"the leader of {topic}-{partition} (broker "
                                    f"{state.leader}) is not registered")
        if not client.connected:
            # Dead or restarting: answered at once (the client retries after refreshing its
            # metadata) rather than waiting for a reconnection that may never come, while
            # the controller moves the lead elsewhere.
            raise BrokerUnavailable(f"the leader of {topic}-{partition} (broker "
                                    f"{state.leader}) is not connected")
        return client
