"""Segment files for readers outside the Kafka protocol (the read sidecar, the FUSE mount).

Each segment is cut into fixed-size chunks and every chunk gets a SeaweedFS-format file id,
``<volume>,<needle key hex><cookie 8 hex>``:

- the *volume* numbers a topic-partition (assigned by this broker process on first use);
- the *needle key* is the segment's serial number (unique per Segment object in this process)
  in the high 40 bits and the chunk index in the low 24;
- the *cookie* is random per segment, so an id cannot be guessed from a listing of another
  partition, and an id from before a restart or a compaction (a new Segment object, new
  serial and cookie) is refused instead of reading other bytes.

A chunk's bytes are whatever the segment holds there now: sealed segments never change, and
the active segment's last chunk grows up to its chunk size as batches are appended (a listing
gives the length at that moment). Every read is checked against the chunk's current length
before any byte is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from broker.log import PartitionLog, Segment
from broker.topics import TopicRegistry
from kelp import fileid, httpd, reads
from kelp.rpc.broker import v1 as pb

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_BITS = 24  # chunk index bits in the needle key: 16 Mi chunks per segment


class ExportError(Exception):
    """A read that cannot be served; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Chunk:
    file_id: str
    segment: Segment
    log: PartitionLog
    index: int
    position: int  # in the segment file
    length: int  # bytes the chunk holds now

    def check_range(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0:
            raise ExportError(400, "offset and size must not be negative")
        if offset + size > self.length:
            raise ExportError(416, f"range {offset}+{size} runs past the end of chunk "
                              f"{self.file_id} ({self.length} bytes)")


class Exports:
    def __init__(self, registry: TopicRegistry, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *,
                 broker_id: int = 0) -> None:
        """``broker_id``: in a cluster, this broker's (its volumes carry it, see
        ``kelp.fileid.broker_of``); 0 for a lone broker."""
        if chunk_bytes < 4096 or chunk_bytes & (chunk_bytes - 1):
            raise ValueError(f"chunk size must be a power of two >= 4096, not {chunk_bytes}")
        if not 0 <= broker_id <= fileid.MAX_CLUSTER_BROKER_ID:
            raise ValueError(f"broker id {broker_id} outside [0, "
                             f"{fileid.MAX_CLUSTER_BROKER_ID}]")
        self.registry = registry
        self.chunk_bytes = chunk_bytes
        self.volume_base = broker_id << fileid.BROKER_VOLUME_BITS
        self._volumes: dict[tuple[str, int], int] = {}
        self._partitions: dict[int, tuple[str, int]] = {}

    def volume(self, topic: str, partition: int) -> int:
        key = (topic, partition)
        if key not in self._volumes:
            if len(self._volumes) + 1 >= 1 << fileid.BROKER_VOLUME_BITS:
                raise ExportError(507, "more partitions than this broker can number volumes for")
            number = self.volume_base + len(self._volumes) + 1
            self._volumes[key] = number
            self._partitions[number] = key
        return self._volumes[key]

    def _log(self, topic: str, partition: int) -> PartitionLog:
        found = self.registry.get(topic)
        if found is None or not 0 <= partition < len(found.logs):
            raise ExportError(404, f"no partition {topic}/{partition}")
        return found.logs[partition]

    def chunk_id(self, volume: int, segment: Segment, index: int) -> str:
        key = (segment.serial << CHUNK_BITS) | index
        return fileid.format_file_id(fileid.FileId(volume, key, segment.cookie))

    def listing(self, topic: str, partition: int) -> dict[str, object]:
        """The partition's segments with their chunk maps, as the sidecar and mount see them."""
        log = self._log(topic, partition)
        volume = self.volume(topic, partition)
        segments = []
        for segment in list(log.segments):
            size = segment.size
            chunks = [{"file_id": self.chunk_id(volume, segment, index),
                       "offset": position, "size": min(self.chunk_bytes, size - position)}
                      for index, position in enumerate(range(0, size, self.chunk_bytes))]
            segments.append({
                "base_offset": segment.base_offset, "next_offset": segment.next_offset,
                "size": size, "sealed": segment is not log.active,
                "mtime_ms": _mtime_ms(segment), "chunks": chunks})
        return {"topic": topic, "partition": partition, "volume": volume,
                "chunk_bytes": self.chunk_bytes, "log_start_offset": log.log_start_offset,
                "high_watermark": log.high_watermark, "segments": segments}

    def resolve(self, text: str) -> Chunk:
        """The chunk a file id names, or ExportError (400 malformed, 404 unknown or stale)."""
        try:
            parsed = fileid.parse(text)
        except fileid.FileIdError as exc:
            raise ExportError(400, f"bad file_id: {exc}") from None
        where = self._partitions.get(parsed.volume)
        if where is None:
            raise ExportError(404, f"unknown volume {parsed.volume} (ids do not survive a "
                              "broker restart: list the segments again)")
        log = self._log(*where)
        serial, index = parsed.key >> CHUNK_BITS, parsed.key & ((1 << CHUNK_BITS) - 1)
        segment = log.segment_by_serial(serial)
        if segment is None:
            raise ExportError(404, f"file {text}: the segment is gone (deleted by retention "
                              "or rewritten by compaction)")
        if segment.cookie != parsed.cookie:
            raise ExportError(404, f"file {text}: wrong cookie")
        position = index * self.chunk_bytes
        if position > 0 and position >= segment.size:  # chunk 0 of an empty segment is empty
            raise ExportError(404, f"file {text}: chunk {index} is past the segment's end")
        return Chunk(text, segment, log, index, position,
                     max(0, min(self.chunk_bytes, segment.size - position)))

    def stat(self, text: str) -> dict[str, object]:
        """What a chunk holds now and where it lives, or ExportError (as ``resolve``)."""
        chunk = self.resolve(text)
        return {"file_id": chunk.file_id, "size": chunk.length, "position": chunk.position,
                "segment_base_offset": chunk.segment.base_offset,
                "sealed": chunk.segment is not chunk.log.active}

    async def read(self, text: str, offset: int, size: int) -> bytes:
        if not 1 <= size <= reads.MAX_READ_BYTES:
            raise ExportError(400, f"size must be in 1..{reads.MAX_READ_BYTES}, got {size}")
        chunk = self.resolve(text)
        chunk.check_range(offset, size)
        return await chunk.log.read_range(chunk.segment, chunk.position + offset, size)


def _mtime_ms(segment: Segment) -> int:
    try:
        return int(os.fstat(segment.fd).st_mtime * 1000)
    except OSError:  # closed meanwhile (deleted and no readers)
        return 0


class ExportCalls:
    """A mixin of ``broker.service.BrokerService``: the read API of the sidecar and the mount
    (ListSegments, StatChunk, ReadChunk), answered by ``exports`` as HTTP's are."""

    exports: Exports

    async def list_segments(self, request: pb.ListSegmentsRequest) -> pb.ListSegmentsReply:
        try:
            listing: dict[str, Any] = self.exports.listing(request.topic, request.partition)
        except ExportError as exc:
            return pb.ListSegmentsReply(status=exc.status, error=exc.message)
        segments = [pb.SegmentInfo(
            base_offset=s["base_offset"], next_offset=s["next_offset"], size=s["size"],
            sealed=s["sealed"], mtime_ms=s["mtime_ms"],
            chunks=[pb.ChunkInfo(**chunk) for chunk in s["chunks"]])
            for s in listing["segments"]]
        return pb.ListSegmentsReply(status=200, **{**listing, "segments": segments})

    async def stat_chunk(self, request: pb.StatChunkRequest) -> pb.StatChunkReply:
        try:
            found = self.exports.stat(request.file_id)
        except ExportError as exc:
            return pb.StatChunkReply(status=exc.status, error=exc.message)
        del found["file_id"]
        return pb.StatChunkReply(status=200, **found)  # type: ignore[arg-type]

    async def read_chunk(self, request: pb.ReadChunkRequest) -> pb.ReadChunkReply:
        try:
            data = await self.exports.read(request.file_id, request.offset, request.size)
        except ExportError as exc:
            return pb.ReadChunkReply(status=exc.status, error=exc.message)
        return pb.ReadChunkReply(status=200, data=data)


class ExportsHttp:
    """The broker's HTTP face of the exports, for curl users: ``/topics``, ``/segments``,
    ``/stat`` and ``/read`` answer what DescribeTopics, ListSegments, StatChunk and ReadChunk
    answer over gRPC."""

    def __init__(self, exports: Exports) -> None:
        self.exports = exports

    def routes(self) -> dict[str, httpd.Handler]:
        return {"/topics": self.topics, "/segments": self.segments, "/read": self.read,
                "/stat": self.stat}

    async def topics(self, request: httpd.Request) -> httpd.Response:
        registry = self.exports.registry
        return httpd.Response.json({"topics": [
            {"name": t.name, "partitions": t.partition_count}
            for t in sorted(registry.topics.values(), key=lambda t: t.name)]})

    async def stat(self, request: httpd.Request) -> httpd.Response:
        try:
            return httpd.Response.json(self.exports.stat(request.query.get("file_id", "")))
        except ExportError as exc:
            return httpd.Response.error(exc.status, exc.message)

    async def segments(self, request: httpd.Request) -> httpd.Response:
        topic = request.query.get("topic")
        partition_text = request.query.get("partition", "")
        if not topic or not (partition_text.isascii() and partition_text.isdigit()):
            return httpd.Response.error(400, "need topic=NAME and partition=N")
        try:
            return httpd.Response.json(self.exports.listing(topic, int(partition_text)))
        except ExportError as exc:
            return httpd.Response.error(exc.status, exc.message)

    async def read(self, request: httpd.Request) -> httpd.Response:
        try:
            wanted = reads.parse_read_request(request.query_items)
            data = await self.exports.read(str(wanted.file_id), wanted.offset, wanted.size)
        except reads.BadReadRequest as exc:
            return httpd.Response.error(400, str(exc))
        except ExportError as exc:
            return httpd.Response.error(exc.status, exc.message)
        return httpd.Response(200, data)
