"""Hostile bytes against a live stack: Kafka's answer or a closed connection, never a crash.

After each case the same processes serve, a real client round-trips, nothing was stored that
an independent decoder (kio's record-batch reader) refuses, and no traceback was logged.
"""

from __future__ import annotations

import datetime
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import crc32c
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_request_schema
from kio.records.readers import read_batch
from kio.schema.errors import ErrorCode

from kelp import recordbatch, records
from tests.batches import make_batch
from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition
from tests.registry_http import ok

PRODUCE = 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("hostile"),
                      broker_args=["--retention-check-ms", "500"])
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def same_processes(stack: Cluster) -> Iterator[None]:
    """Around each case: the same PIDs before and after, and still serving a real client."""
    assert stack.broker.popen and stack.gateway.popen
    pids = (stack.broker.popen.pid, stack.gateway.popen.pid)
    yield
    assert stack.broker.popen.poll() is None and stack.gateway.popen.poll() is None
    assert (stack.broker.popen.pid, stack.gateway.popen.pid) == pids
    _round_trip(stack)
    for proc in (stack.broker, stack.gateway):
        assert "Traceback" not in proc.log_text(), proc.log_text()[-3000:]


def _round_trip(stack: Cluster) -> None:
    topic = f"alive-{time.monotonic_ns()}"
    producer = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all"})
    for i in range(10):
        producer.produce(topic, key=b"k", value=b"v%d" % i, partition=0)
    assert producer.flush(30) == 0
    assert list(read_partition(stack.bootstrap, topic, expected=10).values()) == [
        b"v%d" % i for i in range(10)]


def _create(stack: Cluster, topic: str, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    futures = admin.create_topics([NewTopic(topic, 1, config=configs)])
    futures[topic].result(30)


def _produce_raw(stack: Cluster, topic: str, batch: bytes, version: int = 9) -> Any:
    """One Produce request holding ``batch``; the partition's response."""
    request_type = load_request_schema(PRODUCE, version)
    module = sys.modules[request_type.__module__]
    client = RawClient(stack.bootstrap)
    try:
        response = client.request(request_type(
            transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10),
            topic_data=(module.TopicProduceData(name=topic, partition_data=(
                module.PartitionProduceData(index=0, records=batch),)),)))
    finally:
        client.close()
    (part,) = response.responses[0].partition_responses
    return part


def _signed(batch: bytearray) -> bytes:
    """Re-sign the CRC so only the contents are wrong (the CRC check passes)."""
    struct.pack_into(">i", batch, 8, len(batch) - recordbatch.LENGTH_PREFIX)
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
    return bytes(batch)


def _with(batch: bytes, **fields: int) -> bytes:
    out = bytearray(batch)
    layout = {"attributes": (21, ">h"), "last_offset_delta": (23, ">i"),
              "record_count": (57, ">i"), "producer_id": (43, ">q"),
              "base_sequence": (53, ">i")}
    for name, value in fields.items():
        position, fmt = layout[name]
        struct.pack_into(fmt, out, position, value)
    return _signed(out)


GOOD = make_batch([(b"k%d" % i, b"v%d" % i) for i in range(5)])
ONE = make_batch([(b"k", b"v")])
POISONED = {
    "record count 0": (_with(GOOD, record_count=0), ErrorCode.invalid_record),
    "count 5, lastOffsetDelta 0": (_with(GOOD, last_offset_delta=0), ErrorCode.invalid_record),
    "lastOffsetDelta 2^31-1, one record": (_with(ONE, last_offset_delta=2**31 - 1),
                                           ErrorCode.invalid_record),
    "garbage record bytes": (_signed(bytearray(GOOD[:61]) + os.urandom(40)),
                             ErrorCode.invalid_record),
    "trailing bytes": (_signed(bytearray(GOOD) + b"\x00\x00"), ErrorCode.invalid_record),
    "codec 5": (_with(GOOD, attributes=5), ErrorCode.unsupported_compression_type),
    "gzip flag, body not gzip": (_with(GOOD, attributes=1), ErrorCode.corrupt_message),
    "sequence without producer": (_with(GOOD, producer_id=7, base_sequence=-5),
                                  ErrorCode.invalid_record),
}


@pytest.mark.parametrize("case", list(POISONED))
def test_crc_valid_batches_with_wrong_contents_are_refused(stack: Cluster, same_processes: None,
                                                           case: str) -> None:
    batch, expected = POISONED[case]
    topic = f"poison-{abs(hash(case))}"
    _create(stack, topic)
    part = _produce_raw(stack, topic, batch)
    assert part.error_code == expected, (part.error_code, part.error_message)
    assert part.error_message  # Kafka's answer says why
    good = _produce_raw(stack, topic, GOOD)
    assert (good.error_code, good.base_offset) == (ErrorCode.none, 0)  # nothing was stored


def test_keyless_records_on_a_compacted_topic(stack: Cluster, same_processes: None) -> None:
    _create(stack, "compacted-keys", **{"cleanup.policy": "compact"})
    batch = make_batch([(b"a", b"1"), (None, b"2"), (b"c", b"3"), (None, b"4")])
    part = _produce_raw(stack, "compacted-keys", batch)
    assert part.error_code == ErrorCode.invalid_record
    assert [e.batch_index for e in part.record_errors] == [1, 3]
    assert "without key" in part.record_errors[0].batch_index_error_message
    # librdkafka sees the refusal in its delivery reports.
    failures: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 50})
    producer.produce("compacted-keys", value=b"no key", partition=0,
                     on_delivery=lambda err, _msg: failures.append(err))
    producer.flush(30)
    assert failures and failures[0] is not None
    assert failures[0].code() == KafkaError.INVALID_RECORD
    assert _produce_raw(stack, "compacted-keys", make_batch([(b"k", b"v")])).base_offset == 0


def test_a_poisoned_schemas_batch_cannot_be_produced(stack: Cluster,
                                                     same_processes: None) -> None:
    ok(stack.registry_url, "GET", "/subjects")  # the registry has created _schemas
    part = _produce_raw(stack, "_schemas", _with(GOOD, attributes=1))
    assert part.error_code == ErrorCode.corrupt_message


def test_null_arrays_and_huge_counts_close_only_that_connection(
        stack: Cluster, same_processes: None) -> None:
    header = struct.pack(">hhih", 3, 12, 5, 3) + b"cli\x00"
    frames = [
        header + b"\xff\xff\xff\xff\x0f\x00\x00\x00",  # Metadata v12: 2^32-2 topics
        struct.pack(">hhih", 0, 9, 5, 3) + b"cli\x00" + b"\x00" + struct.pack(">hi", -1, 100)
        + b"\x00\x00",  # Produce v9 with topic_data null
        struct.pack(">hhih", 1, 4, 5, 3) + b"cli" + struct.pack(">iiiibi", -1, 100, 1, 1024,
                                                                0, -1),  # Fetch v4 topics null
    ]
    for payload in frames:
        client = RawClient(stack.bootstrap)
        client.send_bytes(struct.pack(">i", len(payload)) + payload)
        assert client.is_closed_by_peer()
        client.close()


def test_illegal_topic_names_and_configs(stack: Cluster, same_processes: None) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    bad_name = admin.create_topics([NewTopic("abc\n", 1)])["abc\n"]
    with pytest.raises(Exception, match=r"INVALID_TOPIC_EXCEPTION|illegal"):
        bad_name.result(30)
    assert not list(stack.data_dir.glob("abc*"))
    bad_config = admin.create_topics([NewTopic("cfg", 1, config={"dummy.doesntexist": "1"})])
    with pytest.raises(Exception, match=r"INVALID_CONFIG|unknown topic config"):
        bad_config["cfg"].result(30)
    kept = admin.create_topics([NewTopic("cfg2", 1, config={"min.insync.replicas": "2"})])
    kept["cfg2"].result(30)


def test_made_up_producer_ids_are_bounded(stack: Cluster, same_processes: None) -> None:
    from broker.producers import MAX_PRODUCERS

    _create(stack, "pids")
    request_type = load_request_schema(PRODUCE, 9)
    module = sys.modules[request_type.__module__]
    client = RawClient(stack.bootstrap)
    count = MAX_PRODUCERS + 500
    try:
        for pid in range(count):  # sequence 0, no InitProducerId: as an attacker would
            batch = make_batch([(b"k", b"v")], producer=(10_000 + pid, 0, 0))
            client.send(request_type(
                transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=10),
                topic_data=(module.TopicProduceData(name="pids", partition_data=(
                    module.PartitionProduceData(index=0, records=batch),)),)), pid)
            if pid % 64 == 63 or pid == count - 1:  # keep a window in flight
                for _ in range(64 if pid % 64 == 63 else count % 64):
                    client.read_frame()
    finally:
        client.close()
    describe = load_request_schema(61, 0)
    dmodule = sys.modules[describe.__module__]
    client = RawClient(stack.bootstrap)
    try:
        response = client.request(describe(topics=(dmodule.TopicRequest(
            name="pids", partition_indexes=(0,)),)))
    finally:
        client.close()
    (partition,) = response.topics[0].partitions
    assert len(partition.active_producers) == MAX_PRODUCERS


def test_every_stored_batch_is_valid(stack: Cluster) -> None:
    """Runs last in this module: an independent decoder accepts every byte kelp stored."""
    checked = 0
    for segment in Path(stack.data_dir).glob("*/*.log"):
        data = segment.read_bytes()
        position = 0
        while position < len(data):
            header = recordbatch.parse_header(data, position)
            batch = data[position:position + header.size]
            assert recordbatch.crc_matches(batch, 0, header)
            if header.compression == 0:
                read_batch(batch, 0)  # raises on any inconsistency
            else:
                assert len(list(records.iter_records(batch))) == header.record_count
            position += header.size
            checked += 1
    assert checked > 0


def test_a_poisoned_schemas_log_is_skipped_not_fatal(own_cluster: Cluster) -> None:
    """A bad batch already on disk (written to the segment file, as a damaged disk or an old
    bug would leave it): the registry skips it with a log line and keeps serving."""
    url = own_cluster.registry_url
    schema = {"schema": '{"type":"record","name":"A","fields":[{"name":"a","type":"int"}]}'}
    first = ok(url, "POST", "/subjects/before-value/versions", schema)["id"]
    own_cluster.stop()
    segment = sorted((own_cluster.data_dir / "_schemas-0").glob("*.log"))[-1]
    data = segment.read_bytes()
    next_offset, position = 0, 0
    while position < len(data):
        header = recordbatch.parse_header(data, position)
        next_offset, position = header.last_offset + 1, position + header.size
    poisoned = bytearray(_with(make_batch([(b'{"keytype":"NOOP"}', b"x")]), attributes=1))
    struct.pack_into(">q", poisoned, 0, next_offset)
    with open(segment, "ab") as out:
        out.write(poisoned)
    own_cluster.start()
    own_cluster.gateway.wait_for_log("skipping unreadable record batch")
    line = next(x for x in own_cluster.gateway.log_text().splitlines()
                if "skipping unreadable record batch" in x)
    assert "topic=_schemas" in line and f"offset={next_offset}" in line and "reason=" in line
    second = ok(url, "POST", "/subjects/after-value/versions", {"schema": schema["schema"]
                .replace('"A"', '"B"')})["id"]
    assert second > first
    assert ok(url, "GET", f"/schemas/ids/{first}")["schema"]
    assert "Traceback" not in own_cluster.gateway.log_text()


def test_a_topic_named_many_times_is_answered_once(stack: Cluster, same_processes: None) -> None:
    """Metadata naming one 64-partition topic 50,000 times (a 350 KB request) is one entry, as
    in Kafka, not a response of 3.2 million partitions that would stall the gateway."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    admin.create_topics([NewTopic("wide", 64)])["wide"].result(30)
    request_type = load_request_schema(3, 4)  # Metadata v4
    module = sys.modules[request_type.__module__]
    named = module.MetadataRequestTopic(name="wide")
    client = RawClient(stack.bootstrap, timeout=30)
    try:
        started = time.monotonic()
        response = client.request(request_type(topics=(named,) * 50_000,
                                                allow_auto_topic_creation=False))
        assert time.monotonic() - started < 20
    finally:
        client.close()
    assert [t.name for t in response.topics] == ["wide"]
    assert len(response.topics[0].partitions) == 64


def test_repeated_configs_and_groups_are_answered_once(stack: Cluster,
                                                       same_processes: None) -> None:
    """DescribeConfigs and DescribeGroups naming one resource 20,000 times answer it once:
    each answer is far larger than its entry, so repeats would amplify a small request."""
    _create(stack, "configs-once")
    describe_configs = load_request_schema(32, 4)
    configs_module = sys.modules[describe_configs.__module__]
    resource = configs_module.DescribeConfigsResource(
        resource_type=2, resource_name="configs-once", configuration_keys=None)
    describe_groups = load_request_schema(15, 5)
    client = RawClient(stack.bootstrap, timeout=30)
    try:
        configs = client.request(describe_configs(
            resources=(resource,) * 20_000, include_synonyms=False,
            include_documentation=False))
        groups = client.request(describe_groups(groups=("g-once",) * 20_000,
                                                include_authorized_operations=False),
                                correlation_id=2)
    finally:
        client.close()
    assert [r.resource_name for r in configs.results] == ["configs-once"]
    assert len(configs.results[0].configs) > 5
    assert [g.group_id for g in groups.groups] == ["g-once"]


def _zstd(batch: bytes) -> bytes:
    out = bytearray(batch[:61]) + bytes(cramjam.zstd.compress(batch[61:]))
    struct.pack_into(">h", out, 21, 4)  # codec 4: zstd
    return _signed(out)


def test_zstd_needs_produce_v7(stack: Cluster, same_processes: None) -> None:
    """KIP-110: Kafka refuses zstd batches in Produce requests older than v7."""
    topic = f"zstd-{time.monotonic_ns()}"
    _create(stack, topic, **{"retention.ms": "-1"})  # GOOD's timestamps are from 2023
    old = _produce_raw(stack, topic, _zstd(GOOD), version=6)
    assert old.error_code == ErrorCode.unsupported_compression_type
    # (Produce v6 responses carry no error message; the code is the answer.)
    assert _produce_raw(stack, topic, _zstd(GOOD), version=7).error_code == ErrorCode.none
    assert list(read_partition(stack.bootstrap, topic, expected=5).values()) == [
        b"v%d" % i for i in range(5)]
