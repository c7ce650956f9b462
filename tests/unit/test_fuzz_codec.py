"""Any bytes in a well-sized frame give kelp's Kafka codec a Request or a ProtocolError.

The codec runs in a child process: kio's native decoder can abort the whole process (a
compact-array count of 0xffffffff once made it reserve 34 GB), and an abort must show up as
this test failing with the input printed, not as pytest vanishing. Hypothesis runs here, in
the parent, and hands each input to a long-lived spawned worker over a pipe; a worker that
dies or hangs fails the example and is replaced for the next one.

Inputs are mostly *near-valid*: every (API, version) kelp serves, synthesized by the fuzzer
and then edited at random positions with the values decoders trust too much (huge counts,
-1 lengths, overlong varints), since uniformly random bytes rarely get past the header.
"""

from __future__ import annotations

import multiprocessing
import struct
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.kafka import apis
from kelp.fuzz.mutate import Mutator
from kelp.fuzz.synth import synthesize

MAX_FRAME = 100 * 1024 * 1024  # the gateway's default --max-request-bytes
ANSWER_TIMEOUT_S = 10.0
SEEDS = [synthesize(api, version) for api, (low, high) in sorted(apis.SUPPORTED.items())
         for version in range(low, high + 1)]
NASTY = [b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\xff\xff",
         b"\x80\x80\x80\x80\x80\x00", b"\x00", b"\x00\x00\x00\x00", b"\x01", b"\x80"]


def _decode_forever(conn: Connection) -> None:
    """The worker: decode each payload received; answer "request", "protocol error" or what
    else happened."""
    from gateway.kafka.connection import KafkaConnection, ProtocolError, Request

    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        try:
            codec = KafkaConnection(MAX_FRAME)
            codec.receive_data(struct.pack(">i", len(payload)) + payload)
            result = codec.next_request()
            answer = "request" if isinstance(result, Request) else f"returned {result!r}"
        except ProtocolError:
            answer = "protocol error"
        except BaseException as exc:
            answer = f"raised {type(exc).__name__}: {exc}"
        conn.send(answer)


class Worker:
    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self._context.Pipe()
        self.process = self._context.Process(target=_decode_forever, args=(child,),
                                             daemon=True)
        self.process.start()
        child.close()

    def decode(self, payload: bytes) -> str:
        """The worker's answer, or what happened to it (it is replaced if it died or hung)."""
        try:
            self.conn.send_bytes(payload)
            if self.conn.poll(ANSWER_TIMEOUT_S):
                return self.conn.recv()
            problem = f"no answer in {ANSWER_TIMEOUT_S}s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            problem = "the worker died"
        self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        problem += f" (exit code {self.process.exitcode})"
        self._start()
        return problem

    def close(self) -> None:
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    running = Worker()
    try:
        yield running
    finally:
        running.close()


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    payload = bytearray(draw(st.sampled_from(SEEDS)).payload)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(8, len(payload)))  # past api key, version, correlation id
        patch = draw(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=6))
        if draw(st.booleans()):
            payload[at : at + len(patch)] = patch  # overwrite
        else:
            payload[at:at] = patch  # insert
    if draw(st.integers(0, 9)) == 0:
        payload = payload[: draw(st.integers(0, len(payload)))]
    return bytes(payload)


@st.composite
def header_then_noise(draw: st.DrawFn) -> bytes:
    api = draw(st.sampled_from(sorted(apis.SUPPORTED)))
    low, high = apis.SUPPORTED[api]
    version = draw(st.integers(low, high))
    return struct.pack(">hhih", api, version, 1, 1) + b"x" + draw(st.binary(max_size=64))


MUTATOR = Mutator(SEEDS, 0)


@st.composite
def fuzzer_mutant(draw: st.DrawFn) -> bytes:
    """What ``just fuzz`` sends (one of its structure-aware mutations), seeded by hypothesis."""
    MUTATOR.rng.seed(draw(st.integers(0, 2**32)))
    return MUTATOR.next().payload


ANY_FRAME = near_valid() | header_then_noise() | fuzzer_mutant() | st.binary(max_size=128)


@settings(max_examples=3000, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=ANY_FRAME)
def test_any_frame_gives_a_request_or_a_protocol_error(worker: Worker, payload: bytes) -> None:
    answer = worker.decode(payload)
    assert answer in ("request", "protocol error"), (
        f"kelp's codec {answer} on a {len(payload)}-byte frame:\n{payload.hex()}")


def test_metadata_with_a_huge_compact_count_is_refused(worker: Worker) -> None:
    """The input that used to abort the gateway: Metadata v12, topics count 0xffffffff."""
    header = struct.pack(">hhih", apis.ApiKey.METADATA, 12, 1, 1) + b"x" + b"\x00"
    assert worker.decode(header + b"\xff\xff\xff\xff\x0f\x01\x00\x00") == "protocol error"


def test_every_synthesized_seed_decodes(worker: Worker) -> None:
    """The fuzzer's seeds are valid requests: mutations start from something kelp accepts."""
    for seed in SEEDS:
        assert worker.decode(seed.payload) == "request", (seed.api_key, seed.version)


def test_mutations_are_reproducible() -> None:
    def frames(seed: int) -> list[bytes]:
        mutator = Mutator(SEEDS, seed)
        return [mutator.next().frame() for _ in range(500)]

    assert frames(7) == frames(7)
    assert frames(7) != frames(8)
