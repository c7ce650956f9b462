"""Produce and consume paths: librdkafka (1 KiB records) through gateway and broker, each
against the same bytes through a raw two-hop trio pipe measured in the same run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import trio
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench import raw_pipe
from tests.kelp_procs import Cluster


def _produce(bootstrap: str, topic: str, records: int, record_bytes: int, acks: str,
             **security: object) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "compression.type": "none", **security})
    value = b"v" * record_bytes
    # Warm up: topic creation and metadata are not part of the figure.
    producer.produce(topic, value=value, partition=0)
    producer.flush(30)
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value=value, key=b"%d" % i, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"{remaining} records not delivered")
    return elapsed


def _consume(bootstrap: str, topic: str, records: int) -> float:
    """Seconds for a librdkafka consumer to read ``records`` from the start of the topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-bench",
                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800,
                         "max.partition.fetch.bytes": 10_485_760})
    # Warm up, as the produce runs do: connecting and the topic's metadata are not part of
    # the figure. Known before the assignment, the leader also spares librdkafka's 500 ms
    # wait before its first offset lookup ("no current leader for partition").
    consumer.list_topics(topic, timeout=10)
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = 0
    while seen < records:
        # Ask for no more than what is left: consume() waits until it has them all.
        batch = consumer.consume(min(10_000, records - seen), timeout=5.0)
        if not batch:
            raise RuntimeError(f"consumer stalled after {seen} records")
        seen += sum(1 for message in batch if message.error() is None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def _consume_kcat(bootstrap: str, topic: str, records: int) -> float:
    """Seconds for kcat (librdkafka with no Python object per record) to read ``records``
    from the start of the topic: the confluent-kafka consumer spends most of a core making a
    Python object of each record, so it measures itself as much as kelp. As for that
    consumer, starting (connecting, metadata, the offset lookup) is not part of the figure:
    the best of two one-record runs is taken off."""

    def read(count: int) -> float:
        started = time.perf_counter()
        subprocess.run(["kcat", "-C", "-q", "-b", bootstrap, "-t", topic, "-p", "0",
                        "-o", "beginning", "-c", str(count), "-f", "%o\\n",
                        "-X", "fetch.max.bytes=52428800",
                        "-X", "max.partition.fetch.bytes=10485760"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
        return time.perf_counter() - started

    starting = min(read(1), read(1))
    return read(records) - starting


def run(records: int, record_bytes: int) -> list[tuple[str, str, str, float]]:
    total = records * record_bytes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            for acks in ("1", "all"):
                seconds = _produce(cluster.bootstrap, f"bench-produce-acks-{acks}", records,
                                   record_bytes, acks)
                raw_seconds = trio.run(raw_pipe.measure, total)
                kelp_rate = total / seconds / 1e6
                raw_rate = total / raw_seconds / 1e6
                print(f"produce acks={acks}: {records / seconds:,.0f} records/s "
                      f"{kelp_rate:,.1f} MB/s | raw two-hop trio pipe {raw_rate:,.1f} MB/s")
                rows.append((f"produce {record_bytes} B records, acks={acks}",
                             f"{records / seconds:,.0f} rec/s {kelp_rate:,.1f} MB/s",
                             f"{raw_rate:,.1f} MB/s", kelp_rate / raw_rate))
            rows += _consume_row(cluster.bootstrap, "bench-produce-acks-1", records,
                                 record_bytes)
        finally:
            cluster.stop()
    return rows + run_tls(records, record_bytes)


def _consume_row(bootstrap: str, topic: str, records: int,
                 record_bytes: int) -> list[tuple[str, str, str, float]]:
    total = records * record_bytes
    # The warm-up record is read too: the topic holds records + 1.
    seconds = _consume(bootstrap, topic, records + 1)
    raw_seconds = trio.run(raw_pipe.measure_read, total)
    kelp_rate, raw_rate = total / seconds / 1e6, total / raw_seconds / 1e6
    print(f"consume: {records / seconds:,.0f} records/s {kelp_rate:,.1f} MB/s | raw "
          f"two-hop trio pipe out of a cached file {raw_rate:,.1f} MB/s")
    rows = [(f"consume {record_bytes} B records",
             f"{records / seconds:,.0f} rec/s {kelp_rate:,.1f} MB/s",
             f"{raw_rate:,.1f} MB/s", kelp_rate / raw_rate)]
    if shutil.which("kcat"):
        seconds = _consume_kcat(bootstrap, topic, records + 1)
        kcat_rate = total / seconds / 1e6
        print(f"consume (kcat): {records / seconds:,.0f} records/s {kcat_rate:,.1f} MB/s")
        rows.append((f"consume {record_bytes} B records (kcat)",
                     f"{records / seconds:,.0f} rec/s {kcat_rate:,.1f} MB/s",
                     f"{raw_rate:,.1f} MB/s", kcat_rate / raw_rate))
    return rows


def run_consume(records: int, record_bytes: int,
                rounds: int = 2) -> list[tuple[str, str, str, float]]:
    """The consume row alone (``python -m bench consume``): the topic is produced once, then
    read ``rounds`` times from the start, each against its own raw pipe run."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            _produce(cluster.bootstrap, "bench-consume", records, record_bytes, "1")
            for _ in range(rounds):
                rows += _consume_row(cluster.bootstrap, "bench-consume", records,
                                     record_bytes)
        finally:
            cluster.stop()
    return rows


def run_tls(records: int, record_bytes: int) -> list[tuple[str, str, str, float]]:
    """Produce over TLS (SSL, and SASL_SSL with SCRAM-SHA-512) against plaintext on the same
    gateway in the same run: the cost of encryption in kelp's trio TLS streams."""
    from tests.secure import SecureCluster

    total = records * record_bytes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        secure = SecureCluster(Path(tmp), authorizer=False).start()
        try:
            plain = _produce(secure.cluster.bootstrap, "bench-tls-plain", records,
                             record_bytes, "1")
            plain_rate = total / plain / 1e6
            print(f"produce plaintext: {plain_rate:,.1f} MB/s (same gateway as the TLS runs)")
            for protocol, mechanism in (("SSL", None), ("SASL_SSL", "SCRAM-SHA-512")):
                settings = secure.librdkafka(protocol, mechanism)
                bootstrap = str(settings.pop("bootstrap.servers"))
                seconds = _produce(bootstrap, f"bench-tls-{protocol.lower()}", records,
                                   record_bytes, "1", **settings)
                rate = total / seconds / 1e6
                print(f"produce {protocol}: {records / seconds:,.0f} records/s {rate:,.1f} "
                      f"MB/s | plaintext {plain_rate:,.1f} MB/s")
                rows.append((f"produce {record_bytes} B, acks=1, {protocol}",
                             f"{records / seconds:,.0f} rec/s {rate:,.1f} MB/s",
                             f"{plain_rate:,.1f} MB/s pt", rate / plain_rate))
        finally:
            secure.stop()
    return rows
