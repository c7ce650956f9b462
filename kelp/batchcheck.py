"""What Kafka's LogValidator checks in a produced v2 record batch, fast and bounded (sans-IO).

``recordbatch`` checks what a reader needs to frame and trust the bytes (magic, length, CRC);
this module checks what a broker must refuse before it appends a client's batch, as Kafka's
``LogValidator.validateBatch`` and ``DefaultRecord.readFrom`` do:

- the batch header: record count >= 1 and equal to ``lastOffsetDelta + 1``, no control batch
  from a client, producer fields that make sense (an idempotent batch has a sequence, a
  transactional one has a producer id), a known compression codec;
- the body: it decompresses, to at most ``max_decompressed_bytes`` (zip bombs are refused
  without expanding them), and it holds exactly ``recordCount`` well-formed records whose
  inner offsets run 0, 1, 2, ... and nothing after them;
- on compacted topics, every record has a key.

A rejection is one exception, :class:`BatchRejected`, carrying the Kafka error code and
message a produce response would carry. The record walk runs in a small C extension
(``kelp._recordwalk``, built by ``pip install``) that creates no Python object per record;
without a compiler the pure-Python walker here gives the same answers, slower. ``NATIVE`` says
which one is active.

Decompressing a big batch takes a while: callers in trio run :func:`check_batch` through
``trio.to_thread`` with a limiter (DESIGN.md section 5); the C walker releases the GIL on
large bodies.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cramjam
from kio.schema.errors import ErrorCode

from kelp import recordbatch

try:
    from kelp import _recordwalk
except ImportError:  # built without a C compiler: the pure-Python walker below takes over
    _recordwalk = None

#: True when the C record walker is active.
NATIVE: bool = _recordwalk is not None

DEFAULT_MAX_DECOMPRESSED = 128 * 1024 * 1024

NONE, GZIP, SNAPPY, LZ4, ZSTD = range(5)
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

COMPACTED_NO_KEY = "Compacted topic cannot accept message without key"


class BatchRejected(Exception):
    """A batch Kafka would refuse. ``error`` is the Kafka error code for the produce response.

    ``record_errors`` lists ``(record index within the batch, message)`` when the fault lies
    with individual records Kafka reports one by one (keyless records on a compacted topic);
    structural faults name the record in ``message`` and leave it empty, as Kafka does.
    """

    error: ErrorCode
    message: str
    record_errors: tuple[tuple[int, str], ...]

    def __init__(self, error: ErrorCode, message: str,
                 record_errors: tuple[tuple[int, str], ...] = ()) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.record_errors = record_errors

    def __reduce__(self) -> tuple[type[BatchRejected], tuple[object, ...]]:
        # pickles across process pools with its fields
        return type(self), (self.error, self.message, self.record_errors)

    def __repr__(self) -> str:
        return f"BatchRejected({self.error.name}, {self.message!r})"


# --- the record walk ---------------------------------------------------------------------------
#
# A walk returns ``(status, record, header, a, b, keyless)``: status 0 is success; ``record`` is
# the index of the record at fault (``count`` on success or for trailing bytes), ``header`` the
# index of the header at fault (-1 elsewhere), ``a`` and ``b`` numbers whose meaning depends on
# the status (on success: the largest timestampDelta, and 1 when there was a record), and
# ``keyless`` None or, on success of a compacted walk, the list of records whose
# key is null. kelp/_recordwalk.c returns the very same tuples; keep both in step.

Walk = tuple[int, int, int, int, int, list[int] | None]

OK = 0
VARINT_TRUNCATED = 1  # a = field
VARINT_TOO_LONG = 2  # a = field
RECORD_LENGTH = 3  # a = declared length (<= 0)
RECORD_PAST_END = 4  # a = declared length, b = bytes left in the body
OFFSET_DELTA = 5  # a = offset delta found
KEY_LENGTH = 6  # a = key length (< -1)
KEY_PAST_END = 7  # a = key length, b = bytes left in the record
VALUE_LENGTH = 8
VALUE_PAST_END = 9
HEADER_COUNT_NEGATIVE = 10  # a = header count
HEADER_COUNT_TOO_LARGE = 11  # a = header count, b = bytes left in the record
HEADER_KEY_NEGATIVE = 12  # a = header key length
HEADER_KEY_PAST_END = 13  # a = length, b = bytes left in the record
HEADER_VALUE_LENGTH = 14  # a = header value length (< -1)
HEADER_VALUE_PAST_END = 15  # a = length, b = bytes left in the record
RECORD_SIZE = 16  # a = declared length, b = bytes the fields took
TRAILING = 17  # a = unconsumed bytes
RECORDS_MISSING = 18  # record = records present, a = declared count

FIELD_NAMES = ("length", "timestampDelta", "offsetDelta", "keyLength", "valueLength",
               "header count", "header keyLength", "header valueLength")
(_F_LENGTH, _F_TIMESTAMP, _F_OFFSET, _F_KEY, _F_VALUE, _F_HEADERS, _F_HEADER_KEY,
 _F_HEADER_VALUE) = range(8)


class _Bad(Exception):
    """A varint that cannot be read: carries (status, field) out of the Python walker."""


def _varint(data: bytes | bytearray, p: int, end: int, field: int) -> tuple[int, int]:
    """A zigzag varint read as Kafka's ByteUtils.readVarint does: at most 5 bytes, the 5th
    without a continuation bit, bits above 32 dropped (Java int arithmetic)."""
    raw = 0
    for shift in (0, 7, 14, 21):
        if p >= end:
            raise _Bad(VARINT_TRUNCATED, field)
        byte = data[p]
        p += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), p
    if p >= end:
        raise _Bad(VARINT_TRUNCATED, field)
    byte = data[p]
    p += 1
    if byte & 0x80:
        raise _Bad(VARINT_TOO_LONG, field)
    raw = (raw | (byte << 28)) & 0xFFFFFFFF
    return (raw >> 1) ^ -(raw & 1), p


def _walk_python(body: bytes | bytearray | memoryview, count: int, compacted: bool) -> Walk:
    data = body if isinstance(body, bytes | bytearray) else bytes(body)
    varint = _varint
    end = len(data)
    p = 0
    keyless: list[int] = []
    index = 0
    header = -1
    max_delta = -(1 << 63)  # the largest timestampDelta, for the batch's maxTimestamp
    try:
        for index in range(count):
            header = -1
            if p >= end:
                return (RECORDS_MISSING, index, -1, count, 0, None)
            byte = data[p]
            if byte < 0x80:
                length, p = (byte >> 1) ^ -(byte & 1), p + 1
            else:
                length, p = varint(data, p, end, _F_LENGTH)
            if length <= 0:
                return (RECORD_LENGTH, index, -1, length, 0, None)
            if length > end - p:
                return (RECORD_PAST_END, index, -1, length, end - p, None)
            start = p
            rec_end = p + length
            p += 1  # attributes
            raw = 0
            for shift in range(0, 70, 7):  # timestampDelta, a varlong of at most 10 bytes
                if p >= rec_end:
                    raise _Bad(VARINT_TRUNCATED, _F_TIMESTAMP)
                byte = data[p]
                p += 1
                raw |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
            else:
                raise _Bad(VARINT_TOO_LONG, _F_TIMESTAMP)
            raw &= 0xFFFFFFFFFFFFFFFF  # Java long shifts drop the bits above 64
            timestamp_delta = (raw >> 1) ^ -(raw & 1)
            if timestamp_delta > max_delta:
                max_delta = timestamp_delta
            if p < rec_end and (byte := data[p]) < 0x80:
                offset_delta, p = (byte >> 1) ^ -(byte & 1), p + 1
            else:
                offset_delta, p = varint(data, p, rec_end, _F_OFFSET)
            if offset_delta != index:
                return (OFFSET_DELTA, index, -1, offset_delta, 0, None)
            if p < rec_end and (byte := data[p]) < 0x80:
                key_length, p = (byte >> 1) ^ -(byte & 1), p + 1
            else:
                key_length, p = varint(data, p, rec_end, _F_KEY)
            if key_length < -1:
                return (KEY_LENGTH, index, -1, key_length, 0, None)
            if key_length > rec_end - p:
                return (KEY_PAST_END, index, -1, key_length, rec_end - p, None)
            if key_length > 0:
                p += key_length
            if p < rec_end and (byte := data[p]) < 0x80:
                value_length, p = (byte >> 1) ^ -(byte & 1), p + 1
            else:
                value_length, p = varint(data, p, rec_end, _F_VALUE)
            if value_length < -1:
                return (VALUE_LENGTH, index, -1, value_length, 0, None)
            if value_length > rec_end - p:
                return (VALUE_PAST_END, index, -1, value_length, rec_end - p, None)
            if value_length > 0:
                p += value_length
            if p < rec_end and (byte := data[p]) < 0x80:
                headers, p = (byte >> 1) ^ -(byte & 1), p + 1
            else:
                headers, p = varint(data, p, rec_end, _F_HEADERS)
            if headers < 0:
                return (HEADER_COUNT_NEGATIVE, index, -1, headers, 0, None)
            if headers > rec_end - p:
                return (HEADER_COUNT_TOO_LARGE, index, -1, headers, rec_end - p, None)
            for header in range(headers):
                size, p = varint(data, p, rec_end, _F_HEADER_KEY)
                if size < 0:
                    return (HEADER_KEY_NEGATIVE, index, header, size, 0, None)
                if size > rec_end - p:
                    return (HEADER_KEY_PAST_END, index, header, size, rec_end - p, None)
                p += size
                size, p = varint(data, p, rec_end, _F_HEADER_VALUE)
                if size < -1:
                    return (HEADER_VALUE_LENGTH, index, header, size, 0, None)
                if size > rec_end - p:
                    return (HEADER_VALUE_PAST_END, index, header, size, rec_end - p, None)
                if size > 0:
                    p += size
            header = -1
            if p != rec_end:
                return (RECORD_SIZE, index, -1, length, p - start, None)
            if compacted and key_length < 0:
                keyless.append(index)
    except _Bad as bad:
        status, field = bad.args
        return (status, index, header, field, 0, None)
    count = max(count, 0)
    if p != end:
        return (TRAILING, count, -1, end - p, 0, None)
    if count == 0:
        return (OK, 0, -1, 0, 0, None)
    return (OK, count, -1, max_delta, 1, keyless or None)


def walk_records(body: bytes | bytearray | memoryview, count: int, *, compacted: bool = False,
                 native: bool | None = None) -> Walk:
    """Walk ``count`` records of an uncompressed records body; see the tuple described above.

    ``native`` picks the implementation (None: the active one, True: the C walker, which must
    be built, False: the Python walker); both give identical results for any input.
    """
    if native is None:
        native = NATIVE
    if native:
        if _recordwalk is None:
            raise RuntimeError("kelp._recordwalk is not built")
        return _recordwalk.walk(body, count, compacted)
    return _walk_python(body, count, compacted)


def describe_walk(walk: Walk, count: int) -> str | None:
    """Kafka-style message for a failed walk, None for a successful one."""
    status, record, header, a, b, _keyless = walk
    where = f"record {record}"
    if header >= 0:
        where = f"header {header} of record {record}"
    messages: dict[int, Callable[[], str]] = {
        VARINT_TRUNCATED: lambda: f"Found invalid record structure: {where}: the "
                                  f"{FIELD_NAMES[a]} varint runs past the end of the "
                                  f"{'records' if a == _F_LENGTH else 'record'}",
        VARINT_TOO_LONG: lambda: f"Found invalid record structure: {where}: the "
                                 f"{FIELD_NAMES[a]} varint is too long (more than "
                                 f"{10 if a == _F_TIMESTAMP else 5} bytes)",
        RECORD_LENGTH: lambda: f"Invalid record size: record {record} declares {a} bytes",
        RECORD_PAST_END: lambda: f"Invalid record size: expected {a} bytes in the payload of "
                                 f"record {record}, but instead the buffer has only {b} "
                                 "remaining bytes.",
        OFFSET_DELTA: lambda: f"Record {record} has offset delta {a}: the inner offsets of a "
                              f"batch must run 0, 1, 2, ... (expected {record})",
        KEY_LENGTH: lambda: f"Found invalid record structure: record {record} has key "
                            f"length {a}",
        KEY_PAST_END: lambda: f"Found invalid record structure: the {a}-byte key of record "
                              f"{record} runs past its end ({b} bytes left)",
        VALUE_LENGTH: lambda: f"Found invalid record structure: record {record} has value "
                              f"length {a}",
        VALUE_PAST_END: lambda: f"Found invalid record structure: the {a}-byte value of "
                                f"record {record} runs past its end ({b} bytes left)",
        HEADER_COUNT_NEGATIVE: lambda: f"Found invalid number of record headers {a} in "
                                       f"record {record}",
        HEADER_COUNT_TOO_LARGE: lambda: f"Found invalid number of record headers. {a} is "
                                        "larger than the remaining size of record "
                                        f"{record} ({b} bytes)",
        HEADER_KEY_NEGATIVE: lambda: f"Invalid negative header key size {a} in {where}",
        HEADER_KEY_PAST_END: lambda: f"Found invalid record structure: the {a}-byte key of "
                                     f"{where} runs past the record's end ({b} bytes left)",
        HEADER_VALUE_LENGTH: lambda: f"Found invalid record structure: {where} has value "
                                     f"length {a}",
        HEADER_VALUE_PAST_END: lambda: f"Found invalid record structure: the {a}-byte value "
                                       f"of {where} runs past the record's end ({b} bytes "
                                       "left)",
        RECORD_SIZE: lambda: f"Invalid record size: expected to read {a} bytes in record "
                             f"payload, but instead read {b} (record {record})",
        TRAILING: lambda: "Incorrect declared batch size, records still remaining in file: "
                          f"{a} unconsumed bytes after all records ({count} records)",
        RECORDS_MISSING: lambda: "Incorrect declared batch size, premature EOF reached: "
                                 f"only {record} of the {a} records the batch declares are "
                                 "present",
    }
    if status == OK:
        return None
    describe = messages.get(status)
    if describe is None:
        return f"Found invalid record structure in record {record} (status {status})"
    return describe()


def check_records(body: bytes | bytearray | memoryview, count: int, *,
                  compacted: bool = False) -> int:
    """Check an uncompressed records body holding ``count`` records; raise ``BatchRejected``.

    Returns the largest timestampDelta of the records (0 when there are none).
    """
    walk = walk_records(body, count, compacted=compacted)
    message = describe_walk(walk, count)
    if message is not None:
        raise BatchRejected(ErrorCode.invalid_record, message)
    keyless = walk[5]
    if keyless:
        errors = tuple((index, COMPACTED_NO_KEY) for index in keyless)
        shown = ", ".join(f"RecordError(batchIndex={index}, message='{text}')"
                          for index, text in errors[:3])
        raise BatchRejected(
            ErrorCode.invalid_record,
            f"One or more records have been rejected due to {len(errors)} record errors in "
            f"total, and only showing the first three errors at most: [{shown}]",
            errors)
    return walk[3]


# --- bounded decompression ---------------------------------------------------------------------


class _TooBig(Exception):
    pass


class _Corrupt(Exception):
    pass


_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16  # magic, version, compatible version
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_MIN_GUESS = 64 * 1024
_INFLATE_INPUT = 64 * 1024
# cramjam's message when the output buffer given to decompress_into is full (Rust's
# io::ErrorKind::WriteZero); any other error means the input itself is bad.
_BUFFER_FULL = "write whole buffer"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _inflate(data: memoryview, limit: int) -> bytearray:
    """gzip members, one after the other, streamed in bounded steps.

    gzip only, as Java's GZIPInputStream reads it: a zlib stream under the gzip flag is
    refused, since Java consumers could not read it back.

    Input goes in by slices and output comes out by steps, so neither zlib's unconsumed
    input copies nor its output blocks grow with the batch: memory is ``limit`` plus a step.
    """
    out = bytearray()
    step = max(_MIN_GUESS, min(limit // 8, 1024 * 1024))
    position, end = 0, len(data)
    while True:
        inflater = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip header and trailer
        pending: bytes | memoryview = b""
        while not inflater.eof:
            if not pending and position < end:
                pending = data[position : position + _INFLATE_INPUT]
                position += len(pending)
            chunk = inflater.decompress(pending, step)
            if len(out) + len(chunk) > limit:
                raise _TooBig
            out += chunk
            pending = inflater.unconsumed_tail
            if not chunk and not pending and position >= end:
                raise _Corrupt("stream is truncated")
        if inflater.unused_data:  # the next member starts in this slice
            position -= len(inflater.unused_data)
        if position >= end:
            return out


def _frame_content_size(codec: int, data: memoryview) -> int | None:
    """The decompressed size a zstd or lz4 frame header declares, if it declares one."""
    if codec == ZSTD and len(data) >= 6 and data[:4] == _ZSTD_MAGIC:
        descriptor = data[4]
        single_segment = descriptor >> 5 & 1
        size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
        position = 5 + (not single_segment) + (0, 1, 2, 4)[descriptor & 3]
        if size_bytes and len(data) >= position + size_bytes:
            size = int.from_bytes(data[position : position + size_bytes], "little")
            return size + 256 if size_bytes == 2 else size
    if codec == LZ4 and len(data) >= 14 and data[:4] == _LZ4_MAGIC and data[4] & 0x08:
        return int.from_bytes(data[6:14], "little")
    return None


def _decompress_into(codec: int, data: memoryview, limit: int) -> memoryview:
    """lz4 frames and zstd: into a buffer that doubles from a guess, never past ``limit``.

    A full buffer stops the decompressor at once, so a bomb costs at most about ``limit``
    bytes and twice the work of expanding ``limit`` bytes. A declared content size is the
    first guess, and one above ``limit`` is refused before anything is expanded.
    """
    module = cramjam.zstd if codec == ZSTD else cramjam.lz4
    declared = _frame_content_size(codec, data)
    if declared is not None and declared > limit:
        raise _TooBig
    size = min(limit, declared if declared is not None else max(_MIN_GUESS, 4 * len(data)))
    while True:
        out = bytearray(size)
        try:
            written = module.decompress_into(data, out)
        except cramjam.DecompressionError as exc:
            if _BUFFER_FULL not in str(exc):
                raise _Corrupt(_short(exc)) from None
        else:
            return memoryview(out)[:written]
        del out  # before the bigger one exists
        if size >= limit:
            raise _TooBig
        size = min(limit, max(2 * size, _MIN_GUESS))


def _unsnappy(data: memoryview, limit: int) -> bytearray:
    """Raw snappy, or the xerial framing of raw snappy chunks the Java client writes.

    Raw snappy starts with its decompressed length; the sum of those lengths is checked
    against ``limit`` before anything is expanded.
    """
    chunks: list[tuple[memoryview, int]] = []
    total = 0

    def add(chunk: memoryview) -> None:
        nonlocal total
        size = cramjam.snappy.decompress_raw_len(chunk)
        total += size
        if total > limit:
            raise _TooBig
        chunks.append((chunk, size))

    if data[:8] != _XERIAL_MAGIC:
        add(data)
    else:
        if len(data) < _XERIAL_HEADER:
            raise _Corrupt("xerial header is truncated")
        position = _XERIAL_HEADER
        while position < len(data):
            if position + 4 > len(data):
                raise _Corrupt("xerial chunk length is truncated")
            size = int.from_bytes(data[position : position + 4], "big", signed=True)
            position += 4
            if size < 0 or size > len(data) - position:
                raise _Corrupt(f"xerial chunk of {size} bytes runs past the body")
            add(data[position : position + size])
            position += size
    out = bytearray(total)
    view, position = memoryview(out), 0
    for chunk, size in chunks:
        if cramjam.snappy.decompress_raw_into(chunk, view[position : position + size]) != size:
            raise _Corrupt("a chunk is shorter than its declared length")
        position += size
    return out


def _decompress(codec: int, data: bytes | bytearray | memoryview,
                limit: int) -> bytes | bytearray | memoryview:
    view = memoryview(data).cast("B") if not isinstance(data, bytes | bytearray) else \
        memoryview(data)
    name = CODEC_NAMES.get(codec, str(codec))
    try:
        if codec == NONE:
            if len(view) > limit:
                raise _TooBig
            return data
        if codec == GZIP:
            return _inflate(view, limit)
        if codec == SNAPPY:
            return _unsnappy(view, limit)
        if codec in (LZ4, ZSTD):
            return _decompress_into(codec, view, limit)
    except _TooBig:
        raise BatchRejected(
            ErrorCode.corrupt_message,
            f"{name} record batch decompresses to more than {limit} bytes") from None
    except _Corrupt as exc:
        raise BatchRejected(ErrorCode.corrupt_message,
                            f"{name} record batch body does not decompress: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # each codec library raises its own errors on bad input
        raise BatchRejected(
            ErrorCode.corrupt_message,
            f"{name} record batch body does not decompress: {_short(exc)}") from None
    raise BatchRejected(ErrorCode.unsupported_compression_type,
                        f"unknown compression codec {codec}")


def decompress_bounded(codec: int, data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """The records body compressed with ``codec`` (0-4), if it expands to at most ``limit``
    bytes; else ``BatchRejected`` (CORRUPT_MESSAGE, or UNSUPPORTED_COMPRESSION_TYPE for an
    unknown codec). Memory stays near ``limit`` however far the input would expand."""
    return bytes(_decompress(codec, data, limit))


# --- the batch ---------------------------------------------------------------------------------


def check_batch(batch: bytes | bytearray | memoryview, header: recordbatch.BatchHeader, *,
                compacted: bool = False, allow_control: bool = False,
                max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED) -> int:
    """Raise :class:`BatchRejected` if Kafka would refuse this produced batch; else return
    the largest record timestamp (CreateTime), which Kafka stores as the batch's maxTimestamp.

    ``batch`` is one whole batch (``header.size`` bytes, header included) whose header the
    caller parsed with ``recordbatch.parse_header`` and whose CRC it checked. ``compacted``:
    the topic is compacted, so every record needs a key. ``allow_control``: the batch comes
    from the broker itself (transaction markers), not a client.
    """
    attributes = header.attributes
    codec = attributes & recordbatch.COMPRESSION_MASK
    if codec not in CODEC_NAMES:  # Kafka's CompressionType.forId, before LogValidator runs
        raise BatchRejected(ErrorCode.unsupported_compression_type,
                            f"unknown compression codec {codec}")
    invalid = ErrorCode.invalid_record
    count = header.record_count
    from_offsets = header.last_offset_delta + 1
    if from_offsets <= 0:
        raise BatchRejected(invalid, f"Batch has an invalid offset range: "
                                     f"[{header.base_offset}, {header.last_offset}]")
    if count <= 0:
        raise BatchRejected(invalid, f"Invalid reported count for record batch: {count}")
    if from_offsets != count:
        raise BatchRejected(invalid, f"Inconsistent batch offset range [{header.base_offset}, "
                                     f"{header.last_offset}] and count of records {count}")
    if attributes & CONTROL_BIT and not allow_control:
        raise BatchRejected(invalid, "Clients are not allowed to write control records")
    if header.producer_id >= 0 and header.base_sequence < 0:
        raise BatchRejected(invalid, f"Invalid sequence number {header.base_sequence} in "
                                     f"record batch with producerId {header.producer_id}")
    if attributes & TRANSACTIONAL_BIT and header.producer_id < 0:
        raise BatchRejected(invalid, "Transactional record batch has no producer id "
                                     f"(producerId {header.producer_id})")
    if len(batch) != header.size:
        raise BatchRejected(ErrorCode.corrupt_message,
                            f"record batch is {len(batch)} bytes, its header says {header.size}")
    body = memoryview(batch)[recordbatch.HEADER_SIZE :]
    if codec != NONE:
        body = _decompress(codec, body, max_decompressed_bytes)
    return _wrap64(header.base_timestamp + check_records(body, count, compacted=compacted))


def _wrap64(value: int) -> int:
    """Java long addition: wrap into int64."""
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)
