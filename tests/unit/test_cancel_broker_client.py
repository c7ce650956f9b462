"""The gateway's broker client cancelled at every checkpoint leaves no waiter behind, here or
at the broker.

Both ends are real: the broker service over a topic registry in a temporary directory, served
by grpclib on a Unix socket, and the gateway's client with its long-lived Append and Fetch
streams. A fetch cancelled anywhere must leave no reply waiter in the client, and must have
told the broker to drop it (else the broker holds a long poll for nobody); an append waiting
for the bound on unanswered appends, cancelled, must leave nobody parked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from broker.service import BrokerService
from broker.topics import TopicRegistry
from gateway.broker_client import BrokerClient
from kelp import grpc
from kelp.process import count_tasks
from kelp.rpc.broker import v1 as pb
from tests.batches import make_batch
from tests.unit.cancel_points import cancel_at_every_point, settle, wait_until

BATCH = make_batch([(b"k", b"v")])


@dataclass
class Pair:
    service: BrokerService
    client: BrokerClient
    plog: Any


async def serve_broker(service: BrokerService, address: grpc.Address, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The broker's gRPC server (how it is registered is the broker's business)."""
    await grpc.serve(service.mapping(), address, task_status=task_status)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async with trio_asyncio.open_loop():
        registry = TopicRegistry(tmp_path / "data")
        registry.open()
        await registry.create("t", 1)
        service = BrokerService(registry)
        address = grpc.Address(path=str(tmp_path / "broker.sock"))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_broker, service, address)
                client = BrokerClient(address)
                await nursery.start(client.run)
                await client.wait_connected()
                yield Pair(service, client, registry.partition("t", 0))
                nursery.cancel_scope.cancel()
        finally:
            registry.close()


def long_poll(offset: int) -> pb.FetchRequest:
    return pb.FetchRequest(max_wait_ms=20_000, min_bytes=1, max_bytes=1 << 20, partitions=[
        pb.FetchPartition(topic="t", partition=0, offset=offset, max_bytes=1 << 20)])


async def test_a_fetch_cancelled_at_every_point_is_dropped_here_and_at_the_broker(
        pair: Pair) -> None:
    await settle()
    baseline = count_tasks()

    async def fetch_new_records() -> pb.FetchReply:
        async with trio.open_nursery() as nursery:
            async def producer() -> None:
                await trio.sleep(0.005)
                pair.plog.append(BATCH)

            nursery.start_soon(producer)
            return await pair.client.fetch(long_poll(pair.plog.high_watermark))

    async def check(completed: bool, outcome: Any) -> None:
        assert not isinstance(outcome, Exception), outcome
        assert pair.client.pending == 0  # no waiter for a reply nobody awaits
        # The broker hears of the cancel and drops the long poll (it would park 20 s).
        await wait_until(lambda: pair.service.pending_fetches == 0, timeout_s=2)
        await wait_until(lambda: count_tasks() <= baseline, timeout_s=2)
        if completed:  # the batch as stored: its base offset is the log's
            assert outcome.partitions[0].records[8:] == BATCH[8:]

    # Every task's steps count: the client's stream pumps and the broker's handlers too.
    points = await cancel_at_every_point(fetch_new_records, check, every_task=True)
    assert points > 10
    with trio.fail_after(5):  # and the streams still serve
        reply = await pair.client.fetch(long_poll(0))
    assert reply.partitions[0].records[8:len(BATCH)] == BATCH[8:]


async def test_appends_parked_on_the_unanswered_bound_leave_when_cancelled(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pair.client._appends, "max_outstanding", 2)
    pair.service.append_delay_s = 0.3  # a slow disk: appends stay unanswered a while
    client = pair.client
    waiters = [client.submit_append("t", 0, BATCH, 1) for _ in range(2)]
    lot = client._appends.room
    passed: list[int] = []
    scopes = [trio.CancelScope() for _ in range(3)]

    async def produce(number: int) -> None:
        with scopes[number]:
            await client.wait_append_writable()
            passed.append(number)

    async with trio.open_nursery() as nursery:
        for number in range(3):
            nursery.start_soon(produce, number)
        await settle()
        assert lot.statistics().tasks_waiting == 3
        scopes[0].cancel()
        scopes[2].cancel()
        await settle()
        assert lot.statistics().tasks_waiting == 1  # the cancelled ones left the lot
        with trio.fail_after(5):
            for waiter in waiters:
                assert (await waiter.wait()).error_code == 0
    assert passed == [1]
    assert lot.statistics().tasks_waiting == 0 and client.pending == 0
