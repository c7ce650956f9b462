"""The cross-partition group commit (broker.storage.syncer), over real files: rounds shared by
partitions, each partition's failure its own, ``after`` work answered per partition, and
cancellation before and after a round takes a job. Each test runs on Linux native AIO and on
the worker-thread fallback."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from broker.log import PartitionLog
from broker.storage.syncer import Syncer, SyncJob
from tests.unit.cancel_points import cancel_at_every_point
from tests.unit.test_log import batch_of

MODES = ["aio", "thread"]


def syncer_for(mode: str) -> Syncer:
    syncer = Syncer(native=mode == "aio")
    if mode == "aio":
        assert syncer._native_aio() is not None, "this Linux has native AIO: the test needs it"
    return syncer


@pytest.fixture
def files(tmp_path):
    fds = []

    def make(name: str) -> int:
        fd = os.open(tmp_path / name, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"record" * 100)
        fds.append(fd)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


def blocking_after(started: threading.Event, release: threading.Event):
    def after() -> None:
        started.set()
        assert release.wait(10)
    return after


async def wait_threading(event: threading.Event) -> None:
    with trio.fail_after(10):
        while not event.is_set():
            await trio.sleep(0.001)


def hold_rounds(syncer: Syncer) -> trio.Event:
    """Rounds wait for the returned event before their (real) syncs: a round held open."""
    gate, real = trio.Event(), syncer._sync_data

    async def held(jobs: list[SyncJob]) -> None:
        await gate.wait()
        await real(jobs)

    syncer._sync_data = held  # type: ignore[method-assign]
    return gate


@pytest.mark.parametrize("mode", MODES)
async def test_partitions_arriving_during_a_round_share_the_next(mode, files):
    syncer = syncer_for(mode)
    gate = hold_rounds(syncer)
    first = SyncJob([files("lead")])
    others = [SyncJob([files(f"p{i}"), files(f"q{i}")]) for i in range(5)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(syncer.sync, first)
        await trio.testing.wait_all_tasks_blocked()  # the first round is open: the rest queue
        for job in others:
            nursery.start_soon(syncer.sync, job)
        await trio.testing.wait_all_tasks_blocked()
        assert not any(job.done.is_set() for job in [first, *others])
        gate.set()
    assert syncer.counters["rounds"] == 2
    assert syncer.counters["jobs"] == 6
    assert syncer.counters[f"{mode}_syncs"] == 11
    assert all(job.error is None for job in [first, *others])


@pytest.mark.parametrize("mode", MODES)
async def test_one_partitions_failure_is_its_own(mode, files):
    syncer = syncer_for(mode)
    gate = hold_rounds(syncer)
    read_end, write_end = os.pipe()  # fdatasync refuses a pipe (EINVAL)
    try:
        good = SyncJob([files("good")])
        bad = SyncJob([files("bad-but-first"), read_end])
        lead = SyncJob([files("lead")])
        outcomes: dict[str, BaseException | None] = {}

        async def run(name: str, job: SyncJob) -> None:
            try:
                await syncer.sync(job)
                outcomes[name] = None
            except OSError as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "lead", lead)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, "bad", bad)
            nursery.start_soon(run, "good", good)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert syncer.counters["rounds"] == 2  # bad and good shared one
        assert outcomes["good"] is None and outcomes["lead"] is None
        assert isinstance(outcomes["bad"], OSError)
        assert outcomes["bad"].errno == 22  # EINVAL
        if mode == "aio":  # the kernel refused the pipe's AIO sync: a thread said why
            assert syncer._aio.refusals == 1  # type: ignore[union-attr]
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("mode", MODES)
async def test_after_work_holds_only_its_own_partition(mode, files):
    """A partition's after-work (a directory sync, its checkpoints) runs once its data is
    durable, in its own task: the next round, another partition's, does not wait for it."""
    syncer = syncer_for(mode)
    release, started = threading.Event(), threading.Event()
    returned: list[str] = []

    async def run(name: str, job: SyncJob) -> None:
        await syncer.sync(job)
        returned.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "slow", SyncJob([files("slow")],
                                                after=blocking_after(started, release)))
        await wait_threading(started)  # slow's data is synced; its after-work runs
        with trio.fail_after(10):
            await run("quick", SyncJob([files("quick")]))
        assert returned == ["quick"]
        release.set()
    assert returned == ["quick", "slow"]
    assert syncer.counters["rounds"] == 2


@pytest.mark.parametrize("mode", MODES)
async def test_cancelled_before_its_round_is_dropped_after_waits_for_it(mode, files):
    syncer = syncer_for(mode)
    gate = hold_rounds(syncer)
    lead = SyncJob([files("lead")])
    waiting = SyncJob([files("waiting")])
    lead_left: list[float] = []

    async def lead_cancelled(scope: trio.CancelScope) -> None:
        with scope:
            await syncer.sync(lead)
        lead_left.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        lead_scope = trio.CancelScope()
        nursery.start_soon(lead_cancelled, lead_scope)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.05) as waited:  # not yet taken: it goes at once
            await syncer.sync(waiting)
        assert waited.cancelled_caught and not waiting.taken
        assert syncer._pending == []
        lead_scope.cancel()  # taken (its files in use): the cancel waits for the round
        await trio.sleep(0.05)
        assert not lead_left
        gate.set()
    assert lead_left and lead.done.is_set()
    assert syncer.counters["jobs"] == 1  # the dropped job never ran
    await syncer.sync(SyncJob([files("later")]))  # and nothing is left stuck
    assert syncer.counters["rounds"] == 2


@pytest.mark.parametrize("mode", MODES)
async def test_cancel_at_every_point_leaves_no_job_behind(mode, files):
    syncer = syncer_for(mode)
    fds = [files(f"p{i}") for i in range(3)]

    async def three_partitions() -> None:
        async with trio.open_nursery() as nursery:
            for fd in fds:
                nursery.start_soon(syncer.sync, SyncJob([fd]))

    async def check(completed: bool, outcome: object) -> None:
        assert syncer._pending == []
        assert syncer._round_done is None
        if completed:
            assert outcome is None

    await cancel_at_every_point(three_partitions, check, subtree=True)


async def test_partition_logs_share_rounds_and_stay_durable(tmp_path, monkeypatch):
    """PartitionLog on the shared syncer: appends of several partitions acknowledged, the
    data on disk after a reopen, the rounds fewer than the syncs when they overlap."""
    import broker.log

    syncer = Syncer()
    monkeypatch.setattr(broker.log, "SYNCER", syncer)
    logs = [PartitionLog.open(tmp_path / f"t-{i}") for i in range(6)]
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            for plog in logs:
                nursery.start_soon(plog.wait_durable, plog.append(batch_of(2)).write_mark)
    assert syncer.counters["rounds"] < syncer.counters["jobs"]
    for plog in logs:
        assert plog.synced_mark == plog._written
        plog.close()
    for i in range(6):
        reopened = PartitionLog.open(tmp_path / f"t-{i}")
        assert reopened.high_watermark == 40
        reopened.close()
