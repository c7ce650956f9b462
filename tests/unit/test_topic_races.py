"""Topic changes that a client abandons midway, or that race a delete of the same name.

A gRPC call is cancelled when its client gives up; the catalogue write it started must finish
and memory must agree with disk. A rollback must never touch directories that a concurrent
DeleteTopics moved away and a new CreateTopics of the same name now owns (the fuzzer found two
partition logs recovering the same directory at once).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import trio
import trio.testing

from broker.log import OffsetOutOfRange, PartitionLog
from broker.topics import TopicRegistry
from tests.batches import make_batch


def _catalogue(data_dir: Path) -> list[str]:
    return [t["name"] for t in json.loads((data_dir / "topics.json").read_text())["topics"]]


async def test_a_cancelled_create_still_completes(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        with trio.CancelScope() as scope:
            scope.cancel()  # the client gave up before the catalogue write even started
            await registry.create("t", 2)
        assert registry.get("t") is not None
        assert _catalogue(tmp_path) == ["t"]
        nursery.cancel_scope.cancel()
    registry.close()


async def test_create_delete_create_of_one_name_keeps_one_owner_per_directory(
        tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        async def abandoned_create(scope: trio.CancelScope) -> None:
            with scope:
                await registry.create("t", 1)

        for _ in range(20):
            async with trio.open_nursery() as racers:
                gives_up = trio.CancelScope()
                racers.start_soon(abandoned_create, gives_up)
                await trio.sleep(0)
                gives_up.cancel()  # its client gave up while the catalogue was being written
                racers.start_soon(registry.delete, "t")
                await trio.sleep(0)
                racers.start_soon(registry.create, "t", 1)
            topic = registry.get("t")
            assert topic is not None
            await registry.delete("t")
        await registry.create("t", 1)
        (plog,) = registry.get("t").logs  # type: ignore[union-attr]
        # Only the live topic's directory is left under its name, and it opens cleanly again.
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("t-")) == ["t-0"]
        assert plog.directory == tmp_path / "t-0"
        assert _catalogue(tmp_path) == ["t"]
        nursery.cancel_scope.cancel()
    registry.close()
    reopened = TopicRegistry(tmp_path)
    reopened.open()
    assert list(reopened.topics) == ["t"]
    reopened.close()


async def test_a_sync_in_flight_when_its_topic_is_deleted_never_writes_into_the_new_one(
        tmp_path: Path) -> None:
    """fdatasync and the checkpoint after it run in a worker thread that names files by path;
    the delete waits for it before moving the directory, and the re-create waits for the move."""
    registry = TopicRegistry(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await registry.create("t", 1)
        plog = registry.partition("t", 0)
        for _ in range(30):
            result = plog.append(make_batch([(b"k", b"v")]))
            async with trio.open_nursery() as racers:
                racers.start_soon(_durable_or_gone, plog, result.write_mark)
                await trio.sleep(0)
                racers.start_soon(registry.delete, "t")
                await trio.testing.wait_all_tasks_blocked()  # the delete has begun
                racers.start_soon(registry.create, "t", 1)
            plog = registry.partition("t", 0)
            assert plog.high_watermark == 0  # a fresh partition: nothing of the old one
            assert not list(plog.directory.glob("*.tmp"))
        nursery.cancel_scope.cancel()
    registry.close()
    reopened = TopicRegistry(tmp_path)
    reopened.open()
    assert reopened.partition("t", 0).high_watermark == 0
    reopened.close()


async def _durable_or_gone(plog: PartitionLog, write_mark: int) -> None:
    with contextlib.suppress(OffsetOutOfRange):  # deleted first: the write went with it
        await plog.wait_durable(write_mark)
