"""The transaction coordinator: Kafka's ``TransactionCoordinator`` in the broker.

Gateways stay stateless: every transactional call reaches this one object. Each transactional
id's state (``broker.transactions.Txn``) changes under that id's lock and is written to the
transaction log (``<data>/@transactions``, a compacted internal log) before the caller hears
of it. Ending a transaction writes its Prepare state durably, then a COMMIT or ABORT control
batch to every partition in it (waiting for them to be durable, as acks=all appends wait),
then makes its transactional offset commits visible, then records it complete. A broker that
stops anywhere in that sequence finishes it on start, from the durable Prepare state.

The coordinator also guards the data path (KIP-890's verification, done in-process): a
transactional batch is appended only if its producer holds the id at that epoch and added
the partition to the open transaction, so a fenced zombie cannot write, nor can a producer
write to a partition whose marker would never come.

Open transactions past their timeout are aborted by ``run``, with the producer's epoch bumped
so that the instance that let it time out is fenced, as Kafka does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from broker import internal_log, metrics
from broker.group_state import MAX_METADATA_BYTES
from broker.log import LogConfig, OffsetOutOfRange, PartitionLog, now_ms
from broker.offsets import Committed, OffsetStore
from broker.producer_ids import MAX_EPOCH, BlockAllocator
from broker.producers import ABORT, COMMIT
from broker.topics import TopicError, TopicRegistry
from broker.transactions import (
    DEFAULT_ID_EXPIRATION_MS,
    DEFAULT_MAX_TIMEOUT_MS,
    MAX_PARTITIONS_PER_TXN,
    TopicPartition,
    Txn,
    TxnError,
    TxnState,
)

log = logging.getLogger("kelp.broker.transactions")

# How often idle transactional ids are looked at for expiry (timeouts wake the loop exactly).
EXPIRY_CHECK_S = 60.0
# A Prepare state whose markers could not be written (a disk error) is retried this often.
RETRY_S = 1.0
# Transactional ids kept at most. Past it, the least recently used idle ids are forgotten
# early (as expiry would forget them); if every id has a transaction open, a new one waits
# (COORDINATOR_NOT_AVAILABLE, retriable: open transactions end within their timeout).
MAX_TRANSACTIONAL_IDS = 100_000

# Writes (topic, partition, producer id, epoch, kind)'s marker and returns once it is durable
# where the partition is led.
WriteMarker = Callable[[str, int, int, int, int], Awaitable[None]]


class TransactionCoordinator:
    def __init__(self, directory: Path | None, config: LogConfig | None,
                 registry: TopicRegistry, offsets: OffsetStore, producer_ids: BlockAllocator, *,
                 member_error: Callable[[str, int, str, str | None], ErrorCode | None],
                 max_timeout_ms: int = DEFAULT_MAX_TIMEOUT_MS,
                 id_expiration_ms: int = DEFAULT_ID_EXPIRATION_MS,
                 max_ids: int = MAX_TRANSACTIONAL_IDS,
                 shared: PartitionLog | None = None,
                 replicated: internal_log.Replicated = None,
                 markers: WriteMarker | None = None) -> None:
        # A lone broker's transaction log in ``directory``; in a cluster the shared
        # coordination log (see ``broker.offsets.OffsetStore``).
        if shared is None:
            assert directory is not None
            self.log = PartitionLog.open(directory, config)
        else:
            self.log = shared
        self._owns_log = shared is None
        self.replicated = replicated
        # In a cluster, markers go to each partition's leader (broker.txn_markers).
        self.markers = markers
        self.registry = registry
        self.offsets = offsets
        self.producer_ids = producer_ids
        # KIP-447: whether (group, generation, member, instance) may commit offsets now.
        self.member_error = member_error
        self.max_timeout_ms = max_timeout_ms
        self.id_expiration_ms = id_expiration_ms
        self.max_ids = max_ids
        self.txns: dict[str, Txn] = {}
        self.by_producer: dict[int, str] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._changed = trio.Event()
        internal_log.replay(self.log, self._apply, "transaction state",
                            None if shared is None else internal_log.is_txn_key)
        self.by_producer = {txn.producer_id: tid for tid, txn in self.txns.items()}

    def _apply(self, key: Any, value: Any | None) -> None:
        if not isinstance(key, str):
            raise TypeError("key is not a transactional id")
        if value is None:
            self.txns.pop(key, None)
        else:
            self.txns[key] = Txn.from_json(key, value)

    def close(self) -> None:
        if self._owns_log:
            self.log.close()

    # -- persistence ----------------------------------------------------------------------

    async def _persist(self, txn: Txn, *, durable: bool = True) -> None:
        txn.last_update_ms = now_ms()
        result = self.log.append(internal_log.batch_of([(txn.transactional_id,
                                                         txn.to_json())]))
        self.by_producer[txn.producer_id] = txn.transactional_id
        self._changed.set()
        if durable:
            await self.log.wait_durable(result.write_mark)
            if self.replicated is not None:
                await self.replicated(result.last_offset + 1)

    @contextlib.asynccontextmanager
    async def _locked(self, transactional_id: str) -> AsyncIterator[None]:
        """Hold the id's lock; a lock of an id that is not kept goes when nobody needs it, so
        requests naming ids that do not exist cannot pile locks up."""
        lock = self._locks.setdefault(transactional_id, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if transactional_id not in self.txns and not lock.locked() and \
                    not lock.statistics().tasks_waiting and \
                    self._locks.get(transactional_id) is lock:
                del self._locks[transactional_id]

    def _known(self, transactional_id: str) -> Txn:
        txn = self.txns.get(transactional_id)
        if txn is None:
            raise TxnError(ErrorCode.invalid_producer_id_mapping,
                           f"no producer holds transactional id {transactional_id!r}: "
                           "InitProducerId first")
        return txn

    # -- the data path --------------------------------------------------------------------

    def append_error(self, producer_id: int, epoch: int, topic: str, partition: int
                     ) -> tuple[ErrorCode, str] | None:
        """Why a transactional batch of this producer may not be appended to the partition
        now, or None if it may (synchronous: checked and appended with no await between)."""
        tid = self.by_producer.get(producer_id)
        txn = self.txns.get(tid) if tid is not None else None
        if txn is None or txn.producer_id != producer_id:
            return (ErrorCode.invalid_txn_state,
                    f"producer {producer_id} holds no transactional id")
        if epoch != txn.producer_epoch:
            return (ErrorCode.invalid_producer_epoch,
                    f"producer epoch {epoch} is not the current {txn.producer_epoch} (fenced)")
        if txn.state is not TxnState.ONGOING or (topic, partition) not in txn.partitions:
            return (ErrorCode.invalid_txn_state,
                    f"{topic}-{partition} is not in an open transaction of "
                    f"{txn.transactional_id!r} (AddPartitionsToTxn first)")
        return None

    def pending_offsets(self, group: str) -> set[TopicPartition]:
        """Partitions of ``group`` whose offsets an open transaction will commit
        (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT for them)."""
        pending: set[TopicPartition] = set()
        for txn in self.txns.values():
            if txn.state.open and group in txn.offsets:
                pending.update(txn.offsets[group])
        return pending

    # -- requests -------------------------------------------------------------------------

    async def init_producer_id(self, transactional_id: str, timeout_ms: int,
                               producer_id: int = -1, epoch: int = -1) -> tuple[int, int]:
        """(producer id, epoch) for a producer taking ``transactional_id``: the previous
        instance's open transaction is aborted and that instance fenced. Raises TxnError."""
        if not 0 < timeout_ms <= self.max_timeout_ms:
            raise TxnError(ErrorCode.invalid_transaction_timeout,
                           f"transaction.timeout.ms {timeout_ms} is not within 1.."
                           f"{self.max_timeout_ms} (transaction.max.timeout.ms)")
        async with self._locked(transactional_id):
            txn = self.txns.get(transactional_id)
            if txn is None:
                if len(self.txns) >= self.max_ids and not self._forget_idle(
                        len(self.txns) - self.max_ids + 1):
                    raise TxnError(ErrorCode.coordinator_not_available,
                                   f"{len(self.txns)} transactional ids all have a transaction "
                                   "open; retry once one ends")
                txn = Txn(transactional_id, await self.producer_ids.allocate(), 0, timeout_ms)
                self.txns[transactional_id] = txn
                await self._persist(txn)
                return txn.producer_id, txn.producer_epoch
            if producer_id >= 0:  # KIP-360: a producer recovering its own id
                if producer_id == txn.producer_id and epoch == txn.last_producer_epoch \
                        and not txn.state.open:
                    return txn.producer_id, txn.producer_epoch  # a retry of a bump
                if (producer_id, epoch) != (txn.producer_id, txn.producer_epoch):
                    raise TxnError(ErrorCode.producer_fenced,
                                   f"producer {producer_id} epoch {epoch} no longer holds "
                                   f"{transactional_id!r}")
            with trio.CancelScope(shield=True):  # begun, the fencing completes
                if txn.state is TxnState.ONGOING:
                    self._bump(txn)  # the abort markers fence the old instance
                    await self._complete(txn, commit=False)
                elif txn.state.preparing:
                    await self._complete(txn, commit=txn.state is TxnState.PREPARE_COMMIT)
                    self._bump(txn)
                else:
                    self._bump(txn)
                if txn.producer_epoch >= MAX_EPOCH - 1:  # exhausted: a new producer id
                    self.by_producer.pop(txn.producer_id, None)
                    txn.producer_id = await self.producer_ids.allocate()
                    txn.producer_epoch, txn.last_producer_epoch = 0, -1
                txn.timeout_ms = timeout_ms
                txn.state, txn.start_ms = TxnState.EMPTY, -1
                txn.partitions, txn.offsets, txn.groups = set(), {}, set()
                await self._persist(txn)
            return txn.producer_id, txn.producer_epoch

    def _bump(self, txn: Txn) -> None:
        txn.last_producer_epoch = txn.producer_epoch
        txn.producer_epoch += 1

    async def add_partitions(self, transactional_id: str, producer_id: int, epoch: int,
                             wanted: Iterable[TopicPartition], *, verify_only: bool = False
                             ) -> dict[TopicPartition, ErrorCode]:
        """Add partitions to the open transaction (opening one); raises TxnError for the
        whole request (fenced, unknown id, a transaction still completing)."""
        wanted = list(dict.fromkeys(wanted))
        async with self._locked(transactional_id):
            txn = self._known(transactional_id)
            txn.check_producer(producer_id, epoch)
            if verify_only:
                return {tp: ErrorCode.none if txn.state is TxnState.ONGOING
                        and tp in txn.partitions else ErrorCode.invalid_txn_state
                        for tp in wanted}
            if txn.state.preparing:
                raise TxnError(ErrorCode.concurrent_transactions,
                               "the previous transaction is still completing")
            unknown = {tp for tp in wanted if not self._exists(tp)}
            if unknown:
                return {tp: ErrorCode.unknown_topic_or_partition if tp in unknown
                        else ErrorCode.operation_not_attempted for tp in wanted}
            new = [tp for tp in wanted if tp not in txn.partitions
                   or txn.state is not TxnState.ONGOING]
            if new:
                if len(txn.partitions) + len(new) > MAX_PARTITIONS_PER_TXN:
                    raise TxnError(ErrorCode.invalid_request,
                                   f"a transaction spans at most {MAX_PARTITIONS_PER_TXN} "
                                   "partitions")
                txn.begin(now_ms())
                txn.partitions.update(new)
                await self._persist(txn)
            return dict.fromkeys(wanted, ErrorCode.none)

    def _exists(self, where: TopicPartition) -> bool:
        topic = self.registry.get(where[0])
        return topic is not None and 0 <= where[1] < topic.partition_count

    async def add_offsets(self, transactional_id: str, producer_id: int, epoch: int,
                          group: str) -> None:
        async with self._locked(transactional_id):
            txn = self._known(transactional_id)
            txn.check_producer(producer_id, epoch)
            if txn.state is TxnState.ONGOING and group in txn.groups:
                return
            txn.begin(now_ms())
            txn.groups.add(group)
            await self._persist(txn)

    async def commit_offsets(self, transactional_id: str, group: str, producer_id: int,
                             epoch: int, generation: int, member_id: str,
                             instance_id: str | None,
                             offsets: dict[TopicPartition, Committed]
                             ) -> dict[TopicPartition, ErrorCode]:
        """TxnOffsetCommit: offsets that become the group's committed offsets when (and only
        if) the transaction commits."""
        async with self._locked(transactional_id):
            txn = self._known(transactional_id)
            try:
                txn.check_producer(producer_id, epoch)
            except TxnError as exc:
                # TxnOffsetCommit has no PRODUCER_FENCED before v3 clients: Kafka answers
                # INVALID_PRODUCER_EPOCH, which every client treats as fenced.
                code = (ErrorCode.invalid_producer_epoch
                        if exc.code == ErrorCode.producer_fenced else exc.code)
                return dict.fromkeys(offsets, code)
            if txn.state is not TxnState.ONGOING or group not in txn.groups:
                return dict.fromkeys(offsets, ErrorCode.invalid_txn_state)
            error = self.member_error(group, generation, member_id, instance_id)
            if error is not None:
                return dict.fromkeys(offsets, error)
            results = {tp: ErrorCode.unknown_topic_or_partition if not self._exists(tp)
                       else ErrorCode.offset_metadata_too_large
                       if c.metadata is not None and len(c.metadata.encode()) > MAX_METADATA_BYTES
                       else ErrorCode.none for tp, c in offsets.items()}
            accepted = {tp: c for tp, c in offsets.items() if results[tp] == ErrorCode.none}
            if accepted:
                txn.offsets.setdefault(group, {}).update(accepted)
                await self._persist(txn)
            return results

    async def end_txn(self, transactional_id: str, producer_id: int, epoch: int,
                      commit: bool) -> None:
        """Commit or abort the open transaction; returns once its markers are durable.

        Raises TxnError: fenced, or the outcome asked differs from the one that already
        happened (a timeout aborted it: INVALID_TXN_STATE for a commit).
        """
        async with self._locked(transactional_id):
            txn = self._known(transactional_id)
            done = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
            if producer_id == txn.producer_id and epoch == txn.last_producer_epoch \
                    and txn.state is done and not commit:
                return  # an abort the coordinator already did (a timeout), retried
            txn.check_producer(producer_id, epoch)
            if txn.state is TxnState.ONGOING:
                with trio.CancelScope(shield=True):  # begun, it completes
                    await self._complete(txn, commit=commit)
            elif txn.state.preparing:
                raise TxnError(ErrorCode.concurrent_transactions, "still completing")
            elif txn.state is TxnState.EMPTY or txn.state is done:
                return  # nothing open, or a retry of the end that happened
            else:
                raise TxnError(ErrorCode.invalid_txn_state,
                               f"the transaction already ended with {txn.state.value}")

    async def _complete(self, txn: Txn, *, commit: bool) -> None:
        """Prepare durably, write the markers, apply the offsets, record it complete."""
        if not txn.state.preparing:
            txn.state = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
            await self._persist(txn)
        kind = COMMIT if commit else ABORT
        if self.markers is not None:
            markers = self.markers
            async with trio.open_nursery() as nursery:
                for topic, partition in sorted(txn.partitions):
                    nursery.start_soon(markers, topic, partition, txn.producer_id,
                                       txn.producer_epoch, kind)
        else:
            written: list[tuple[PartitionLog, int]] = []
            for topic, partition in sorted(txn.partitions):
                try:
                    plog = self.registry.partition(topic, partition)
                    written.append((plog, plog.append_marker(
                        txn.producer_id, txn.producer_epoch, kind).write_mark))
                except (TopicError, OffsetOutOfRange):
                    continue  # the topic was deleted: no reader is left to need the marker
            async with trio.open_nursery() as nursery:
                for plog, mark in written:
                    nursery.start_soon(self._durable, plog, mark)
        if commit:
            for group, offsets in txn.offsets.items():
                await self.offsets.write(group, offsets)
        txn.state = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
        txn.start_ms = -1
        txn.partitions, txn.offsets, txn.groups = set(), {}, set()
        # Not waited for: lost, the durable Prepare state completes the same way again.
        await self._persist(txn, durable=False)
        metrics.TRANSACTIONS.labels("commit" if commit else "abort").inc()
        log.info("transaction ended", extra={"transactional_id": txn.transactional_id,
                                             "outcome": "commit" if commit else "abort"})

    @staticmethod
    async def _durable(plog: PartitionLog, mark: int) -> None:
        with contextlib.suppress(OffsetOutOfRange):  # deleted meanwhile
            await plog.wait_durable(mark)

    # -- reading ----------------------------------------------------------------------------

    def describe(self, transactional_id: str) -> Txn | None:
        return self.txns.get(transactional_id)

    def list(self, states: set[str], producer_ids: set[int], min_duration_ms: int
             ) -> list[Txn]:
        now = now_ms()
        return [txn for txn in self.txns.values()
                if (not states or txn.state.value in states)
                and (not producer_ids or txn.producer_id in producer_ids)
                and (min_duration_ms < 0 or (txn.state.open and txn.start_ms >= 0
                                             and now - txn.start_ms >= min_duration_ms))]

    # -- background -----------------------------------------------------------------------

    async def run(self) -> None:
        """Finish what a previous life left prepared, then abort timed-out transactions and
        forget idle ids, until cancelled."""
        next_expiry = trio.current_time()
        while True:
            self._changed = trio.Event()  # before looking: a change from now on wakes us
            now = now_ms()
            for txn in list(self.txns.values()):
                if txn.state.preparing or txn.expired(now):
                    await self._end_in_background(txn)
            if trio.current_time() >= next_expiry:
                await self._expire_ids(now)
                next_expiry = trio.current_time() + EXPIRY_CHECK_S
            wake = next_expiry
            for txn in self.txns.values():
                if txn.state is TxnState.ONGOING:
                    wake = min(wake, trio.current_time()
                               + (txn.start_ms + txn.timeout_ms - now) / 1000 + 0.01)
                elif txn.state.preparing:
                    wake = min(wake, trio.current_time() + RETRY_S)
            with trio.move_on_at(wake):
                await self._changed.wait()

    async def _end_in_background(self, txn: Txn) -> None:
        async with self._locked(txn.transactional_id):
            if self.txns.get(txn.transactional_id) is not txn:
                return
            try:
                if txn.state.preparing:
                    await self._complete(txn, commit=txn.state is TxnState.PREPARE_COMMIT)
                elif txn.expired(now_ms()):
                    log.info("transaction timed out; aborting", extra={
                        "transactional_id": txn.transactional_id,
                        "timeout_ms": txn.timeout_ms})
                    self._bump(txn)  # fences the instance that let it time out
                    await self._complete(txn, commit=False)
            except OSError as exc:
                log.error("could not end a transaction; retrying", extra={
                    "transactional_id": txn.transactional_id, "error": str(exc)})

    def _forget_idle(self, count: int) -> bool:
        """Forget the ``count`` least recently used ids with no transaction open (and not
        locked by a request in flight); False if there are not that many."""
        def busy(txn: Txn) -> bool:
            lock = self._locks.get(txn.transactional_id)
            return lock is not None and lock.locked()

        idle = sorted((txn for txn in self.txns.values() if not txn.state.open
                       and not busy(txn)),
                      key=lambda txn: txn.last_update_ms)[:count]
        if len(idle) < count:
            return False
        for txn in idle:
            self._forget(txn)
        return True

    def _forget(self, txn: Txn) -> None:
        del self.txns[txn.transactional_id]
        self.by_producer.pop(txn.producer_id, None)
        self._locks.pop(txn.transactional_id, None)
        self.log.append(internal_log.batch_of([(txn.transactional_id, None)]))

    async def _expire_ids(self, now: int) -> None:
        idle = [txn for txn in self.txns.values() if not txn.state.open
                and now - txn.last_update_ms > self.id_expiration_ms]
        for txn in idle:
            async with self._locked(txn.transactional_id):
                if self.txns.get(txn.transactional_id) is not txn or txn.state.open:
                    continue
                self._forget(txn)
