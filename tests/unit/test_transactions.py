"""Transactions in the broker, driven directly: the partition's open and aborted transactions
and last stable offset (rebuilt on reopen), and the coordinator's states, fencing, timeouts,
offsets made visible on commit, and recovery of a prepared transaction after a restart."""

from __future__ import annotations

import json

import pytest
import trio
from kio.schema.errors import ErrorCode

from broker import internal_log
from broker import log as broker_log
from broker.log import LogConfig, PartitionLog
from broker.offsets import Committed, OffsetStore
from broker.producer_ids import ProducerIds
from broker.producers import ABORT, COMMIT
from broker.topics import TopicRegistry
from broker.transactions import TxnError, TxnState
from broker.txn_coordinator import TransactionCoordinator
from kelp import records
from tests.batches import make_batch


def txn_batch(pid: int, seq: int, count: int = 2, epoch: int = 0) -> bytes:
    return make_batch([(b"k", b"v%d" % (seq + i)) for i in range(count)],
                      producer=(pid, epoch, seq), transactional=True)


def plain(count: int = 1) -> bytes:
    return make_batch([(b"k", b"plain")] * count)


async def read_all(plog: PartitionLog, end: int | None = None) -> list[int]:
    """Base offsets of the batches a read from the log start returns."""
    data = (await plog.read(plog.log_start_offset, 1 << 20, end=end)).records
    bases, position = [], 0
    while position < len(data):
        bases.append(int.from_bytes(data[position:position + 8], "big"))
        position += int.from_bytes(data[position + 8:position + 12], "big") + 12
    return bases


async def test_last_stable_offset_and_aborted_transactions(tmp_path):
    plog = PartitionLog.open(tmp_path / "t-0")
    plog.append(plain())                                   # 0
    assert plog.last_stable_offset == 1
    plog.append(txn_batch(7, 0))                           # 1-2: producer 7 opens at 1
    plog.append(plain())                                   # 3
    plog.append(txn_batch(8, 0))                           # 4-5: producer 8 opens at 4
    assert plog.last_stable_offset == 1 and plog.high_watermark == 6
    assert await read_all(plog, end=plog.last_stable_offset) == [0]
    assert plog.bytes_after(0, plog.last_stable_offset) == plog.bytes_after(0) - \
        plog.bytes_after(1)
    abort = plog.append_marker(7, 0, ABORT)                # 6
    assert plog.last_stable_offset == 4  # producer 8's transaction still holds it
    plog.append(txn_batch(7, 2))                           # 7-8: 7's next transaction
    commit = plog.append_marker(8, 0, COMMIT)              # 9
    assert plog.last_stable_offset == 7
    assert await read_all(plog, end=7) == [0, 1, 3, 4, 6]
    assert plog.aborted_between(0, 7) == [(7, 1, abort.base_offset)]
    assert plog.aborted_between(abort.base_offset + 1, 100) == []
    plog.append_marker(7, 0, COMMIT)                       # 10
    assert plog.last_stable_offset == plog.high_watermark == 11
    assert commit.base_offset == 9
    plog.close()

    # Rebuilt on reopen: from the snapshot, and from the log alone.
    for snapshot in (True, False):
        if not snapshot:
            (tmp_path / "t-0" / "producer-state.json").unlink()
        again = PartitionLog.open(tmp_path / "t-0")
        assert again.producers.open_txns == {}
        assert again.aborted_between(0, 100) == [(7, 1, 6)]
        again.close()


async def test_an_open_transaction_survives_a_reopen_without_snapshot(tmp_path):
    plog = PartitionLog.open(tmp_path / "t-0")
    plog.append(plain())
    plog.append(txn_batch(3, 0))
    plog.close()
    (tmp_path / "t-0" / "producer-state.json").unlink()
    again = PartitionLog.open(tmp_path / "t-0")
    assert again.last_stable_offset == 1 and again.producers.open_txns == {3: 1}
    # A fencing abort with a newer epoch: the old epoch is refused from now on.
    again.append_marker(3, 1, ABORT)
    with pytest.raises(Exception, match="epoch 0 is older than 1"):
        again.append(txn_batch(3, 2, epoch=0))
    again.append(txn_batch(3, 0, epoch=1))  # the new instance starts at sequence 0
    again.close()


async def test_retention_forgets_aborted_transactions_below_the_log_start(tmp_path):
    plog = PartitionLog.open(tmp_path / "t-0")
    plog.append(txn_batch(7, 0))
    plog.append_marker(7, 0, ABORT)
    plog.append(plain())
    assert len(plog.aborted_between(0, 10)) == 1
    plog._roll()
    plog.append(plain())
    await plog.delete_records(3)
    assert plog.aborted_between(0, 10) == []
    plog.close()


async def test_a_producer_with_an_open_transaction_is_never_expired(tmp_path):
    plog = PartitionLog.open(tmp_path / "t-0")
    plog.append(txn_batch(7, 0))
    plog.append(make_batch([(b"k", b"v")], producer=(9, 0, 0)))
    assert plog.producers.expire(now_ms=10**15, expiration_ms=1) == 1
    assert set(plog.producers.entries) == {7}
    plog.close()


class Rig:
    """A registry with topic ``t`` (2 partitions), an offsets store and a coordinator."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.registry = TopicRegistry(tmp_path / "data")
        self.store = OffsetStore(tmp_path / "data" / "@offsets", LogConfig(compacted=True))
        self.member_errors: dict[str, ErrorCode] = {}
        self.coordinator = self._coordinator()

    def _coordinator(self) -> TransactionCoordinator:
        return TransactionCoordinator(
            self.tmp_path / "data" / "@transactions", LogConfig(compacted=True),
            self.registry, self.store, ProducerIds(self.tmp_path / "data"),
            member_error=lambda group, generation, member, instance:
                self.member_errors.get(member))

    def reopen(self) -> None:
        self.coordinator.close()
        self.coordinator = self._coordinator()

    def plog(self, partition: int) -> PartitionLog:
        return self.registry.partition("t", partition)

    def close(self) -> None:
        self.coordinator.close()
        self.store.close()
        self.registry.close()


@pytest.fixture
async def rig(tmp_path):
    made = Rig(tmp_path)
    await trio.to_thread.run_sync(made.registry.open)
    await made.registry.create("t", 2)
    yield made
    made.close()


async def test_commit_writes_markers_and_makes_offsets_visible(rig: Rig):
    c = rig.coordinator
    pid, epoch = await c.init_producer_id("app", 60_000)
    assert epoch == 0
    assert c.append_error(pid, epoch, "t", 0)[0] == ErrorCode.invalid_txn_state  # not added
    assert await c.add_partitions("app", pid, epoch, [("t", 0), ("t", 1)]) == {
        ("t", 0): ErrorCode.none, ("t", 1): ErrorCode.none}
    assert c.append_error(pid, epoch, "t", 0) is None
    rig.plog(0).append(txn_batch(pid, 0))
    await c.add_offsets("app", pid, epoch, "g")
    results = await c.commit_offsets("app", "g", pid, epoch, -1, "", None,
                                     {("t", 0): Committed(5, -1, None, 0)})
    assert results == {("t", 0): ErrorCode.none}
    assert rig.store.get("g") == {} and c.pending_offsets("g") == {("t", 0)}
    await c.end_txn("app", pid, epoch, commit=True)
    assert rig.store.get("g")[("t", 0)].offset == 5 and c.pending_offsets("g") == set()
    # Both partitions got a COMMIT marker; the one with data is stable again.
    assert rig.plog(0).last_stable_offset == rig.plog(0).high_watermark == 3
    assert rig.plog(1).high_watermark == 1
    assert c.describe("app").state is TxnState.COMPLETE_COMMIT
    await c.end_txn("app", pid, epoch, commit=True)  # a retry is answered the same
    with pytest.raises(TxnError) as wrong:
        await c.end_txn("app", pid, epoch, commit=False)
    assert wrong.value.code == ErrorCode.invalid_txn_state


async def test_abort_drops_the_offsets_and_records_an_aborted_transaction(rig: Rig):
    c = rig.coordinator
    pid, epoch = await c.init_producer_id("app", 60_000)
    await c.add_partitions("app", pid, epoch, [("t", 0)])
    rig.plog(0).append(txn_batch(pid, 0))
    await c.add_offsets("app", pid, epoch, "g")
    await c.commit_offsets("app", "g", pid, epoch, -1, "", None,
                           {("t", 0): Committed(5, -1, None, 0)})
    await c.end_txn("app", pid, epoch, commit=False)
    assert rig.store.get("g") == {}
    assert rig.plog(0).aborted_between(0, 10) == [(pid, 0, 2)]


async def test_a_new_instance_fences_the_old_and_aborts_its_transaction(rig: Rig):
    c = rig.coordinator
    pid, old = await c.init_producer_id("app", 60_000)
    await c.add_partitions("app", pid, old, [("t", 0)])
    rig.plog(0).append(txn_batch(pid, 0))
    same_pid, new = await c.init_producer_id("app", 60_000)
    assert (same_pid, new) == (pid, old + 1)
    assert rig.plog(0).aborted_between(0, 10) == [(pid, 0, 2)]
    assert c.append_error(pid, old, "t", 0)[0] == ErrorCode.invalid_producer_epoch
    for call in (c.add_partitions("app", pid, old, [("t", 1)]),
                 c.end_txn("app", pid, old, commit=True)):
        with pytest.raises(TxnError) as fenced:
            await call
        assert fenced.value.code == ErrorCode.producer_fenced
    # KIP-360: the fenced epoch may not claim the id back; the current one bumps.
    with pytest.raises(TxnError):
        await c.init_producer_id("app", 60_000, pid, old - 1 if old else 7)
    assert await c.init_producer_id("app", 60_000, pid, new) == (pid, new + 1)
    assert await c.init_producer_id("app", 60_000, pid, new) == (pid, new + 1)  # a retry


async def test_timeouts_are_bounded_and_an_expired_transaction_is_aborted(rig: Rig):
    c = rig.coordinator
    with pytest.raises(TxnError) as bad:
        await c.init_producer_id("app", c.max_timeout_ms + 1)
    assert bad.value.code == ErrorCode.invalid_transaction_timeout
    pid, epoch = await c.init_producer_id("app", 200)
    await c.add_partitions("app", pid, epoch, [("t", 0)])
    rig.plog(0).append(txn_batch(pid, 0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        with trio.fail_after(5):
            while c.describe("app").state is not TxnState.COMPLETE_ABORT:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert rig.plog(0).last_stable_offset == rig.plog(0).high_watermark
    assert rig.plog(0).aborted_between(0, 10) == [(pid, 0, 2)]
    # The instance that let it time out is fenced; its abort retried is fine.
    assert c.append_error(pid, epoch, "t", 0)[0] == ErrorCode.invalid_producer_epoch
    await c.end_txn("app", pid, epoch, commit=False)
    with pytest.raises(TxnError):
        await c.end_txn("app", pid, epoch, commit=True)


async def test_a_prepared_commit_completes_after_a_restart(rig: Rig):
    c = rig.coordinator
    pid, epoch = await c.init_producer_id("app", 60_000)
    await c.add_partitions("app", pid, epoch, [("t", 0), ("t", 1)])
    rig.plog(0).append(txn_batch(pid, 0))
    await c.add_offsets("app", pid, epoch, "g")
    await c.commit_offsets("app", "g", pid, epoch, -1, "", None,
                           {("t", 1): Committed(9, -1, "m", 0)})
    # The broker died right after PrepareCommit was durable: no marker, no offsets yet.
    txn = c.describe("app")
    txn.state = TxnState.PREPARE_COMMIT
    await c._persist(txn)
    rig.reopen()
    c = rig.coordinator
    assert c.describe("app").state is TxnState.PREPARE_COMMIT
    assert rig.plog(0).last_stable_offset == 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        with trio.fail_after(5):
            while c.describe("app").state is not TxnState.COMPLETE_COMMIT:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert rig.plog(0).last_stable_offset == rig.plog(0).high_watermark
    assert rig.store.get("g")[("t", 1)] .offset == 9
    rig.reopen()  # and the completed state is what the log says now
    assert rig.coordinator.describe("app").state is TxnState.COMPLETE_COMMIT


async def test_offsets_need_a_current_member_and_the_group_in_the_transaction(rig: Rig):
    c = rig.coordinator
    pid, epoch = await c.init_producer_id("app", 60_000)
    offsets = {("t", 0): Committed(1, -1, None, 0)}
    assert await c.commit_offsets("app", "g", pid, epoch, -1, "", None, offsets) == {
        ("t", 0): ErrorCode.invalid_txn_state}
    await c.add_offsets("app", pid, epoch, "g")
    rig.member_errors["zombie"] = ErrorCode.illegal_generation
    assert await c.commit_offsets("app", "g", pid, epoch, 3, "zombie", None, offsets) == {
        ("t", 0): ErrorCode.illegal_generation}
    assert await c.commit_offsets("app", "g", pid, epoch + 1, 3, "m", None, offsets) == {
        ("t", 0): ErrorCode.invalid_producer_epoch}
    assert await c.commit_offsets("app", "g", pid, epoch, 3, "m", None, {
        ("nope", 0): Committed(1, -1, None, 0)}) == {
        ("nope", 0): ErrorCode.unknown_topic_or_partition}


async def test_unknown_ids_partitions_and_an_unreadable_log_record(rig: Rig):
    c = rig.coordinator
    with pytest.raises(TxnError) as unknown:
        await c.add_partitions("nobody", 1, 0, [("t", 0)])
    assert unknown.value.code == ErrorCode.invalid_producer_id_mapping
    pid, epoch = await c.init_producer_id("app", 60_000)
    assert await c.add_partitions("app", pid, epoch, [("t", 0), ("t", 9)]) == {
        ("t", 0): ErrorCode.operation_not_attempted,
        ("t", 9): ErrorCode.unknown_topic_or_partition}
    # A damaged record in the transaction log is skipped on replay, not fatal.
    c.log.append(records.build_batch([(b'"bad"', b'{"pid": "x"}'), (b"[1]", b"{}")], 0))
    c.log.append(internal_log.batch_of([("other", None)]))
    rig.reopen()
    assert rig.coordinator.describe("app").producer_id == pid
    assert rig.coordinator.describe("bad") is None
    listed = rig.coordinator.list(set(), set(), -1)
    assert [t.transactional_id for t in listed] == ["app"]
    assert json.loads(json.dumps(listed[0].to_json()))["state"] == "Empty"


def keyed_txn(pid: int, seq: int, pairs: list[tuple[bytes, bytes]]) -> bytes:
    return make_batch(pairs, producer=(pid, 0, seq), transactional=True)


async def test_compaction_drops_aborted_records_keeps_markers_and_stops_at_the_lso(tmp_path):
    plog = PartitionLog.open(tmp_path / "c-0", LogConfig(compacted=True))
    plog.append(keyed_txn(1, 0, [(b"a", b"a1"), (b"b", b"b1")]))      # 0-1 committed
    plog.append_marker(1, 0, COMMIT)                                   # 2
    plog.append(keyed_txn(2, 0, [(b"a", b"aborted")]))                 # 3 aborted
    plog.append_marker(2, 0, ABORT)                                    # 4
    plog.append(make_batch([(b"b", b"b2")]))                           # 5 plain
    plog._roll()
    plog.append(keyed_txn(3, 0, [(b"b", b"open")]))                    # 6 still open
    plog._roll()
    plog.append(make_batch([(b"c", b"c1")]))                           # 7
    removed = await plog.compact(10**13, 10**12)
    assert removed == 2  # the aborted a, and b1 superseded by b2
    kept = []
    for segment in plog.segments:
        for _position, batch in segment.batches():
            for record in records.iter_records(batch):
                kept.append((record.offset, record.key, record.value))
    # a1 stays latest (the aborted value never counts); both markers stay; the open
    # transaction's segment is not cleaned (it may still abort).
    assert [(o, k) for o, k, _ in kept] == [(0, b"a"), (2, b"\x00\x00\x00\x01"),
                                            (4, b"\x00\x00\x00\x00"), (5, b"b"), (6, b"b"),
                                            (7, b"c")]
    plog.close()
    again = PartitionLog.open(tmp_path / "c-0", LogConfig(compacted=True))
    (tmp_path / "c-0" / "producer-state.json").unlink()
    again.close()
    rebuilt = PartitionLog.open(tmp_path / "c-0", LogConfig(compacted=True))
    assert rebuilt.last_stable_offset == 6  # producer 3's transaction is still open
    rebuilt.close()


async def test_transactional_ids_are_bounded(rig: Rig):
    c = rig.coordinator
    c.max_ids = 2
    first, _ = await c.init_producer_id("a", 60_000)
    second, _ = await c.init_producer_id("b", 60_000)
    await c.add_partitions("b", second, 0, [("t", 0)])  # "b" has a transaction open
    await c.init_producer_id("c", 60_000)  # "a", idle and least recent, is forgotten
    assert c.describe("a") is None and first not in c.by_producer
    third, _ = await c.init_producer_id("d", 60_000)  # and now "c"
    assert c.describe("c") is None
    await c.add_partitions("d", third, 0, [("t", 1)])
    with pytest.raises(TxnError) as full:  # every id has a transaction open: retry later
        await c.init_producer_id("e", 60_000)
    assert full.value.code == ErrorCode.coordinator_not_available
    rig.reopen()  # the forgotten ids stay forgotten
    assert sorted(rig.coordinator.txns) == ["b", "d"]


async def test_offset_metadata_is_bounded(rig: Rig):
    c = rig.coordinator
    pid, epoch = await c.init_producer_id("app", 60_000)
    await c.add_offsets("app", pid, epoch, "g")
    assert await c.commit_offsets("app", "g", pid, epoch, -1, "", None, {
        ("t", 0): Committed(1, -1, "x" * 5000, 0)}) == {
        ("t", 0): ErrorCode.offset_metadata_too_large}


async def test_the_aborted_index_is_appended_and_a_lost_append_costs_only_a_replay(
        tmp_path, monkeypatch):
    # Every sync checkpoints here (in a broker, at most one a second does).
    monkeypatch.setattr(broker_log, "CHECKPOINT_INTERVAL_S", 0.0)
    plog = PartitionLog.open(tmp_path / "t-0")
    for pid in range(1, 6):
        plog.append(txn_batch(pid, 0))
        plog.append_marker(pid, 0, ABORT)
        await plog.wait_durable(plog.append(plain()).write_mark)
    index = tmp_path / "t-0" / "aborted-txns"
    assert index.read_text().splitlines() == ["1 0 2", "2 4 6", "3 8 10", "4 12 14",
                                              "5 16 18"]
    snapshot = json.loads((tmp_path / "t-0" / "producer-state.json").read_text())
    assert snapshot["aborted"] == 5 and "1" not in snapshot["open"]
    expected = plog.aborted_between(0, 100)
    plog.close()
    again = PartitionLog.open(tmp_path / "t-0")
    assert again.aborted_between(0, 100) == expected
    again.close()
    # A lost append (the index is not fsynced): the snapshot is not trusted, the log is.
    index.write_text("1 0 2\n2 4 6\n")
    again = PartitionLog.open(tmp_path / "t-0")
    assert again.aborted_between(0, 100) == expected
    again.close()


def test_the_internal_log_replay_skips_what_it_cannot_read(tmp_path):
    """The replay the offsets log and the transaction log share: records in log order,
    tombstones as None, unreadable ones skipped and counted, a torn tail truncated first."""
    plog = PartitionLog.open(tmp_path / "@internal")  # not compacted: takes a null key
    plog.append(internal_log.batch_of([("a", {"n": 1}), (["k", 2], [1, 2])]))
    plog.append(records.build_batch([(b"not json", b"{}"), (None, b"{}")], 0))
    plog.append(internal_log.batch_of([("a", None), ("b", {"n": 2})]))
    plog.close()
    with open(tmp_path / "@internal" / "00000000000000000000.log", "ab") as torn:
        torn.write(b"\x00" * 30)  # half a batch header: a crash mid-write
    plog = PartitionLog.open(tmp_path / "@internal")
    seen: list[tuple[object, object]] = []

    def apply(key: object, value: object) -> None:
        if key == "b" and value == {"n": 2}:
            seen.append((key, value))
            return
        if not isinstance(key, (str, list)):
            raise TypeError("bad key")
        seen.append((key, value))

    assert internal_log.replay(plog, apply, "test") == 2  # the unparsable key, the null key
    assert seen == [("a", {"n": 1}), (["k", 2], [1, 2]), ("a", None), ("b", {"n": 2})]
    plog.close()


async def test_requests_for_unknown_ids_leave_no_lock_behind(rig: Rig):
    c = rig.coordinator
    for n in range(100):
        with pytest.raises(TxnError):
            await c.end_txn(f"ghost-{n}", 1, 0, commit=True)
    assert c._locks == {}


async def test_the_last_stable_offset_never_falls_below_the_log_start(tmp_path):
    plog = PartitionLog.open(tmp_path / "t-0")
    plog.append(txn_batch(7, 0))          # 0-1, left open
    plog._roll()
    plog.append(plain())                  # 2
    await plog.delete_records(2)
    assert plog.log_start_offset == 2 and plog.last_stable_offset == 2
    plog.close()
