"""Replication between the brokers of a cluster, as Kafka does it.

``ReplicaManager`` (``broker.replicas``) tells ``Replication`` the state of every partition
this broker hosts whenever etcd changes; this module acts on it:

* **leader**: stamps its leader epoch into what it writes, answers its followers'
  ``ReplicaFetch`` (a long poll whose offset is the follower's log end), keeps their progress
  (``broker.isr.LeaderProgress``), moves the high-water mark (consumers read below it;
  ``acks=all`` waits for it) and writes ISR shrinks and expansions to etcd, compare-and-swap
  on the partition's revision, so a deposed leader's write fails;
* **follower**: one task per followed partition: first asks the leader where its own latest
  epoch ended (``LeaderEpochEnd``, Kafka's OffsetForLeaderEpoch) and truncates there, so
  records a deposed leader wrote alone are never served; then fetches, appends the leader's
  batches byte for byte (``PartitionLog.append_replica``), makes them durable on the fsync
  policy before fetching again (the next fetch offset is what the leader counts), and keeps
  the leader's high-water mark.

A topic the cluster does not manage (internal ones, created by this broker alone) is not
touched: the broker serves it as a lone broker would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio
from kio.schema.errors import ErrorCode

from broker.controller import Controller, partition_key
from broker.isr import LeaderProgress
from broker.log import OffsetOutOfRange, PartitionLog
from broker.membership import Membership
from broker.placement import NO_LEADER, PartitionState
from broker.replica_links import LeaderLink
from broker.storage.epochs import UNDEFINED
from broker.topics import TopicError, TopicRegistry
from kelp import grpc
from kelp.etcd import EtcdUnavailable
from kelp.metrics import Gauges
from kelp.mux import serve_each
from kelp.recordbatch import CorruptBatch
from kelp.routes import BROKER
from kelp.rpc.broker import v1 as pb

log = logging.getLogger("kelp.broker.replication")

REPLICA_LAG_MS = 30_000  # Kafka's replica.lag.time.max.ms
FETCH_WAIT_MS = 500      # a follower's long poll
FETCH_MAX_BYTES = 1 << 20  # what a follower asks for; a leader never sends more than:
MAX_REPLICA_FETCH_BYTES = 8 << 20
MAX_STREAM_FETCHES = 4096  # a follower's fetches outstanding on one ReplicaFetchStream
CALL_TIMEOUT_S = 10.0
RETRY_S = 0.2

Key = tuple[str, int]


class ReplicaError(TopicError):
    """An append or read this broker cannot serve as a replica (the Kafka error to answer);
    a ``TopicError``, so every path that answers those answers this."""


@dataclass
class Led:
    """A partition this broker leads, in ``state.leader_epoch``."""

    state: PartitionState
    progress: LeaderProgress
    # Set when leadership of this epoch ends: waiters for the high-water mark give up.
    ended: trio.Event


@dataclass
class Followed:
    """A partition this broker follows: its leader in ``epoch``, the task's scope, and when
    the task's last fetch was answered (monotonic seconds; /health shows a follower that
    stalls without an error)."""

    leader: int
    epoch: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    fetched_at: float | None = None


class Replication:
    def __init__(self, registry: TopicRegistry, controller: Controller, membership: Membership,
                 broker_id: int, *, lag_ms: int = REPLICA_LAG_MS, token: str | None = None
                 ) -> None:
        self.registry = registry
        self.controller = controller
        self.membership = membership
        self.broker_id = broker_id
        self.lag_ms = lag_ms
        self.token = token
        self.led: dict[Key, Led] = {}
        self.managed: set[str] = set()  # topics whose partitions the cluster manages
        self.following: dict[Key, Followed] = {}
        self._isr_write_losses = 0
        self._channels: dict[str, grpc.Channel] = {}
        self._links: dict[str, LeaderLink] = {}  # by leader address: the fetch streams
        self._nursery: trio.Nursery | None = None
        self._isr_wanted = trio.Event()
        self.isr_writes = 0
        self.fetches = {"stream": 0, "unary": 0}  # a follower's fetches, by how they went
        # Until the first look at etcd, this broker does not know which topics are the
        # cluster's: it serves no client (a restarted broker must not answer for partitions
        # it no longer leads, nor read past a high-water mark it does not know yet).
        self.ready = False
        # Set (and replaced) whenever ``update`` has run: roles may have changed.
        self.roles_changed = trio.Event()

    # -- roles ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._maintain_isr)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for led in self.led.values():
                led.ended.set()
            for channel in self._channels.values():
                channel.close()

    def update(self, managed: set[str], hosted: dict[Key, PartitionState]) -> None:
        """The cluster's view changed: lead, follow or let go of each hosted partition."""
        self.managed = managed
        self.ready = True
        for key in list(self.led):
            state = hosted.get(key)
            if state is None or state.leader != self.broker_id or \
                    state.leader_epoch != self.led[key].state.leader_epoch:
                self._stop_leading(key)
        for key in list(self.following):
            followed = self.following[key]
            state = hosted.get(key)
            if state is None or state.leader != followed.leader or \
                    state.leader_epoch != followed.epoch:
                followed.scope.cancel()
                del self.following[key]
        for key, state in hosted.items():
            plog = self._log(key)
            if plog is None:
                continue
            if state.leader == self.broker_id:
                led = self.led.get(key)
                if led is None:
                    self._start_leading(key, state, plog)
                else:
                    led.progress.forget(set(led.state.isr) - set(state.isr))
                    led.state = state
                    led.progress.isr = state.isr
                    led.progress.replicas = state.replicas
                    self._advance(key, led, plog)
            elif state.leader != NO_LEADER and key not in self.following and \
                    self._nursery is not None:
                followed = self.following[key] = Followed(state.leader, state.leader_epoch)
                self._nursery.start_soon(self._follow, key, followed)
        changed, self.roles_changed = self.roles_changed, trio.Event()
        changed.set()

    def leader_epoch(self, key: Key) -> int | None:
        """The epoch this broker leads ``key`` in, or None if it does not lead it."""
        led = self.led.get(key)
        return None if led is None else led.state.leader_epoch

    def _log(self, key: Key) -> PartitionLog | None:
        try:
            return self.registry.partition(*key)
        except TopicError:
            return None

    def _start_leading(self, key: Key, state: PartitionState, plog: PartitionLog) -> None:
        plog.leader_epoch = state.leader_epoch
        end = plog.log_end_offset
        # What this broker knew as a follower; alone in the ISR, everything it has.
        start_hwm = end if state.isr == (self.broker_id,) else min(
            plog.replicated_hwm or 0, end)
        progress = LeaderProgress(self.broker_id, state.replicas, state.isr, epoch_start=end,
                                  high_watermark=start_hwm, now_ms=_now_ms())
        self.led[key] = Led(state, progress, trio.Event())
        plog.set_high_watermark(start_hwm)
        self._advance(key, self.led[key], plog)
        log.info("leading", extra={"topic": key[0], "partition": key[1],
                                   "leader_epoch": state.leader_epoch, "log_end": end,
                                   "high_watermark": plog.high_watermark})

    def _stop_leading(self, key: Key) -> None:
        led = self.led.pop(key)
        led.ended.set()
        plog = self._log(key)
        if plog is not None:
            plog.set_high_watermark(plog.high_watermark)  # wakes parked readers to look again

    def _advance(self, key: Key, led: Led, plog: PartitionLog) -> None:
        if led.progress.advance(plog.log_end_offset):
            plog.set_high_watermark(led.progress.high_watermark)
        if led.progress.wanted_isr(plog.log_end_offset, _now_ms(), self.lag_ms) != \
                led.state.isr:
            self._isr_wanted.set()

    def gauges(self) -> Gauges:
        """Replication as this broker sees it, for ``/metrics`` (Kafka's names in spirit:
        UnderReplicatedPartitions, AtMinIsr, LeaderCount)."""
        under = sum(1 for led in self.led.values()
                    if len(led.state.isr) < len(led.state.replicas))
        return {
            "kelp_broker_leader_partitions": (
                "Partitions this broker leads.", (), [((), len(self.led))]),
            "kelp_broker_follower_partitions": (
                "Partitions this broker follows (fetching from their leader).", (),
                [((), len(self.following))]),
            "kelp_broker_under_replicated_partitions": (
                "Partitions this broker leads whose ISR lacks some replica.", (),
                [((), under)]),
            "kelp_broker_partition_in_sync_replicas": (
                "In-sync replicas of each partition this broker leads, as it last saw them.",
                ("topic", "partition"),
                [((topic, str(partition)), len(led.state.isr))
                 for (topic, partition), led in self.led.items()]),
            "kelp_broker_isr_writes": (
                "ISR shrinks and expansions this broker wrote as leader.", (),
                [((), self.isr_writes)]),
            "kelp_broker_replica_fetches": (
                "Fetches this broker made as a follower, by how: on its ReplicaFetchStream "
                "to the leader, or as unary calls (while that stream is not up).", ("how",),
                [((how,), count) for how, count in self.fetches.items()]),
        }

    def detail(self) -> dict[str, object]:
        """Each partition's replication as this broker sees it, for ``/health``: as leader,
        every follower's progress; as follower, when its last fetch was answered."""
        now_s, now_ms = time.monotonic(), _now_ms()
        led = {}
        for (topic, partition), entry in self.led.items():
            plog = self._log((topic, partition))
            followers = {str(replica): {
                "log_end": progress.log_end, "reached_hwm": progress.reached_hwm,
                "ms_since_fetch": round(now_ms - progress.fetch_ms) if progress.fetch_ms else None,
                "ms_since_caught_up": round(now_ms - progress.caught_up_ms)
                if progress.caught_up_ms >= 0 else None}  # None: forgotten, not fetched since
                for replica, progress in entry.progress.followers.items()}
            led[f"{topic}-{partition}"] = {
                "leader_epoch": entry.state.leader_epoch, "isr": list(entry.state.isr),
                "log_end": None if plog is None else plog.log_end_offset,
                "high_watermark": entry.progress.high_watermark, "followers": followers}
        following = {}
        for (topic, partition), followed in self.following.items():
            at = followed.fetched_at
            plog = self._log((topic, partition))
            following[f"{topic}-{partition}"] = {
                "leader": followed.leader, "leader_epoch": followed.epoch,
                "log_end": None if plog is None else plog.log_end_offset,
                "s_since_fetch": None if at is None else round(now_s - at, 1)}
        return {"leading": led, "following": following}

    # -- what the data path asks --------------------------------------------------------------

    def check_leader(self, topic: str, partition: int) -> None:
        """Raise ``ReplicaError`` unless this broker may serve clients for the partition (it
        leads it, or the topic is not the cluster's)."""
        if not self.ready:
            raise ReplicaError(ErrorCode.not_leader_or_follower,
                               f"broker {self.broker_id} is still reading the cluster's state")
        if topic in self.managed and (topic, partition) not in self.led:
            raise ReplicaError(ErrorCode.not_leader_or_follower,
                               f"broker {self.broker_id} does not lead {topic}-{partition}")

    def check_in_sync(self, topic: str, partition: int, min_insync: int) -> None:
        """``acks=all`` refused before writing when the ISR is below min.insync.replicas."""
        led = self.led.get((topic, partition))
        if led is not None and len(led.state.isr) < min_insync:
            raise ReplicaError(ErrorCode.not_enough_replicas,
                               f"{len(led.state.isr)} in-sync replicas of {topic}-{partition}, "
                               f"min.insync.replicas is {min_insync}")

    def on_local_append(self, topic: str, partition: int, plog: PartitionLog) -> None:
        """The leader wrote: alone in the ISR, its high-water mark moves at once."""
        led = self.led.get((topic, partition))
        if led is not None:
            self._advance((topic, partition), led, plog)

    async def wait_replicated(self, topic: str, partition: int, plog: PartitionLog,
                              end: int, min_insync: int) -> None:
        """Until every in-sync replica holds the offsets below ``end`` (``acks=all``)."""
        key = (topic, partition)
        led = self.led.get(key)
        if led is None:
            if topic in self.managed:
                raise ReplicaError(ErrorCode.not_leader_or_follower,
                                   f"leadership of {topic}-{partition} moved")
            return
        while plog.high_watermark < end:
            if led.ended.is_set():
                raise ReplicaError(ErrorCode.not_leader_or_follower,
                                   f"leadership of {topic}-{partition} moved before the "
                                   "records were replicated")
            woken = trio.Event()
            plog.add_append_listener(woken.set)
            try:
                with trio.move_on_after(1.0):
                    await woken.wait()
            finally:
                plog.remove_append_listener(woken.set)
        if len(led.state.isr) < min_insync:
            raise ReplicaError(ErrorCode.not_enough_replicas_after_append,
                               f"written, but only {len(led.state.isr)} in-sync replicas hold "
                               f"it; min.insync.replicas is {min_insync}")

    # -- leader side of the broker-to-broker calls --------------------------------------------

    async def replica_fetch_stream(
            self, recv: Callable[[], Awaitable[pb.ReplicaFetchRequest | None]],
            send: grpc.StreamSender) -> None:
        """A follower's fetches on one stream: each parks in its own task (as a unary fetch
        does) and its reply echoes its request id; a request with ``cancel`` drops the
        parked fetch of that id. What a stream may have outstanding, and the reply bytes
        queued for it, are bounded."""
        async def one(request: pb.ReplicaFetchRequest) -> None:
            try:
                reply, reserved = await self._replica_fetch(request, send)
            except Exception as exc:
                # This fetch's failure (a read error, a bug) is its reply, as a failed unary
                # call was: the stream and every other partition's fetch on it go on.
                log.exception("replica fetch failed on the leader", extra={
                    "topic": request.topic, "partition": request.partition})
                reply, reserved = _no_records(
                    error_code=(ErrorCode.kafka_storage_error if isinstance(exc, OSError)
                                else ErrorCode.unknown_server_error),
                    error_message=f"kelp: {type(exc).__name__}: {exc}"), 0
            reply.request_id = request.request_id
            send(reply, size=len(reply.records), reserved=reserved)

        def refuse(request: pb.ReplicaFetchRequest) -> None:
            send(_no_records(
                request_id=request.request_id, error_code=ErrorCode.policy_violation,
                error_message=f"over {MAX_STREAM_FETCHES} fetches outstanding on this "
                "stream, or a request id already in use"))

        await serve_each(recv, one, limit=MAX_STREAM_FETCHES, refuse=refuse)

    async def replica_fetch(self, request: pb.ReplicaFetchRequest) -> pb.ReplicaFetchReply:
        return (await self._replica_fetch(request))[0]

    async def _replica_fetch(self, request: pb.ReplicaFetchRequest,
                             stream: grpc.StreamSender | None = None
                             ) -> tuple[pb.ReplicaFetchReply, int]:
        """The reply, and (on a ``stream``) the bytes reserved for it there: the caller hands
        them back by sending the reply with them; if no reply is made they are released
        here."""
        key = (request.topic, request.partition)
        reply = _no_records()
        led = self.led.get(key)
        plog = self._log(key)
        if led is None or plog is None:
            reply.error_code = ErrorCode.not_leader_or_follower
            reply.error_message = f"broker {self.broker_id} does not lead {key}"
            return reply, 0
        epoch = led.state.leader_epoch
        reply.leader_epoch = epoch
        if request.leader_epoch != epoch:
            reply.error_code = (ErrorCode.fenced_leader_epoch if request.leader_epoch < epoch
                                else ErrorCode.unknown_leader_epoch)
            reply.error_message = f"the leader is in epoch {epoch}"
            return reply, 0
        if request.topic_id and request.topic_id != str(self._topic_id(request.topic)):
            reply.error_code = ErrorCode.unknown_topic_id
            return reply, 0
        offset = request.fetch_offset
        if offset > plog.log_end_offset or offset < plog.log_start_offset:
            reply.error_code = ErrorCode.offset_out_of_range
            reply.log_start_offset, reply.log_end_offset = (plog.log_start_offset,
                                                            plog.log_end_offset)
            return reply, 0
        led.progress.on_fetch(request.replica_id, offset, plog.log_end_offset, _now_ms())
        self._advance(key, led, plog)
        if offset == plog.log_end_offset:
            # Nothing to send yet: park until an append, the wait's end, or a lost lead.
            woken = trio.Event()
            plog.add_append_listener(woken.set)
            try:
                with trio.move_on_after(min(max(request.max_wait_ms, 0), 5_000) / 1000):
                    while offset == plog.log_end_offset and not led.ended.is_set():
                        await woken.wait()
                        woken = _rearm(plog, woken)
            finally:
                plog.remove_append_listener(woken.set)
        budget = min(request.max_bytes if request.max_bytes > 0 else FETCH_MAX_BYTES,
                     MAX_REPLICA_FETCH_BYTES)
        # On a stream: the bytes this reply may take, reserved before reading (a follower's
        # many partitions must not queue more than the stream's bound between them).
        reserved = 0
        try:
            if stream is not None:
                # The log may have shrunk under the park (truncated, deleted): bytes_after
                # raises OffsetOutOfRange like the read would.
                budget = reserved = await stream.reserve(min(budget, plog.bytes_after(offset)))
            read = await plog.read(offset, budget)
            reply.records = read.records
        except OffsetOutOfRange as exc:
            reply.error_code, reply.error_message = ErrorCode.offset_out_of_range, str(exc)
        except BaseException:
            if stream is not None:
                stream.release(reserved)
            raise
        reply.high_watermark = plog.high_watermark
        reply.log_start_offset = plog.log_start_offset
        reply.log_end_offset = plog.log_end_offset
        return reply, reserved

    async def leader_epoch_end(self, request: pb.LeaderEpochEndRequest
                               ) -> pb.LeaderEpochEndReply:
        key = (request.topic, request.partition)
        led = self.led.get(key)
        plog = self._log(key)
        if led is None or plog is None:
            return pb.LeaderEpochEndReply(error_code=ErrorCode.not_leader_or_follower,
                                          leader_epoch=-1, end_offset=-1)
        current = request.current_leader_epoch  # -1: a client that does not say
        if current >= 0 and current != led.state.leader_epoch:
            return pb.LeaderEpochEndReply(
                error_code=ErrorCode.fenced_leader_epoch if current < led.state.leader_epoch
                else ErrorCode.unknown_leader_epoch, leader_epoch=-1, end_offset=-1)
        cache = await trio.to_thread.run_sync(plog.epoch_cache)
        epoch, end = cache.end_offset_for(request.leader_epoch, plog.log_end_offset)
        return pb.LeaderEpochEndReply(leader_epoch=epoch, end_offset=end)

    def _topic_id(self, name: str) -> object:
        topic = self.registry.get(name)
        return None if topic is None else topic.topic_id

    # -- ISR changes ----------------------------------------------------------------------------

    async def _maintain_isr(self) -> None:
        while True:
            with trio.move_on_after(max(self.lag_ms / 2000, 0.05)):
                await self._isr_wanted.wait()
            self._isr_wanted = trio.Event()
            for key, led in list(self.led.items()):
                plog = self._log(key)
                if plog is None:
                    continue
                wanted = led.progress.wanted_isr(plog.log_end_offset, _now_ms(), self.lag_ms)
                if wanted != led.state.isr:
                    await self._write_isr(key, led, wanted)
            await trio.sleep(0.01)  # a burst of wants is one pass

    async def _write_isr(self, key: Key, led: Led, isr: tuple[int, ...]) -> None:
        etcd_key = partition_key(*key)
        entry = self.controller.partitions.entries.get(etcd_key)
        if entry is None:
            return
        try:
            current = PartitionState.decode(entry.value)
        except (ValueError, KeyError, TypeError):
            return
        if current.leader != self.broker_id or current.leader_epoch != led.state.leader_epoch:
            return  # the mirror is ahead of us: update() will let go of the lead
        new = replace(current, isr=isr)
        try:
            written = await self.controller.etcd.write_if(
                [(etcd_key, "mod", entry.mod_revision)], [(etcd_key, new.encode())])
        except EtcdUnavailable as exc:
            log.warning("cannot write the ISR", extra={"topic": key[0], "partition": key[1],
                                                       "error": str(exc)})
            return
        if written is None:
            # Someone wrote the partition since this broker's copy of it (the controller, or a
            # change the watch has not brought yet): the next pass tries again on a fresh copy.
            self._isr_write_losses += 1
            if self._isr_write_losses in (1, 10) or self._isr_write_losses % 100 == 0:
                log.info("ISR write lost a race, retrying", extra={
                    "topic": key[0], "partition": key[1], "isr": list(isr),
                    "mod_revision": entry.mod_revision, "losses": self._isr_write_losses})
        else:
            self._isr_write_losses = 0
            self.isr_writes += 1
            log.info("ISR changed", extra={"topic": key[0], "partition": key[1],
                                           "isr": list(isr), "was": list(current.isr)})

    # -- follower side ----------------------------------------------------------------------------

    def channel(self, leader: int) -> grpc.Channel | None:
        info = self.membership.brokers().get(leader)
        if info is None:
            return None
        channel = self._channels.get(info.grpc)
        if channel is None:
            channel = self._channels[info.grpc] = grpc.Channel(
                grpc.Address.parse(info.grpc), token=self.token)
        return channel

    def _link(self, channel: grpc.Channel) -> LeaderLink | None:
        """The fetch stream to ``channel``'s broker, opened (in the background) on first use."""
        address = str(channel.address)
        link = self._links.get(address)
        if link is None and self._nursery is not None:
            link = self._links[address] = LeaderLink(channel, address)
            self._nursery.start_soon(link.run)
        return link

    async def _follow(self, key: Key, followed: Followed) -> None:
        topic, partition = key
        leader, epoch = followed.leader, followed.epoch
        truncated = False
        failures = 0
        with followed.scope:
            log.info("following", extra={"topic": topic, "partition": partition,
                                         "leader": leader, "leader_epoch": epoch})
            while True:
                plog = self._log(key)
                channel = self.channel(leader)
                if plog is None or channel is None:
                    await trio.sleep(RETRY_S)
                    continue
                topic_id = str(self._topic_id(topic))
                try:
                    if not truncated:
                        await self._truncate(channel, key, plog, leader, epoch, topic_id)
                        truncated = True
                    leader_end = await self._fetch_once(channel, key, plog, epoch, topic_id)
                    followed.fetched_at = time.monotonic()
                    failures = 0
                    if leader_end is not None:
                        # This log ends past the leader's: truncate where the epochs say and,
                        # if they leave it past the leader's end still, there (as Kafka's
                        # follower does; nothing past it was acknowledged). Without that
                        # second cut the fetch was refused again at once, in a silent loop.
                        await self._truncate(channel, key, plog, leader, epoch, topic_id)
                        if plog.log_end_offset > leader_end:
                            log.warning("truncating to the leader's log end", extra={
                                "topic": topic, "partition": partition,
                                "from": plog.log_end_offset, "to": leader_end})
                            await trio.to_thread.run_sync(plog.truncate_to, leader_end)
                except Exception as exc:
                    if isinstance(exc, OffsetOutOfRange):
                        # The log was closed under us: its topic was deleted. Look again (a
                        # topic made again under that name has a new log, to be checked from
                        # scratch) until update() ends this task. Ending it here instead left
                        # the partition marked as followed, and a topic re-created between two
                        # looks at etcd was never replicated here.
                        truncated = False
                        await trio.sleep(RETRY_S)
                        continue
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("replica fetch failed", extra={
                            "topic": topic, "partition": partition, "leader": leader,
                            "error": grpc.describe_failure(exc), "failures": failures})
                    await trio.sleep(min(RETRY_S * failures, 2.0))

    async def _truncate(self, channel: grpc.Channel, key: Key, plog: PartitionLog,
                        leader: int, epoch: int, topic_id: str) -> None:
        cache = await trio.to_thread.run_sync(plog.epoch_cache)
        latest = cache.latest
        if latest == UNDEFINED or plog.log_end_offset == plog.log_start_offset:
            return
        reply = await channel.call(BROKER.leader_epoch_end, pb.LeaderEpochEndRequest(
            topic=key[0], partition=key[1], leader_epoch=latest, current_leader_epoch=epoch,
            topic_id=topic_id), timeout=CALL_TIMEOUT_S)
        if reply.error_code:
            raise ReplicaError(ErrorCode(reply.error_code), "leader refused LeaderEpochEnd")
        if reply.end_offset == UNDEFINED:
            # The leader knows no epoch this old: keep only what was known replicated.
            cut = plog.replicated_hwm or plog.log_start_offset
        else:
            # Where the epoch the leader names ended here too, and no further than there.
            mine = cache.end_offset_for(reply.leader_epoch, plog.log_end_offset)[1]
            cut = min(reply.end_offset, mine if mine != UNDEFINED else reply.end_offset)
        if cut < plog.log_end_offset:
            log.warning("truncating to the leader's epoch boundary", extra={
                "topic": key[0], "partition": key[1], "from": plog.log_end_offset, "to": cut,
                "epoch": reply.leader_epoch})
            await trio.to_thread.run_sync(plog.truncate_to, cut)

    async def _fetch_once(self, channel: grpc.Channel, key: Key, plog: PartitionLog,
                          epoch: int, topic_id: str) -> int | None:
        """One fetch from the leader; the leader's log end when this log ends past it (to be
        truncated before fetching again), else None."""
        request = pb.ReplicaFetchRequest(
            topic=key[0], partition=key[1], replica_id=self.broker_id, leader_epoch=epoch,
            fetch_offset=plog.log_end_offset, max_bytes=FETCH_MAX_BYTES,
            max_wait_ms=FETCH_WAIT_MS, topic_id=topic_id)
        link = self._link(channel)
        reply = None
        if link is not None:
            reply = await link.fetch(request, CALL_TIMEOUT_S)
            self.fetches["stream" if reply is not None else "unary"] += 1
        if reply is None:  # the stream is not up (yet, or at all)
            reply = await channel.call(BROKER.replica_fetch, request, timeout=CALL_TIMEOUT_S)
        if reply.error_code == ErrorCode.offset_out_of_range:
            if plog.log_end_offset > reply.log_end_offset >= 0:
                return reply.log_end_offset  # ahead of the leader: truncate first
            raise ReplicaError(ErrorCode.offset_out_of_range,
                               f"the leader's log starts at {reply.log_start_offset}, this "
                               f"replica ends at {plog.log_end_offset}")
        if reply.error_code:
            raise ReplicaError(ErrorCode(reply.error_code),
                               reply.error_message or ErrorCode(reply.error_code).name)
        if reply.records:
            try:
                result = plog.append_replica(reply.records)
            except CorruptBatch as exc:
                raise ReplicaError(ErrorCode.corrupt_message, str(exc)) from exc
            if plog.config.sync_on_ack:
                await plog.wait_durable(result.write_mark)
        if reply.high_watermark >= 0:
            plog.set_high_watermark(min(reply.high_watermark, plog.log_end_offset))
        return None


def _no_records(**fields: object) -> pb.ReplicaFetchReply:
    """A ReplicaFetch reply before (or without) a read: the log's marks unknown (-1)."""
    return pb.ReplicaFetchReply(high_watermark=-1, log_start_offset=-1, log_end_offset=-1,
                                **fields)  # type: ignore[arg-type]


def _rearm(plog: PartitionLog, woken: trio.Event) -> trio.Event:
    plog.remove_append_listener(woken.set)
    fresh = trio.Event()
    plog.add_append_listener(fresh.set)
    return fresh


def _now_ms() -> float:
    return time.monotonic() * 1000
