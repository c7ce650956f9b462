"""After a run: did kelp survive, and is what it stored still valid Kafka?

Checks, each a line in the report and a failure when it does not hold:

- the same broker and gateway PIDs recorded at the start are alive;
- a real client (confluent-kafka) still produces 100 records and consumes them back from a
  fresh topic;
- each process's RSS (VmRSS in /proc/PID/status) is back under a bound;
- no ``Traceback`` appeared in the process logs during the run;
- every batch in every segment file of the broker's data dir, read by an independent decoder
  (kio's ``read_batch``; compressed records decompressed with cramjam first), is magic 2 with
  a good CRC, holds lastOffsetDelta + 1 records, and its records end exactly at its end.
"""

from __future__ import annotations

import collections
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
from kio.records.readers import read_batch

from kelp.fuzz import batches

RSS_LIMIT_MB = 300.0
MAX_LISTED = 20  # failures printed per check


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    batches_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def note(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.failures.append(line)
        self.lines.append(f"FAIL {line}")


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited, whatever its entry says


def check_processes(verdict: Verdict, pids: dict[str, int], rss_start: dict[str, float | None],
                    limit_mb: float = RSS_LIMIT_MB, settle_s: float = 10.0) -> None:
    for name, pid in pids.items():
        if not pid_alive(pid):
            verdict.fail(f"{name} (pid {pid}) is gone")
            continue
        deadline = time.monotonic() + settle_s
        rss = rss_mb(pid)
        while rss is not None and rss > limit_mb and time.monotonic() < deadline:
            time.sleep(0.5)  # freed buffers take a moment to go back
            rss = rss_mb(pid)
        start = rss_start.get(name)
        line = (f"{name} pid {pid} alive, RSS {_mb(start)} -> {_mb(rss)} "
                f"(limit {limit_mb:.0f} MB)")
        if rss is not None and rss > limit_mb:
            verdict.fail(line)
        else:
            verdict.note(line)


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} MB"


def check_round_trip(verdict: Verdict, bootstrap: str, count: int = 100,
                     timeout: float = 30.0) -> None:
    """confluent-kafka produces ``count`` records to a fresh topic and reads them back."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    topic = f"fuzz-verdict-{uuid.uuid4().hex[:8]}"
    sent = [f"record-{i}".encode() for i in range(count)]
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3,
                         "message.timeout.ms": int(timeout * 1000)})
    for value in sent:
        producer.produce(topic, value=value,
                         on_delivery=lambda err, _m: err and errors.append(str(err)))
    left = producer.flush(timeout)
    if left or errors:
        verdict.fail(f"round trip: {left} undelivered, errors {errors[:3]}")
        return
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "log_level": 3,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            got.append(message.value())
    consumer.close()
    if got != sent:
        verdict.fail(f"round trip: consumed {len(got)} of {count} records "
                     f"({'in order' if got == sent[:len(got)] else 'out of order'})")
    else:
        verdict.note(f"round trip: {count} records produced and consumed on {topic}")


def check_logs(verdict: Verdict, logs: dict[str, tuple[Path, int]]) -> None:
    """No Traceback in each log after the byte offset it had when the run started."""
    for name, (path, start) in logs.items():
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                text = handle.read().decode("utf-8", "replace")
        except OSError as exc:
            verdict.fail(f"{name} log {path}: {exc}")
            continue
        lines = [line for line in text.splitlines() if "Traceback" in line]
        if not lines:
            verdict.note(f"{name} log: no Traceback")
            continue
        kinds = collections.Counter(exception_kind(line) for line in lines)
        listed = "".join(f"\n      {count}x {kind}" for kind, count in kinds.most_common(8))
        first = lines[0][lines[0].index("Traceback"):][:3000].replace("\\n", "\n      ")
        verdict.fail(f"{name} log has {len(lines)} Traceback(s) of {len(kinds)} kind(s):"
                     f"{listed}\n    the first:\n      {first}")


def exception_kind(line: str) -> str:
    """The final ``Type: message`` of a logfmt-escaped traceback (its last non-empty line),
    with numbers and ids blanked so the same failure counts as one kind."""
    parts = [p.strip(' "') for p in line.split("\\n") if p.strip(' "')]
    last = parts[-1] if parts else line
    return re.sub(r"\b[0-9a-f]{16,}\b|\b\d+\b", "N", last)[:160]


def _segment_files(data_dir: Path) -> list[Path]:
    """Every live partition's segment files; a directory a DeleteTopics is still removing
    (renamed ``*.deleted``, or gone while we list it) is not data any more."""
    found = []
    for partition in sorted(data_dir.iterdir()):
        if not partition.is_dir() or partition.name.endswith(".deleted"):
            continue
        try:
            found += sorted(partition.glob("*.log"))
        except FileNotFoundError:
            continue
    return found


def check_data_dir(verdict: Verdict, data_dir: Path) -> None:
    segments = _segment_files(data_dir)
    bad = 0
    kinds: collections.Counter[str] = collections.Counter()
    for segment in segments:
        try:
            data = segment.read_bytes()
        except FileNotFoundError:
            continue  # its topic was deleted while we walked (a mutant's DeleteTopics)
        for problem in check_segment(data, verdict):
            bad += 1
            kinds[re.sub(r"(?<!codec )\b\d+\b", "N", problem.split("): ", 1)[-1])[:120]] += 1
            if bad <= MAX_LISTED:
                verdict.fail(f"{segment.relative_to(data_dir)}: {problem}")
    if bad > MAX_LISTED:
        verdict.fail(f"... and {bad - MAX_LISTED} more invalid batches")
    verdict.note(f"data dir: {verdict.batches_checked} batches in {len(segments)} segment "
                 f"files checked, {bad} invalid"
                 + "".join(f"\n      {n}x {kind}" for kind, n in kinds.most_common(12)))


def check_segment(data: bytes, verdict: Verdict) -> list[str]:
    problems: list[str] = []
    position = 0
    while position < len(data):
        if position + 12 > len(data):
            problems.append(f"byte {position}: {len(data) - position} trailing bytes")
            break
        (length,) = struct.unpack_from(">i", data, position + 8)
        end = position + 12 + length
        if length < batches.HEADER - 12 or end > len(data):
            problems.append(f"byte {position}: batchLength {length} does not fit the file")
            break  # nothing after a bad length can be located
        verdict.batches_checked += 1
        problem = check_batch(data[position:end])
        if problem is not None:
            offset = struct.unpack_from(">q", data, position)[0]
            problems.append(f"batch at byte {position} (offset {offset}): {problem}")
        position = end
    return problems


def check_batch(batch: bytes) -> str | None:
    """None when the batch is valid, else what is wrong with it."""
    magic = batch[16]
    if magic != 2:
        return f"magic {magic}"
    (crc,) = struct.unpack_from(">I", batch, 17)
    if crc != crc32c.crc32c(batch[21:]):
        return "CRC-32C mismatch"
    attributes, last_delta = struct.unpack_from(">hi", batch, 21)
    (count,) = struct.unpack_from(">i", batch, 57)
    if count != last_delta + 1:
        return f"recordCount {count} != lastOffsetDelta {last_delta} + 1"
    codec = attributes & 0x07
    if codec > 4:
        return f"unknown compression codec {codec}"
    if codec:
        try:
            records = batches.decompress(codec, batch[batches.HEADER:])
        except Exception as exc:
            return f"codec {codec} records do not decompress: {exc}"
        batch = _uncompressed(batch, records)
    try:
        decoded, size = read_batch(batch, 0)
    except Exception as exc:
        if not _unrepresentable_timestamp(exc):
            return f"records do not parse: {type(exc).__name__}: {exc}"
        # A timestamp Kafka allows (-1, or far from now) but kio cannot hold (it converts
        # every record's to an aware datetime after 1970): check the record structure alone.
        return _walk_records(batch[batches.HEADER:], count)
    if size != len(batch) or len(decoded.records) != count:
        return f"{len(decoded.records)} records end at {size} of {len(batch)} bytes"
    return None


def _unrepresentable_timestamp(exc: Exception) -> bool:
    text = str(exc)
    return (isinstance(exc, OverflowError | OSError) or "TZAwareMicros" in text
            or (isinstance(exc, ValueError) and ("year" in text or "out of range" in text)))


def _walk_records(records: bytes, count: int) -> str | None:
    """Each record's fields fill exactly its length, and the records fill the batch."""
    position = 0
    try:
        for index in range(count):
            length, width = batches.read_zigzag(records, position)
            start = position = position + width
            position += 1  # attributes
            for blob in (False, False, True, True):  # timestamp, offset, key, value
                value, width = batches.read_zigzag(records, position)
                position += width + (max(value, 0) if blob else 0)
            headers, width = batches.read_zigzag(records, position)
            position += width
            for _ in range(max(headers, 0) * 2):
                value, width = batches.read_zigzag(records, position)
                position += width + max(value, 0)
            if length < 0 or position != start + length:
                return f"record {index}: fields fill {position - start} of length {length}"
    except (IndexError, ValueError) as exc:
        return f"records do not parse: {exc}"
    if position != len(records):
        return f"records end at {position} of {len(records)} bytes"
    return None


def _uncompressed(batch: bytes, records: bytes) -> bytes:
    """The same batch with its records stored uncompressed (kio's reader has no codecs)."""
    tail = bytearray(batch[21 : batches.HEADER] + records)
    struct.pack_into(">h", tail, 0, struct.unpack_from(">h", tail, 0)[0] & ~0x07)
    head = bytearray(batch[:21])
    struct.pack_into(">i", head, 8, 9 + len(tail))
    struct.pack_into(">I", head, 17, crc32c.crc32c(bytes(tail)))
    return bytes(head + tail)
