"""Consumers of a group, one per client library, that report to a shared ``Ledger``.

confluent-kafka and kafka-python members poll in a thread of their own; aiokafka members are
tasks on one asyncio loop running in a thread (``AsyncioThread``). Each processes what it polls,
then commits synchronously (at-least-once with commits after processing).
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.group_ledger import Ledger

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
BATCH = 20              # records per poll
PROCESS_S = 0.01        # "processing" time per batch, so rebalances land mid-stream


class Member:
    """One consumer of a group. Subclasses supply the client; this class keeps the books."""

    client = "?"

    def __init__(self, name: str, ledger: Ledger, bootstrap: str, group: str, topic: str,
                 **options: object) -> None:
        self.name, self.ledger, self.bootstrap = name, ledger, bootstrap
        self.group, self.topic, self.options = group, topic, options
        self.stopping = threading.Event()
        self.reported: frozenset[int] | None = None  # the client's own assignment()
        self.member_id: str | None = None
        self._books = threading.Lock()
        self._positions: dict[int, int] = {}        # next offset to process, per partition
        self._pending: dict[int, list[int]] = {}    # processed, not yet committed

    # -- bookkeeping shared by every client

    def processed(self, batch: list[tuple[int, int, bytes]]) -> None:
        self.ledger.record(self.name, batch)
        with self._books:
            for p, offset, _value in batch:
                self._positions[p] = offset + 1
                self._pending.setdefault(p, []).append(offset)

    def to_commit(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        wanted = None if partitions is None else set(partitions)
        with self._books:
            return {p: pos for p, pos in self._positions.items()
                    if self._pending.get(p) and (wanted is None or p in wanted)}

    def commit_done(self, offsets: dict[int, int], error: BaseException | None) -> None:
        with self._books:
            if error is None:
                for p, pos in offsets.items():
                    self._pending[p] = [o for o in self._pending.get(p, []) if o >= pos]
                return
            uncertain = {(p, o) for p in offsets for o in self._pending.get(p, [])}
        with self.ledger.lock:
            self.ledger.allowed_duplicates |= uncertain
            self.ledger.commit_failures.append(f"{self.name}: {offsets}: {error!r}")

    def forget(self, partitions: Iterable[int]) -> None:
        with self._books:
            for p in partitions:
                self._positions.pop(p, None)
                self._pending.pop(p, None)

    def failed(self) -> None:
        with self.ledger.lock:
            self.ledger.errors.append(f"{self.client} {self.name}:\n{traceback.format_exc()}")

    # -- lifecycle, per client

    def start(self) -> Member:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what was processed, leave the group (if the client does), close."""
        raise NotImplementedError


class ThreadMember(Member):
    """A member polling in its own thread (confluent-kafka, kafka-python)."""

    def start(self) -> Member:
        self.thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not close within {timeout} s"

    def _thread_main(self) -> None:
        try:
            self.run()
        except BaseException:
            self.failed()

    def run(self) -> None:
        raise NotImplementedError


class ConfluentMember(ThreadMember):
    client = "confluent-kafka"

    def run(self) -> None:
        config = {"bootstrap.servers": self.bootstrap, "group.id": self.group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": SESSION_TIMEOUT_MS,
                  "heartbeat.interval.ms": HEARTBEAT_MS,
                  "error_cb": lambda err: self._client_error(err)}
        config.update(self.options)
        # An option given as None removes a default (group.protocol=consumer refuses the
        # classic protocol's session and heartbeat settings).
        consumer = Consumer({k: v for k, v in config.items() if v is not None})
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self.stopping.is_set():
                messages = consumer.consume(BATCH, timeout=0.2)
                batch = []
                for m in messages:
                    if m.error() is None:
                        batch.append((m.partition(), m.offset(), m.value()))
                    else:
                        self._client_error(m.error())
                if batch:
                    self.processed(batch)
                    time.sleep(PROCESS_S)
                    self._commit(consumer, self.to_commit())
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
                self.member_id = consumer.memberid()
            self._commit(consumer, self.to_commit())
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        finally:
            consumer.close()

    def _client_error(self, err: object) -> None:
        with self.ledger.lock:
            self.ledger.client_errors.append(f"{self.name}: {err}")

    def _commit(self, consumer: Consumer, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        error: BaseException | None = None
        try:
            result = consumer.commit(offsets=[TopicPartition(self.topic, p, o)
                                              for p, o in offsets.items()],
                                     asynchronous=False)
            bad = [tp for tp in result or () if tp.error is not None]
            if bad:
                error = KafkaException(bad[0].error)
        except KafkaException as exc:
            error = exc
        self.commit_done(offsets, error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ledger.assigned(self.name, [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self._commit(consumer, self.to_commit(parts))
        self.forget(parts)
        self.ledger.revoked(self.name, parts)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        self.forget(parts)
        self.ledger.revoked(self.name, parts, "lost")


class KafkaPythonMember(ThreadMember):
    client = "kafka-python"

    def run(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka import TopicPartition as KTopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        member = self

        class Listener(ConsumerRebalanceListener):
            # Runs on kafka-python 3's IO thread while our thread is inside poll(); it must not
            # block on the consumer (a sync commit here would deadlock), and need not: every
            # batch is committed before the next poll.
            def on_partitions_revoked(self, revoked):
                parts = [tp.partition for tp in revoked]
                member.forget(parts)
                member.ledger.revoked(member.name, parts)

            def on_partitions_assigned(self, assigned):
                member.ledger.assigned(member.name, [tp.partition for tp in assigned])

            def on_partitions_lost(self, lost):
                parts = [tp.partition for tp in lost]
                member.forget(parts)
                member.ledger.revoked(member.name, parts, "lost")

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 session_timeout_ms=SESSION_TIMEOUT_MS,
                                 heartbeat_interval_ms=HEARTBEAT_MS, **self.options)

        def commit(offsets: dict[int, int]) -> None:
            if not offsets:
                return
            error: BaseException | None = None
            try:
                consumer.commit({KTopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                                 for p, o in offsets.items()})
            except KafkaError as exc:
                error = exc
            self.commit_done(offsets, error)

        try:
            consumer.subscribe([self.topic], listener=Listener())
            while not self.stopping.is_set():
                polled = consumer.poll(timeout_ms=200, max_records=BATCH)
                batch = [(r.partition, r.offset, r.value)
                         for records in polled.values() for r in records]
                if batch:
                    self.processed(batch)
                    time.sleep(PROCESS_S)
                    commit(self.to_commit())
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
            commit(self.to_commit())
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        finally:
            consumer.close(autocommit=False)


class AsyncioThread:
    """An asyncio event loop in a thread, shared by the aiokafka members of one scenario."""

    def __init__(self) -> None:
        # A plain asyncio loop, whatever policy trio-asyncio (imported by other tests in this
        # process) has installed: its loops cannot run in a thread of their own.
        self.loop = asyncio.SelectorEventLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aiokafka-loop",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5) if tasks else None

        try:
            self.submit(cancel_rest()).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


class AiokafkaMember(Member):
    client = "aiokafka"

    def __init__(self, *args: object, loop: AsyncioThread, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.runner = loop

    def start(self) -> Member:
        self.future = self.runner.submit(self._main())
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.future.result(timeout)

    async def _main(self) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
        from aiokafka import TopicPartition as ATopicPartition
        from aiokafka.errors import KafkaError

        member = self

        async def commit(offsets: dict[int, int]) -> None:
            if not offsets:
                return
            error: BaseException | None = None
            try:
                await consumer.commit({ATopicPartition(self.topic, p): o
                                       for p, o in offsets.items()})
            except KafkaError as exc:
                error = exc
            self.commit_done(offsets, error)

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                parts = [tp.partition for tp in revoked]
                await commit(member.to_commit(parts))  # the rebalance waits for this
                member.forget(parts)
                member.ledger.revoked(member.name, parts)

            async def on_partitions_assigned(self, assigned):
                member.ledger.assigned(member.name, [tp.partition for tp in assigned])

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    session_timeout_ms=SESSION_TIMEOUT_MS,
                                    heartbeat_interval_ms=HEARTBEAT_MS, **self.options)
        try:
            await consumer.start()
            consumer.subscribe([self.topic], listener=Listener())
            while not self.stopping.is_set():
                polled = await consumer.getmany(timeout_ms=200, max_records=BATCH)
                batch = [(r.partition, r.offset, r.value)
                         for records in polled.values() for r in records]
                if batch:
                    self.processed(batch)
                    await asyncio.sleep(PROCESS_S)
                    owned = {tp.partition for tp in consumer.assignment()}
                    await commit(self.to_commit(owned))
                self.reported = frozenset(tp.partition for tp in consumer.assignment())
            owned = {tp.partition for tp in consumer.assignment()}
            await commit(self.to_commit(owned))
            self.ledger.revoked(self.name, self.ledger.snapshot().get(self.name, ()), "close")
        except BaseException:
            self.failed()
            raise
        finally:
            await consumer.stop()


MemberFactory = Callable[..., Member]


def stop_all(members: Iterable[Member], timeout: float = 30.0) -> None:
    """Stop members in parallel (each close may wait for a rebalance of the rest)."""
    members = list(members)
    stoppers = [threading.Thread(target=_stop_quietly, args=(m, timeout)) for m in members]
    for s in stoppers:
        s.start()
    for s in stoppers:
        s.join(timeout + 5)


def _stop_quietly(member: Member, timeout: float) -> None:
    try:
        member.stop(timeout)
    except BaseException:
        member.failed()
