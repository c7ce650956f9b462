"""kelp.batchcheck fuzzed: the C and Python walkers agree, nothing but BatchRejected escapes."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kio.records.readers import read_batch
from kio.schema.errors import ErrorCode

from kelp import batchcheck, recordbatch
from tests.unit.batchcheck_helpers import (
    COMPRESSED,
    CORRUPT,
    INVALID,
    aiokafka_batch,
    check,
    finish,
    header_lists,
    pair_lists,
    with_body,
)


def _compare_walkers(body: bytes, count: int, compacted: bool) -> batchcheck.Walk:
    python = batchcheck.walk_records(body, count, compacted=compacted, native=False)
    if batchcheck.NATIVE:
        native = batchcheck.walk_records(body, count, compacted=compacted, native=True)
        assert native == python
    message = batchcheck.describe_walk(python, count)
    assert (message is None) == (python[0] == batchcheck.OK)
    event(f"walk status {python[0]}")
    return python


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(0, 1000), st.booleans())
def test_arbitrary_bytes(body, count, compacted):
    _compare_walkers(body, count, compacted)
    try:
        batchcheck.check_records(body, count, compacted=compacted)
    except batchcheck.BatchRejected as error:
        assert error.error == INVALID


mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 6)),
), min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op in ops:
        if not out:
            break
        position = op[1] % len(out)
        if op[0] == "flip":
            out[position] ^= 1 << op[2]
        elif op[0] == "set":
            out[position] = op[2]
        elif op[0] == "truncate":
            del out[position:]
        elif op[0] == "insert":
            out[position:position] = op[2]
        else:
            del out[position : position + op[2]]
    return bytes(out)


def _kio_decodes(batch: bytes) -> list | None:
    """kio's reading of a batch, or None when kio trips on a timestamp Kafka does not check."""
    batch = bytearray(batch)
    struct.pack_into(">q", batch, 35, 2**62)  # kio checks record timestamps against this
    try:
        decoded, _size = read_batch(finish(batch), 0)
    except (OverflowError, OSError, ValueError) as exc:
        if any(word in str(exc) for word in ("year", "timestamp", "range", "too large")):
            return None
        raise
    return list(decoded.records)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pair_lists, header_lists, mutations, st.booleans())
def test_mutated_uncompressed_bodies(pairs, headers, ops, compacted):
    batch = aiokafka_batch(pairs, headers=headers)
    body = mutate(batch[recordbatch.HEADER_SIZE :], ops)
    walk = _compare_walkers(body, len(pairs), compacted)
    mutated = with_body(batch, body)
    try:
        check(mutated, compacted=compacted)
    except batchcheck.BatchRejected as error:
        assert error.error == INVALID
        assert (error.record_errors != ()) == (walk[0] == batchcheck.OK)
        return
    # Accepted: kio, an independent decoder, reads the same number of records from it.
    decoded = _kio_decodes(mutated)
    if decoded is not None:
        assert len(decoded) == len(pairs)
        assert [r.offset for r in decoded] == list(range(len(pairs)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(pair_lists, st.sampled_from(COMPRESSED), mutations, st.booleans())
def test_mutated_whole_batches(pairs, codec, ops, compacted):
    batch = aiokafka_batch([(k, (v or b"") * 3) for k, v in pairs], codec=codec)
    mutated = mutate(batch, ops)
    try:
        header = recordbatch.parse_header(mutated)
    except recordbatch.CorruptBatch:
        return  # recordbatch's business
    try:
        batchcheck.check_batch(mutated, header, compacted=compacted,
                               max_decompressed_bytes=64 * 1024)
    except batchcheck.BatchRejected as error:
        assert error.error in (INVALID, CORRUPT, ErrorCode.unsupported_compression_type)
