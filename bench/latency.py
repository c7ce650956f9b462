"""Latency at fixed rates (``just bench latency``): librdkafka producing 100-byte records,
idempotent with acks=all (the fsync policy: acknowledged once on disk), at 1 000, 5 000 and
20 000 records/s over 1 and 6 partitions, while a consumer reads them as they come.

Per run: the produce acknowledgement latency (produce() to delivery report) and the end-to-end
latency (produce() to the consumer's poll returning the record), p50 / p99 / p99.9, and the CPU
the client itself used (producer and consumer, librdkafka's threads included), because it
shares this machine's cores with what it measures. Beside them,
measured in the same run, the raw two-hop pipe's round trip (client -> relay -> echo server ->
relay -> client over loopback TCP, 100-byte messages, the path kelp's client -> gateway ->
broker takes with no protocol work at all) and the same with the echo server appending each
message to a file and ``fdatasync``-ing it before answering: the floor an acknowledgement on the
fsync policy cannot go below.

Then the same at 1 000 and 5 000 records/s over 6 partitions on a replicated cluster: three
brokers on a real etcd, RF=3 (acknowledged once every in-sync replica has the record), behind a
routing gateway, all on this machine's cores.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from pathlib import Path

import trio
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.cluster import replicated_cluster
from tests.kelp_procs import Cluster

RATES = (1_000, 5_000, 20_000)
PARTITIONS = (1, 6)
REPLICATED_RATES = (1_000, 5_000)
REPLICATED_PARTITIONS = 6
SECONDS = 5.0
RECORD_BYTES = 100
ROUND_TRIPS = 3_000
# The producer wakes at most once a millisecond and sends every record that came due meanwhile
# (each timed from its own produce() call). Waking for every record, as before, kept the
# client's own loop on 60-70 % of one of this machine's two cores at 5 000/s, and that CPU
# was taken from the gateway and the broker it measures.
TICK_S = 0.001


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """(p50, p99, p99.9) in ms."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    return at(0.5), at(0.99), at(0.999)


def _fixed_rate(bootstrap: str, topic: str, partitions: int, rate: int
                ) -> tuple[list[float], list[float], float]:
    """(ack latencies, end-to-end latencies) in seconds for SECONDS at ``rate``, and the
    client's CPU over that time (1.0: one core)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for partition in range(partitions):  # connections and metadata warm
        producer.produce(topic, b"warm", partition=partition)
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{topic}-{rate}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)]
    consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])
    count = int(rate * SECONDS)
    end_to_end: list[float] = []
    done = threading.Event()

    def consume() -> None:
        # One record per poll: a batch call would wait for its batch to fill or time out.
        while len(end_to_end) < count and not done.is_set():
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                end_to_end.append(time.perf_counter() - float(message.value()[:20].decode()))

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(1.0)  # the consumer's first fetches are out
    acks: list[float] = []
    padding = b"." * (RECORD_BYTES - 20)
    cpu_before = os.times()
    started = time.perf_counter()
    try:
        sent_count = 0
        while sent_count < count:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            for i in range(sent_count, due):
                sent = time.perf_counter()
                producer.produce(topic, f"{sent:20.6f}".encode() + padding,
                                 partition=i % partitions,
                                 on_delivery=lambda _e, _m, s=sent: acks.append(
                                     time.perf_counter() - s))
            sent_count = due
            # Sleep (serving delivery reports) until the next record is due, at least a tick.
            producer.poll(max(started + sent_count / rate - time.perf_counter(), TICK_S))
        if producer.flush(60):
            raise RuntimeError("records not delivered")
        cpu_after, took = os.times(), time.perf_counter() - started
        deadline = time.monotonic() + 30
        while len(end_to_end) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        reader.join()
        consumer.close()
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / took
    return acks, end_to_end, cpu


async def _round_trips(sync_file: str | None) -> list[float]:
    """Round trips of 100-byte messages through a relay to an echo server (which appends and
    fdatasyncs each message first when ``sync_file`` is given)."""
    times: list[float] = []

    async def echo(stream: trio.SocketStream) -> None:
        fd = os.open(sync_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if sync_file else -1
        try:
            while data := await stream.receive_some(65536):
                if fd >= 0:
                    os.write(fd, data)
                    await trio.to_thread.run_sync(os.fdatasync, fd)
                await stream.send_all(data)
        finally:
            if fd >= 0:
                os.close(fd)

    async def relay(inbound: trio.SocketStream, port: int) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as outbound, \
                trio.open_nursery() as nursery:
            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, inbound, outbound)
            nursery.start_soon(pump, outbound, inbound)

    async with trio.open_nursery() as nursery:
        echo_port = (await nursery.start(functools.partial(
            trio.serve_tcp, host="127.0.0.1"), echo, 0))[0].socket.getsockname()[1]
        relay_port = (await nursery.start(functools.partial(
            trio.serve_tcp, host="127.0.0.1"), lambda s: relay(s, echo_port), 0)
        )[0].socket.getsockname()[1]
        async with await trio.open_tcp_stream("127.0.0.1", relay_port) as client:
            message = b"m" * RECORD_BYTES
            for _ in range(ROUND_TRIPS):
                started = time.perf_counter()
                await client.send_all(message)
                got = 0
                while got < len(message):
                    got += len(await client.receive_some(65536))
                times.append(time.perf_counter() - started)
        nursery.cancel_scope.cancel()
    return times


def run() -> list[tuple[str, str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        pipe = percentiles(trio.run(_round_trips, None))
        synced = percentiles(trio.run(_round_trips, str(Path(tmp) / "synced.bin")))
        print(f"raw two-hop round trip, 100 B: p50 {pipe[0]:.3f} ms, p99 {pipe[1]:.3f} ms; "
              f"with an fdatasync per message: p50 {synced[0]:.3f} ms, p99 {synced[1]:.3f} ms")
        cluster = Cluster(Path(tmp) / "kelp", gateway_args=["--no-registry"]).start()
        rows = []
        try:
            for partitions in PARTITIONS:
                rows += _runs(cluster.bootstrap, partitions, RATES, 1, pipe, synced)
        finally:
            cluster.stop()
        with replicated_cluster(Path(tmp) / "three") as (bootstrap, _):
            rows += _runs(bootstrap, REPLICATED_PARTITIONS, REPLICATED_RATES, 3, pipe, synced)
    return rows


def _runs(bootstrap: str, partitions: int, rates: tuple[int, ...], replicas: int,
          pipe: tuple[float, float, float], synced: tuple[float, float, float]
          ) -> list[tuple[str, str, str, float]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"latency-{partitions}-rf{replicas}"
    admin.create_topics([NewTopic(topic, partitions, replicas)])[topic].result(30)
    rows = []
    where = f"x{partitions}" + (f" RF={replicas}" if replicas > 1 else "")
    for rate in rates:
        acks, end_to_end, client_cpu = _fixed_rate(bootstrap, topic, partitions, rate)
        ack, e2e = percentiles(acks), percentiles(end_to_end)
        print(f"{rate:>6,}/s over {partitions} partition(s), RF={replicas}: ack p50/p99/p99.9 "
              f"{ack[0]:.1f}/{ack[1]:.1f}/{ack[2]:.1f} ms, end-to-end "
              f"{e2e[0]:.1f}/{e2e[1]:.1f}/{e2e[2]:.1f} ms "
              f"({len(end_to_end):,} of {len(acks):,} consumed; client CPU "
              f"{client_cpu:.0%} of a core)")
        rows.append((f"ack p99 ms {rate // 1000}k/s {where} vs fsync RTT",
                     f"{ack[1]:.1f} (p50 {ack[0]:.1f})", f"{synced[1]:.2f}", synced[1] / ack[1]))
        rows.append((f"e2e p99 ms {rate // 1000}k/s {where} vs pipe RTT",
                     f"{e2e[1]:.1f} (p50 {e2e[0]:.1f})", f"{pipe[1]:.2f}", pipe[1] / e2e[1]))
    return rows
