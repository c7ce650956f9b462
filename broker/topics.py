"""Topic metadata and the partition logs it owns.

The catalogue (name, id, partition count, configs) lives in ``<data>/topics.json``, replaced
atomically (write, fsync, rename, fsync the directory) so a crash leaves the old or the new
catalogue, never half of one. Partition logs live in ``<data>/<topic>-<partition>/``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trio
from kio.schema.errors import ErrorCode

from broker.configs import Defaults, InvalidConfig, validate
from broker.log import PartitionLog
from kelp.files import replace_file

log = logging.getLogger("kelp.broker.topics")

_LEGAL_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
MAX_PARTITIONS = 10_000


class TopicError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_topic_name(name: str) -> None:
    # fullmatch: with match and "$", "abc\n" passed (``$`` matches before a final newline).
    if name in (".", "..") or not _LEGAL_NAME.fullmatch(name):
        raise TopicError(
            ErrorCode.invalid_topic_exception,
            f"illegal topic name {name!r}: use 1-249 of [a-zA-Z0-9._-], not '.' or '..'",
        )


@dataclass
class Topic:
    name: str
    topic_id: uuid.UUID
    partition_count: int
    configs: dict[str, str] = field(default_factory=dict)
    logs: list[PartitionLog] = field(default_factory=list)
    # Cancels this topic's background tasks (its partitions' flushers and retention).
    tasks: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Where partitions added later start their background tasks.
    nursery: trio.Nursery | None = None

    @property
    def internal(self) -> bool:
        return self.name.startswith("__")


class TopicRegistry:
    def __init__(self, data_dir: Path, default_partitions: int = 1,
                 defaults: Defaults | None = None, retention_check_s: float = 60.0) -> None:
        self.data_dir = data_dir
        self.default_partitions = default_partitions
        self.defaults = defaults or Defaults.from_flags([])
        self.retention_check_s = retention_check_s
        self._nursery: trio.Nursery | None = None
        self.topics: dict[str, Topic] = {}
        self._catalogue = data_dir / "topics.json"
        self._save_lock = trio.Lock()
        # Names whose deletion has not yet moved their directories aside: a create of the
        # same name waits for that (milliseconds), so it never opens the doomed directories.
        self._deleting: dict[str, trio.Event] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open every partition and own their background tasks until cancelled.

        Closing the logs is the caller's job, once every task that could touch them is gone.
        """
        await trio.to_thread.run_sync(self.open)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for topic in self.topics.values():
                    nursery.start_soon(self._maintain, topic)
                task_status.started()
                await trio.sleep_forever()  # topics created later start their tasks here
        finally:
            self._nursery = None

    async def _maintain(self, topic: Topic) -> None:
        with topic.tasks:
            async with trio.open_nursery() as nursery:
                topic.nursery = nursery
                for plog in topic.logs:
                    nursery.start_soon(plog.maintain, self.retention_check_s)
                await trio.sleep_forever()  # partitions added later start here

    def open(self) -> None:
        """Load the catalogue and recover every partition log."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._catalogue.exists():
            for entry in json.loads(self._catalogue.read_text())["topics"]:
                topic = Topic(entry["name"], uuid.UUID(entry["id"]), entry["partitions"],
                              entry.get("configs", {}))
                self._open_logs(topic)
                self.topics[topic.name] = topic
        log.info("topics loaded", extra={"topics": len(self.topics),
                                         "partitions": self.partition_count()})

    def close(self) -> None:
        for topic in self.topics.values():
            for plog in topic.logs:
                plog.close()

    def partition_count(self) -> int:
        return sum(topic.partition_count for topic in self.topics.values())

    def _open_logs(self, topic: Topic) -> None:
        config = self.defaults.log_config(topic.configs)
        while len(topic.logs) < topic.partition_count:
            index = len(topic.logs)
            topic.logs.append(PartitionLog.open(self.data_dir / f"{topic.name}-{index}", config))

    def _save(self) -> None:
        entries = [
            {"name": t.name, "id": str(t.topic_id), "partitions": t.partition_count,
             "configs": t.configs}
            for t in self.topics.values()
        ]
        replace_file(self._catalogue, json.dumps({"topics": entries}, indent=1), durable=True)

    async def _save_catalogue(self) -> None:
        """Write the catalogue, one write at a time, off the event loop.

        Shielded: a caller that gives up (a client's timeout cancels its gRPC call) must not
        leave memory and disk disagreeing about a change already made in memory; the write
        finishes, then the cancellation is delivered.
        """
        with trio.CancelScope(shield=True):
            async with self._save_lock:
                await trio.to_thread.run_sync(self._save)

    async def create(self, name: str, partitions: int, configs: dict[str, str] | None = None,
                     *, validate_only: bool = False, topic_id: uuid.UUID | None = None
                     ) -> Topic:
        """Create a topic; raises ``TopicError`` with Kafka's error code when it cannot.
        ``topic_id``: the id the cluster gave it (a new one otherwise)."""
        check_topic_name(name)
        while (deleting := self._deleting.get(name)) is not None:
            await deleting.wait()
        if name in self.topics:
            raise TopicError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")
        if partitions == -1:
            partitions = self.default_partitions
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise TopicError(ErrorCode.invalid_partitions,
                             f"partition count must be 1..{MAX_PARTITIONS}, got {partitions}")
        try:
            configs = validate(dict(configs or {}))
        except InvalidConfig as exc:
            raise TopicError(ErrorCode.invalid_config, str(exc)) from None
        topic = Topic(name, topic_id or uuid.uuid4(), partitions, configs)
        if validate_only:
            return topic
        self._open_logs(topic)
        self.topics[name] = topic
        try:
            await self._save_catalogue()
        except BaseException:
            # Only if it is still ours: a DeleteTopics (and maybe a new CreateTopics of the
            # same name) may have run while the catalogue was written, and the directories now
            # belong to them.
            if self.topics.get(name) is topic:
                del self.topics[name]
                for plog in topic.logs:
                    plog.close()
            raise
        if self._nursery is not None:
            self._nursery.start_soon(self._maintain, topic)
        log.info("topic created", extra={"topic": name, "partitions": partitions})
        return topic

    def reconfigure(self, defaults: Defaults) -> None:
        """New broker-wide defaults (a dynamic broker config changed): every partition takes
        its new effective config at once."""
        self.defaults = defaults
        for topic in self.topics.values():
            config = defaults.log_config(topic.configs)
            for plog in topic.logs:
                plog.config = config

    async def alter_configs(self, name: str, configs: dict[str, str], *,
                            validate_only: bool = False) -> None:
        """Replace a topic's own configs (durably); its partitions take them at once."""
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        try:
            validate(configs)
            log_config = self.defaults.log_config(configs)
        except InvalidConfig as exc:
            raise TopicError(ErrorCode.invalid_config, str(exc)) from None
        if validate_only:
            return
        previous, topic.configs = topic.configs, dict(configs)
        try:
            await self._save_catalogue()
        except BaseException:
            topic.configs = previous
            raise
        for plog in topic.logs:
            plog.config = log_config
        log.info("topic configs altered", extra={"topic": name})

    async def delete(self, name: str) -> Topic:
        """Forget a topic at once and remove its files in the background of this call."""
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        # Forgotten at once; its directories are moved aside once no worker thread writes in
        # them any more. A topic re-created with the same name waits for that move, so it
        # starts in fresh directories and no late write of the old log lands in them.
        del self.topics[name]
        topic.tasks.cancel()
        doomed = []
        moved = self._deleting[name] = trio.Event()
        try:
            with trio.CancelScope(shield=True):  # begun, it finishes: the name is gone already
                for plog in topic.logs:
                    plog.retire()  # reads in flight finish on the files they opened
                for plog in topic.logs:
                    await plog.wait_writes_done()  # syncs and the cleaner write by path
                for plog in topic.logs:
                    grave = plog.directory.with_name(
                        f"{plog.directory.name}.{uuid.uuid4().hex}.deleted")
                    plog.directory.rename(grave)
                    doomed.append(grave)
        finally:
            del self._deleting[name]
            moved.set()
        await self._save_catalogue()
        await trio.to_thread.run_sync(lambda: [shutil.rmtree(d, ignore_errors=True)
                                               for d in doomed])
        log.info("topic deleted", extra={"topic": name})
        return topic

    async def add_partitions(self, name: str, count: int, *, validate_only: bool = False
                             ) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"unknown topic {name!r}")
        if count <= topic.partition_count:
            raise TopicError(ErrorCode.invalid_partitions,
                             f"topic {name!r} has {topic.partition_count} partitions; the new "
                             f"count must be larger, not {count}")
        if count > MAX_PARTITIONS:
            raise TopicError(ErrorCode.invalid_partitions, f"at most {MAX_PARTITIONS}")
        if validate_only:
            return topic
        first_new = topic.partition_count
        topic.partition_count = count
        self._open_logs(topic)
        try:
            await self._save_catalogue()
        except BaseException:
            if self.topics.get(name) is topic:  # else a delete moved these directories away
                for plog in topic.logs[first_new:]:
                    plog.close()
                del topic.logs[first_new:]
                topic.partition_count = first_new
            raise
        if self.topics.get(name) is not topic:  # deleted while the catalogue was saved
            raise TopicError(ErrorCode.unknown_topic_or_partition, f"topic {name!r} was deleted")
        if topic.nursery is not None:
            for plog in topic.logs[first_new:]:
                topic.nursery.start_soon(plog.maintain, self.retention_check_s)
        log.info("partitions added", extra={"topic": name, "partitions": count})
        return topic

    def by_id(self, topic_id: uuid.UUID) -> Topic | None:
        return next((t for t in self.topics.values() if t.topic_id == topic_id), None)

    def get(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def partition(self, name: str, index: int) -> PartitionLog:
        topic = self.topics.get(name)
        if topic is None or not 0 <= index < topic.partition_count:
            raise TopicError(ErrorCode.unknown_topic_or_partition,
                             f"unknown topic or partition {name}-{index}")
        return topic.logs[index]
