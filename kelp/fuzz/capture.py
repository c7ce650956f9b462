"""Capture the seed corpus: real clients against a private stack, through a recording proxy.

confluent-kafka (librdkafka), kafka-python, aiokafka and kcat each produce (every codec, an
idempotent producer), consume in a group with commits, and run admin operations; the proxy
keeps every request frame. The gateway advertises the proxy's address, so clients come back
through it after bootstrap. Whatever (API, version) kelp serves that no client sent is then
synthesized with kio's encoder (``synth``), so every pair has at least one seed.

Client failures are expected and ignored: the point is the requests they send, not the
answers. Every step has a timeout, and the phases run clients side by side, so a capture
takes tens of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.kafka.apis import SUPPORTED
from kelp.fuzz import corpus
from kelp.fuzz.corpus import CAPTURED, Seed
from kelp.fuzz.proxy import RecordingProxy
from kelp.fuzz.stack import Stack, free_port
from kelp.fuzz.synth import GROUP, synthesize

TOPICS = ("fuzz-0", "fuzz-1")  # the run re-creates these: Produce seeds aim at them
DOOMED = "fuzz-doomed"          # deleted by the capture (DeleteTopics/DeleteRecords seeds)
STEP_S = 10.0
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def capture(log: Callable[[str], None] = print) -> list[Seed]:
    """Run the clients, return the selected seeds (captured + synthesized)."""
    with tempfile.TemporaryDirectory(prefix="kelp-fuzz-capture-") as tmp:
        proxy_port = free_port()
        with Stack(Path(tmp), advertise=f"127.0.0.1:{proxy_port}") as stack, \
                RecordingProxy(stack.bootstrap, proxy_port) as proxy:
            bootstrap = proxy.address
            started = time.monotonic()
            _phase(log, [("admin-create", lambda: _confluent_create(bootstrap))])
            _phase(log, [(f"confluent-produce-{c}", _bind(_confluent_produce, bootstrap, c))
                         for c in CODECS] + [
                ("confluent-idempotent", lambda: _confluent_idempotent(bootstrap)),
                ("kafka-python-produce", lambda: _kafka_python_produce(bootstrap)),
                ("aiokafka-produce", lambda: asyncio.run(_aiokafka_produce(bootstrap))),
                ("kcat-produce", lambda: _kcat(bootstrap, ["-P", "-t", TOPICS[0], "-z",
                                                          "snappy"], b"a\nb\nc\n"))])
            _phase(log, [
                ("confluent-group", lambda: _confluent_group(bootstrap)),
                ("kafka-python-group", lambda: _kafka_python_group(bootstrap)),
                ("aiokafka-group", lambda: asyncio.run(_aiokafka_group(bootstrap))),
                ("kcat-consume", lambda: _kcat(bootstrap, ["-C", "-t", TOPICS[0], "-o",
                                                          "beginning", "-e", "-c", "5"])),
                ("kcat-metadata", lambda: _kcat(bootstrap, ["-L"])),
                ("kcat-query", lambda: _kcat(bootstrap, ["-Q", "-t", f"{TOPICS[0]}:0:1"]))])
            _phase(log, [("confluent-admin", lambda: _confluent_admin(bootstrap)),
                         ("kafka-python-admin", lambda: _kafka_python_admin(bootstrap)),
                         ("aiokafka-admin", lambda: asyncio.run(_aiokafka_admin(bootstrap)))])
            _phase(log, [("admin-delete", lambda: _confluent_delete(bootstrap))])
            captured = [Seed(a, v, CAPTURED, p) for a, v, p in list(proxy.frames)
                        if a in SUPPORTED and SUPPORTED[a][0] <= v <= SUPPORTED[a][1]]
            log(f"capture: {len(proxy.frames)} frames from real clients in "
                f"{time.monotonic() - started:.1f}s")
    return complete(captured, log)


def complete(captured: list[Seed], log: Callable[[str], None] = print) -> list[Seed]:
    """Add a synthesized seed for every (API, version) no client sent; select the corpus."""
    seen = corpus.coverage(captured)
    missing = [(a, v) for a, (low, high) in sorted(SUPPORTED.items())
               for v in range(low, high + 1) if (a, v) not in seen]
    seeds = corpus.select(captured) + [synthesize(a, v) for a, v in missing]
    log(f"capture: {len(seen)} (api, version) pairs from clients, {len(missing)} synthesized, "
        f"{len(seeds)} seeds kept")
    return seeds


def _bind(fn: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: fn(*args)


def _phase(log: Callable[[str], None], steps: list[tuple[str, Callable[[], None]]]) -> None:
    """Run steps side by side; each is bounded by its clients' own timeouts plus a join
    timeout (a stuck client thread is a daemon and dies with the stack)."""
    errors: dict[str, str] = {}

    def run(name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # a client's failure only costs its frames
            errors[name] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=step, daemon=True) for step in steps]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * STEP_S
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    for name, error in errors.items():
        log(f"capture: {name}: {error[:200]}")


# -- confluent-kafka (librdkafka) -----------------------------------------------------------

def _conf(bootstrap: str, **extra: object) -> dict[str, object]:
    # log_level 3: librdkafka's notices (purged queues, disconnects) are noise here.
    return {"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000, "log_level": 3,
            **extra}


def _wait_all(futures: dict) -> None:
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=STEP_S)


def _confluent_create(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_conf(bootstrap))
    _wait_all(admin.create_topics([NewTopic(TOPICS[0], 2), NewTopic(TOPICS[1], 1),
                                   NewTopic(DOOMED, 1)]))


def _confluent_produce(bootstrap: str, codec: str) -> None:
    from confluent_kafka import Producer

    producer = Producer(_conf(bootstrap, **{"compression.type": codec, "linger.ms": 5}))
    for i in range(20):
        producer.produce(TOPICS[i % 2], key=f"k{i}".encode(), value=b"v" * (i * 7),
                         headers=[("h", b"x")] if i % 3 else None)
    producer.produce(DOOMED, value=b"doomed")
    producer.flush(STEP_S)


def _confluent_idempotent(bootstrap: str) -> None:
    from confluent_kafka import Producer

    producer = Producer(_conf(bootstrap, **{"enable.idempotence": True, "acks": "all"}))
    for i in range(10):
        producer.produce(TOPICS[0], key=b"idem", value=str(i).encode())
    producer.flush(STEP_S)


def _confluent_group(bootstrap: str) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(_conf(bootstrap, **{
        "group.id": f"{GROUP}-confluent", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000}))
    try:
        consumer.subscribe([TOPICS[0]])
        got, deadline = 0, time.monotonic() + STEP_S
        while got < 10 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                got += 1
        consumer.commit(asynchronous=False)
        consumer.committed(consumer.assignment(), timeout=5)
    finally:
        consumer.close()


def _confluent_admin(bootstrap: str) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        OffsetSpec,
        ResourceType,
    )

    admin = AdminClient(_conf(bootstrap))
    topic = ConfigResource(ResourceType.TOPIC, TOPICS[1])
    _wait_all(admin.describe_configs([topic, ConfigResource(ResourceType.BROKER, "0")]))
    _wait_all(admin.alter_configs([ConfigResource(ResourceType.TOPIC, TOPICS[1],
                                                  set_config={"retention.ms": "86400000"})]))
    _wait_all(admin.incremental_alter_configs([ConfigResource(
        ResourceType.TOPIC, TOPICS[1], incremental_configs=[ConfigEntry(
            "retention.bytes", "1073741824",
            incremental_operation=AlterConfigOpType.SET)])]))
    _wait_all(admin.create_partitions([NewPartitions(TOPICS[1], 2)]))
    _wait_all(admin.list_offsets({TopicPartition(TOPICS[0], 0): OffsetSpec.latest(),
                                  TopicPartition(TOPICS[0], 1): OffsetSpec.earliest()}))
    with contextlib.suppress(Exception):
        admin.describe_cluster(request_timeout=STEP_S).result(STEP_S)
    with contextlib.suppress(Exception):
        admin.list_consumer_groups(request_timeout=STEP_S).result(STEP_S)
    _wait_all(admin.describe_consumer_groups([f"{GROUP}-confluent"]))
    _wait_all(admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(f"{GROUP}-confluent")]))
    _wait_all(admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        f"{GROUP}-confluent", [TopicPartition(TOPICS[0], 0, 1)])]))


def _confluent_delete(bootstrap: str) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(_conf(bootstrap))
    _wait_all(admin.delete_records([TopicPartition(DOOMED, 0, 1)]))
    _wait_all(admin.delete_consumer_groups([f"{GROUP}-confluent"]))
    _wait_all(admin.delete_topics([DOOMED]))


# -- kafka-python ---------------------------------------------------------------------------

def _kafka_python_produce(bootstrap: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip",
                             request_timeout_ms=5000)
    try:
        for i in range(10):
            producer.send(TOPICS[0], key=b"kp", value=str(i).encode())
        producer.flush(STEP_S)
    finally:
        producer.close(STEP_S)  # its background thread would outlive the stack otherwise


def _kafka_python_group(bootstrap: str) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(TOPICS[0], bootstrap_servers=bootstrap,
                             group_id=f"{GROUP}-kafka-python", auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=4000)
    try:
        for got, _message in enumerate(consumer):
            if got >= 9:
                break
        consumer.commit()
    finally:
        consumer.close()


def _kafka_python_admin(bootstrap: str) -> None:
    from kafka import TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    group, part = f"{GROUP}-kafka-python", TopicPartition(TOPICS[0], 0)
    calls: list[Callable[[], object]] = [
        lambda: admin.describe_log_dirs(),
        lambda: admin.describe_producers([part]),
        lambda: admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPICS[0])]),
        lambda: admin.describe_cluster(),
        lambda: admin.list_groups(),
        lambda: admin.describe_groups([group]),
        lambda: admin.list_group_offsets({group: None}),
        lambda: admin.delete_group_offsets(group, [part]),
        lambda: admin.delete_groups([group]),
    ]
    try:
        for call in calls:
            with contextlib.suppress(Exception):
                call()
    finally:
        admin.close()


# -- aiokafka -------------------------------------------------------------------------------

async def _aiokafka_produce(bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4",
                                request_timeout_ms=5000)
    await asyncio.wait_for(producer.start(), STEP_S)
    try:
        for i in range(5):
            await asyncio.wait_for(producer.send_and_wait(TOPICS[1], str(i).encode()), STEP_S)
    finally:
        await producer.stop()


async def _aiokafka_group(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(TOPICS[1], bootstrap_servers=bootstrap,
                                group_id=f"{GROUP}-aiokafka", auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), STEP_S)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.getmany(timeout_ms=3000), STEP_S)
        await asyncio.wait_for(consumer.commit(), STEP_S)
    finally:
        await consumer.stop()


async def _aiokafka_admin(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await asyncio.wait_for(admin.start(), STEP_S)
    try:
        for call in (lambda: admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC,
                                                                    TOPICS[1])]),
                     lambda: admin.list_consumer_groups(),
                     lambda: admin.describe_consumer_groups([f"{GROUP}-aiokafka"]),
                     lambda: admin.list_consumer_group_offsets(f"{GROUP}-aiokafka")):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call(), STEP_S)
    finally:
        await admin.close()


# -- kcat -----------------------------------------------------------------------------------

def _kcat(bootstrap: str, args: list[str], stdin: bytes | None = None) -> None:
    subprocess.run(["kcat", "-b", bootstrap, *args], input=stdin or b"", capture_output=True,
                   timeout=STEP_S, check=False)
