"""The read socket's frames (rdma.wire): what is encoded decodes to the same request or reply,
split however the stream likes, and anything else — truncated, padded, lying about a length,
random — is a WireError, never another exception or a wrong object."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp.rpc.sidecar import v1 as sidecar_pb
from rdma import wire

HANDLES = st.lists(st.integers(1, 2**63 - 1), max_size=40)
FILE_IDS = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=wire.MAX_FILE_ID)
LOAN_READS = st.builds(
    lambda file_id, offset, size, request_id, release: sidecar_pb.ReadRequest(
        file_id=file_id, offset=offset, size=size, zero_copy=True, request_id=request_id,
        release=release),
    FILE_IDS, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    HANDLES)
# A read whose bytes come back in the reply (COPY): at most MAX_COPY of them.
COPY_READS = st.builds(
    lambda file_id, offset, size, request_id, release: sidecar_pb.ReadRequest(
        file_id=file_id, offset=offset, size=size, zero_copy=False, request_id=request_id,
        release=release),
    FILE_IDS, st.integers(0, 2**64 - 1), st.integers(1, wire.MAX_COPY),
    st.integers(0, 2**64 - 1), HANDLES)
READS = LOAN_READS | COPY_READS


@st.composite
def replies(draw: st.DrawFn) -> sidecar_pb.ReadReply:
    shared = draw(st.none() | st.builds(
        lambda offset, length, handle: sidecar_pb.SharedBuffer(
            path="/dev/shm/kelp-pool", offset=offset, length=length, handle=handle),
        st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(1, 2**63 - 1)))
    # The bytes of a copied read, or a loan, or neither (a refusal): never both.
    data = draw(st.binary(min_size=1, max_size=300)) if shared is None and draw(
        st.booleans()) else b""
    return sidecar_pb.ReadReply(data=data,
        status=draw(st.sampled_from([200, 400, 403, 404, 416, 502, 503, 504])),
        error=draw(st.text(max_size=200)), shared=shared,
        transport=draw(st.sampled_from(["", "ucx", "http"])),
        request_id=draw(st.integers(0, 2**64 - 1)), release_refused=draw(HANDLES))


def _bodies(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Feed ``stream`` in pieces cut at ``cuts``; the whole bodies that come out."""
    frames = wire.FrameBuffer()
    bodies = []
    last = 0
    for cut in sorted({*cuts, len(stream)}):
        frames.feed(stream[last:cut])
        last = cut
        while (body := frames.next()) is not None:
            bodies.append(body)
    assert frames.buffered == 0
    return bodies


@given(st.lists(READS, min_size=1, max_size=5), st.lists(st.integers(0, 4000), max_size=8))
def test_reads_round_trip_however_the_stream_is_cut(requests: list[sidecar_pb.ReadRequest],
                                                    cuts: list[int]) -> None:
    stream = b"".join(wire.encode_read(r, copy_max=wire.MAX_COPY) for r in requests)
    decoded = [wire.decode_read(b) for b in _bodies(stream, [c % len(stream) for c in cuts])]
    assert decoded == requests


@given(replies())
def test_replies_round_trip(reply: sidecar_pb.ReadReply) -> None:
    body = _bodies(wire.encode_reply(reply), [])[0]
    decoded = wire.decode_reply(body, "/dev/shm/kelp-pool")
    assert decoded == reply


def test_hello_round_trips_and_a_newer_version_is_refused() -> None:
    body = _bodies(wire.encode_hello(4, "/dev/shm/kelp-pool-1"), [])[0]
    hello = wire.decode_hello(body)
    assert (hello.version, hello.client_buffers, hello.pool_path) == (
        wire.VERSION, 4, "/dev/shm/kelp-pool-1")
    newer = bytearray(body)
    struct.pack_into("<H", newer, 1, wire.VERSION + 1)
    with pytest.raises(wire.WireError, match="version"):
        wire.decode_hello(bytes(newer))


@given(READS, st.data())
def test_a_truncated_or_padded_read_is_refused(request: sidecar_pb.ReadRequest,
                                               data: st.DataObject) -> None:
    body = wire.encode_read(request)[4:]
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(wire.WireError):
        wire.decode_read(body[:cut])
    with pytest.raises(wire.WireError):
        wire.decode_read(body + data.draw(st.binary(min_size=1, max_size=9)))


@given(st.binary(max_size=300))
def test_random_bodies_are_refused_or_decoded_never_crash(body: bytes) -> None:
    for decode in (wire.decode_read, lambda b: wire.decode_reply(b, "/p"), wire.decode_hello):
        with contextlib.suppress(wire.WireError):
            decode(body)


@pytest.mark.parametrize("length", [0, wire.MAX_FRAME + 1, 0xFFFFFFFF])
def test_frame_lengths_out_of_bounds_are_refused_before_buffering(length: int) -> None:
    frames = wire.FrameBuffer()
    frames.feed(struct.pack("<I", length) + b"x" * 16)
    with pytest.raises(wire.WireError, match="frame of"):
        frames.next()


def test_what_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_read(sidecar_pb.ReadRequest(file_id="x" * 256, size=1))
    with pytest.raises(wire.WireError):
        wire.encode_read(sidecar_pb.ReadRequest(file_id="1,ab", size=2**32))
    with pytest.raises(wire.WireError):
        wire.encode_read(sidecar_pb.ReadRequest(file_id="1,ab", size=1,
                                                release=list(range(1, wire.MAX_RELEASES + 2))))
    with pytest.raises(UnicodeEncodeError):
        wire.encode_read(sidecar_pb.ReadRequest(file_id="1,ü", size=1))


def _kind(request: sidecar_pb.ReadRequest, copy_max: int) -> int:
    return wire.encode_read(request, copy_max=copy_max)[4]


def test_a_copy_is_sent_only_within_what_the_sidecar_announced() -> None:
    small = sidecar_pb.ReadRequest(file_id="1,ab", size=4096)
    assert _kind(small, copy_max=wire.MAX_COPY) == wire.COPY
    # An older sidecar announces nothing and knows READ only: whatever the request says, it
    # gets READ frames (a copy asked of it is lent instead); so do reads past the limit,
    # loans, and bare releases.
    assert _kind(small, copy_max=0) == wire.READ
    assert _kind(small, copy_max=4095) == wire.READ
    big = sidecar_pb.ReadRequest(file_id="1,ab", size=wire.MAX_COPY + 1)
    assert _kind(big, copy_max=2 * wire.MAX_COPY) == wire.READ
    lent = sidecar_pb.ReadRequest(file_id="1,ab", size=4096, zero_copy=True)
    assert _kind(lent, copy_max=wire.MAX_COPY) == wire.READ
    release = sidecar_pb.ReadRequest(release=[5])
    assert _kind(release, copy_max=wire.MAX_COPY) == wire.READ
    assert wire.decode_read(wire.encode_read(release, copy_max=wire.MAX_COPY)[4:]).release == [5]


def test_copied_reads_and_data_replies_stay_within_max_copy() -> None:
    body = bytearray(wire.encode_read(sidecar_pb.ReadRequest(file_id="1,ab", size=1),
                                      copy_max=wire.MAX_COPY)[4:])
    assert body[0] == wire.COPY
    for size in (0, wire.MAX_COPY + 1):
        struct.pack_into("<I", body, 17, size)
        with pytest.raises(wire.WireError, match="copied read"):
            wire.decode_read(bytes(body))
    with pytest.raises(wire.WireError):
        wire.encode_reply(sidecar_pb.ReadReply(status=200, data=b"x" * (wire.MAX_COPY + 1)))
    with pytest.raises(wire.WireError):  # bytes and a loan: which is the answer?
        wire.encode_reply(sidecar_pb.ReadReply(status=200, data=b"x", shared=(
            sidecar_pb.SharedBuffer(path="/p", offset=0, length=1, handle=3))))


# Where a REPLY's handle, pool offset and length sit in its body ("<BQhBQQIH").
HANDLE_AT, POOL_OFFSET_AT, LENGTH_AT = 12, 20, 28


@pytest.mark.parametrize("field, value", [
    (HANDLE_AT, 1), (POOL_OFFSET_AT, 8), (LENGTH_AT, 0), (LENGTH_AT, 1 << 31), (LENGTH_AT, 99)],
    ids=["with-a-handle", "with-a-pool-offset", "no-bytes", "over-max-copy", "past-the-frame"])
def test_a_data_reply_that_lies_is_refused(field: int, value: int) -> None:
    body = bytearray(wire.encode_reply(sidecar_pb.ReadReply(status=200, data=b"abcd"))[4:])
    assert body[0] == wire.DATA
    assert wire.decode_reply(bytes(body), "/p").data == b"abcd"
    struct.pack_into("<I" if field == LENGTH_AT else "<Q", body, field, value)
    with pytest.raises(wire.WireError, match="data reply"):
        wire.decode_reply(bytes(body), "/p")
