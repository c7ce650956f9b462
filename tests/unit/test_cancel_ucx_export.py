"""broker.ucx_export's leases cancelled at every checkpoint: no lease, mapping or held segment
is left behind.

Everything is real: a topic registry and partition log in a temporary directory, the exports
that name its chunks, and the exporter with a real UCX worker listening on loopback (skipped
where libucp cannot load). A mapping holds its segment (``segment.readers``) until it is
unmapped, so a segment with no readers left has nothing of it mapped any more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker.exports import Exports
from broker.topics import TopicRegistry
from broker.ucx_export import UcxExporter
from kelp.process import count_tasks
from kelp.rpc.broker import v1 as pb
from rdma import ucx
from tests.batches import make_batch
from tests.unit.cancel_points import cancel_at_every_point, settle, wait_until


@dataclass
class Partition:
    registry: TopicRegistry
    exports: Exports
    file_id: str

    @property
    def segment(self) -> Any:
        return self.registry.partition("t", 0).active


@pytest.fixture
async def partition(tmp_path: Path) -> AsyncIterator[Partition]:
    try:  # the worker is the one piece a machine may lack
        async with ucx.open_worker({}):
            pass
    except ucx.UcxUnavailable as exc:  # pragma: no cover - no libucp here
        pytest.skip(str(exc))
    registry = TopicRegistry(tmp_path / "data")
    registry.open()
    await registry.create("t", 1)
    for _ in range(3):
        registry.partition("t", 0).append(make_batch([(b"k", bytes(100 * 1024))]))
    exports = Exports(registry)
    listing = exports.listing("t", 0)
    try:
        yield Partition(registry, exports, listing["segments"][0]["chunks"][0]["file_id"])
    finally:
        registry.close()


def leases(exporter: UcxExporter) -> int:
    return int(exporter.health()["ucx_leases"])  # type: ignore[call-overload]


async def test_open_read_cancelled_at_every_point_leases_nothing(
        partition: Partition) -> None:
    exporter = UcxExporter(partition.exports, "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)

        async def check(completed: bool, outcome: Any) -> None:
            granted = isinstance(outcome, pb.OpenReadReply) and outcome.status == 200
            # The lease exists exactly when the reply granted one; it ends with CloseRead.
            assert leases(exporter) == (1 if granted else 0), outcome
            if granted:
                exporter.close_read(outcome.lease_id)
            assert leases(exporter) == 0
            if not granted:  # cancelled before a mapping was made: the segment is not held
                assert partition.segment.readers == 0
                assert exporter.health()["ucx_mappings"] == 0

        await cancel_at_every_point(lambda: exporter.open_read(partition.file_id), check,
                                    min_points=1)
        # The mapping outlives its last lease (it is the segment's newest) until expiry.
        assert partition.segment.readers == 1
        nursery.cancel_scope.cancel()
    assert partition.segment.readers == 0


async def test_leases_keep_memory_mapped_through_a_stop_then_let_it_go(
        partition: Partition) -> None:
    exporter = UcxExporter(partition.exports, "127.0.0.1", 0, lease_ms=300)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        replies = [await exporter.open_read(partition.file_id) for _ in range(2)]
        assert [r.status for r in replies] == [200, 200]
        assert partition.segment.readers == 1  # one mapping shared by both leases
        exporter.stop()
        await settle()
        # Stopped: a sidecar may still read with its key until its lease would end.
        assert leases(exporter) == 0 and partition.segment.readers == 1
        reply = await exporter.open_read(partition.file_id)
        assert reply.status == 503 and "stopped" in reply.error
        await wait_until(lambda: partition.segment.readers == 0)
    assert partition.segment.readers == 0


async def test_an_exporter_shut_down_at_every_point_unmaps_everything(
        partition: Partition) -> None:
    """Start the exporter, lease a chunk, shut down — cancelled anywhere along the way, as a
    broker stopping at any moment would be: nothing stays mapped, no task is left."""
    await settle()
    baseline = count_tasks()

    async def start_lease_and_stop() -> pb.OpenReadReply:
        exporter = UcxExporter(partition.exports, "127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            # (Stopped while it maps, it answers 503: the stop is in the way, not a failure.)
            reply = await exporter.open_read(partition.file_id)
            await trio.sleep(0.01)  # a sidecar reads meanwhile
            nursery.cancel_scope.cancel()
        return reply

    async def check(completed: bool, outcome: Any) -> None:
        assert isinstance(outcome, pb.OpenReadReply) or outcome is None, outcome
        if completed:
            assert outcome.status == 200, outcome.error
        assert partition.segment.readers == 0
        assert count_tasks() == baseline

    points = await cancel_at_every_point(start_lease_and_stop, check, subtree=True)
    assert points >= 3
