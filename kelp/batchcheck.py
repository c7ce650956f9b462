"""What Kafka's LogValidator checks in a produced v2 record batch, fast and bounded (sans-IO).

``recordbatch`` checks what a reader needs to frame and trust the bytes (magic, length, CRC);
this module checks what a broker must refuse before it appends a client's batch, as Kafka's
``LogValidator.validateBatch`` and ``DefaultRecord.readFrom`` do:

- the batch header: record count >= 1 and equal to ``lastOffsetDelta + 1``, no control batch
  from a client, producer fields that make sense (an idempotent batch has a sequence, a
  transactional one has a producer id), a known compression codec;
- the body: it decompresses (``decompress``), to at most ``max_decompressed_bytes`` (zip
  bombs are refused without expanding them), and it holds exactly ``recordCount``
  well-formed records whose inner offsets run 0, 1, 2, ... and nothing after them;
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

from collections.abc import Callable

from kio.schema.errors import ErrorCode

from kelp import decompress, recordbatch

try:
    from kelp import _recordwalk
except ImportError:  # built without a C compiler: the pure-Python walker below takes over
    _recordwalk = None

#: True when the C record walker is active.
NATIVE: bool = _recordwalk is not None

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


# --- the batch ---------------------------------------------------------------------------------


def check_batch(batch: bytes | bytearray | memoryview, header: recordbatch.BatchHeader, *,
                compacted: bool = False, allow_control: bool = False,
                max_decompressed_bytes: int = decompress.DEFAULT_MAX_DECOMPRESSED) -> int:
    """Raise :class:`BatchRejected` if Kafka would refuse this produced batch; else return
    the largest record timestamp (CreateTime), which Kafka stores as the batch's maxTimestamp.

    ``batch`` is one whole batch (``header.size`` bytes, header included) whose header the
    caller parsed with ``recordbatch.parse_header`` and whose CRC it checked. ``compacted``:
    the topic is compacted, so every record needs a key. ``allow_control``: the batch comes
    from the broker itself (transaction markers), not a client.
    """
    attributes = header.attributes
    codec = attributes & recordbatch.COMPRESSION_MASK
    if codec not in decompress.CODEC_NAMES:  # Kafka's CompressionType.forId, first
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
    if attributes & recordbatch.CONTROL_BIT and not allow_control:
        raise BatchRejected(invalid, "Clients are not allowed to write control records")
    if header.producer_id >= 0 and header.base_sequence < 0:
        raise BatchRejected(invalid, f"Invalid sequence number {header.base_sequence} in "
                                     f"record batch with producerId {header.producer_id}")
    if attributes & recordbatch.TRANSACTIONAL_BIT and header.producer_id < 0:
        raise BatchRejected(invalid, "Transactional record batch has no producer id "
                                     f"(producerId {header.producer_id})")
    if len(batch) != header.size:
        raise BatchRejected(ErrorCode.corrupt_message,
                            f"record batch is {len(batch)} bytes, its header says {header.size}")
    body = memoryview(batch)[recordbatch.HEADER_SIZE :]
    if codec != decompress.NONE:
        try:
            body = decompress.decompress_view(codec, body, max_decompressed_bytes)
        except decompress.Undecompressible as exc:
            raise BatchRejected(exc.error, exc.message) from None
    return _wrap64(header.base_timestamp + check_records(body, count, compacted=compacted))


def _wrap64(value: int) -> int:
    """Java long addition: wrap into int64."""
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)
