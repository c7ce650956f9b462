"""The broker's exports of segment files: chunk maps with SeaweedFS file ids, and the HTTP
read path (the sidecar's and the mount's fallback), compared byte for byte with the files."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kelp import fileid
from tests.kelp_procs import Cluster

CHUNK = 64 * 1024


@pytest.fixture
def exports_cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "c", gateway_args=["--no-registry"],
                      broker_args=["--chunk-bytes", str(CHUNK)])
    try:
        yield running.start()
    finally:
        running.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _fill(cluster: Cluster, topic: str, count: int, segment_bytes: int) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={
        "segment.bytes": str(segment_bytes)})])[topic].result(10)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 2})
    rng = random.Random(7)
    for i in range(count):
        producer.produce(topic, key=b"%d" % i, value=rng.randbytes(rng.randrange(10, 3000)))
    assert producer.flush(30) == 0


def _listing(cluster: Cluster, topic: str) -> dict:
    base = f"http://127.0.0.1:{cluster.broker_http_port}"
    status, body = _get(f"{base}/segments?topic={topic}&partition=0")
    assert status == 200, body
    return json.loads(body)


def _read(cluster: Cluster, file_id: str, offset: int, size: int) -> tuple[int, bytes]:
    return _get(f"http://127.0.0.1:{cluster.broker_http_port}/read?"
                f"file_id={file_id}&offset={offset}&size={size}")


def test_every_chunk_reads_back_as_on_disk(exports_cluster: Cluster) -> None:
    cluster = exports_cluster
    _fill(cluster, "exp", 3000, segment_bytes=1024 * 1024)
    listing = _listing(cluster, "exp")
    segments = listing["segments"]
    assert len(segments) >= 3 and [s["sealed"] for s in segments][-1] is False
    assert listing["high_watermark"] == 3000
    directory = cluster.data_dir / "exp-0"
    rng = random.Random(1)
    for segment in segments:
        on_disk = (directory / f"{segment['base_offset']:020d}.log").read_bytes()
        assert segment["size"] == len(on_disk)
        assert sum(c["size"] for c in segment["chunks"]) == len(on_disk)
        for chunk in segment["chunks"]:
            expected = on_disk[chunk["offset"]:chunk["offset"] + chunk["size"]]
            status, whole = _read(cluster, chunk["file_id"], 0, chunk["size"])
            assert (status, whole) == (200, expected)
            start = rng.randrange(chunk["size"])
            size = rng.randrange(1, chunk["size"] - start + 1)
            assert _read(cluster, chunk["file_id"], start, size) == (
                200, expected[start:start + size])
    # Ids differ per segment (cookies are random per segment) and parse as SeaweedFS ids.
    ids = [fileid.parse(c["file_id"]) for s in segments for c in s["chunks"]]
    assert len({i.cookie for i in ids}) == len(segments)
    assert len({str(i) for i in ids}) == len(ids)


def test_bad_reads_are_refused_before_touching_the_file(exports_cluster: Cluster) -> None:
    cluster = exports_cluster
    _fill(cluster, "bad", 200, segment_bytes=1024 * 1024)
    chunk = _listing(cluster, "bad")["segments"][0]["chunks"][0]
    parsed = fileid.parse(chunk["file_id"])
    status, body = _read(cluster, chunk["file_id"], chunk["size"] - 10, 11)
    assert status == 416 and b"runs past the end" in body
    wrong_cookie = fileid.format_file_id(fileid.FileId(parsed.volume, parsed.key,
                                                       parsed.cookie ^ 1))
    status, body = _read(cluster, wrong_cookie, 0, 1)
    assert status == 404 and b"wrong cookie" in body
    unknown = fileid.format_file_id(fileid.FileId(parsed.volume + 100, parsed.key, 1))
    assert _read(cluster, unknown, 0, 1)[0] == 404
    far_chunk = fileid.format_file_id(fileid.FileId(parsed.volume, parsed.key + 999,
                                                    parsed.cookie))
    assert _read(cluster, far_chunk, 0, 1)[0] == 404
    for query in ("file_id=nonsense&offset=0&size=1", f"file_id={chunk['file_id']}&size=1",
                  f"file_id={chunk['file_id']}&offset=-1&size=1",
                  f"file_id={chunk['file_id']}&offset=0&size=1&offset=0"):
        status, body = _get(f"http://127.0.0.1:{cluster.broker_http_port}/read?{query}")
        assert status == 400, (query, body)
    assert _get(f"http://127.0.0.1:{cluster.broker_http_port}/segments?topic=nope"
                "&partition=0")[0] == 404


def test_ids_of_deleted_segments_stop_working(exports_cluster: Cluster) -> None:
    cluster = exports_cluster
    _fill(cluster, "gone", 2000, segment_bytes=256 * 1024)
    before = _listing(cluster, "gone")["segments"]
    first_chunk = before[0]["chunks"][0]["file_id"]
    assert _read(cluster, first_chunk, 0, 1)[0] == 200
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.delete_records([TopicPartition("gone", 0, before[2]["base_offset"])])[
        TopicPartition("gone", 0, before[2]["base_offset"])].result(10)
    after = _listing(cluster, "gone")["segments"]
    assert after[0]["base_offset"] == before[2]["base_offset"]
    status, body = _read(cluster, first_chunk, 0, 1)
    assert status == 404 and b"segment is gone" in body
