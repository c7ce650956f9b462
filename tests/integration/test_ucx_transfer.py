"""UCX between two processes: an exporter (``python -m rdma.ucx._peer``) registers an mmap'd
temp file and listens on 127.0.0.1; the test process connects and reads it one-sidedly.

What must hold: GETs of any range from 1 B to 16 MiB are byte-exact; the transport that carries
them is identifiable (cma by default, tcp when forced — so a silent fallback cannot pass for
the fast path); a dead peer surfaces as `PeerError`, never a hang; a cancelled GET keeps its
buffer until UCX is done; and the exporter outlives a reader that dies.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from rdma import ucx

try:
    ucx.load()
except ucx.UcxUnavailable:  # pragma: no cover - libucx-cu12 missing
    pytest.skip("libucp not loadable (libucx-cu12)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0
MiB = 1 << 20
REGION_SIZE = 24 * MiB


@dataclass
class Exporter:
    proc: subprocess.Popen[str]
    info: dict[str, object]
    content: bytes  # the exported bytes: the whole file

    @property
    def port(self) -> int:
        return int(self.info["port"])  # type: ignore[call-overload]

    @property
    def descriptor(self) -> bytes:
        return bytes.fromhex(str(self.info["descriptor"]))


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("ucx") / "00000000000000000000.log"
    content = os.urandom(REGION_SIZE)
    path.write_bytes(content)
    return path, content


@contextmanager
def exporter(
    segment: tuple[Path, bytes], *, tls: str | None = None, error_mode: str = "none"
) -> Iterator[Exporter]:
    path, content = segment
    env = dict(os.environ)
    if tls:
        env["UCX_TLS"] = tls
    cmd = [sys.executable, "-m", "rdma.ucx._peer", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--error-mode", error_mode],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line, f"exporter did not start (exit code {proc.poll()})"
        yield Exporter(proc, json.loads(line), content)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: the exporter's cue to exit cleanly
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def config_for(tls: str | None) -> dict[str, str]:
    return {"TLS": tls} if tls else {}


async def connect(
    worker: ucx.Worker, peer: Exporter, error_mode: str = "none"
) -> tuple[ucx.Endpoint, ucx.RemoteKey]:
    with trio.fail_after(DEADLINE):
        endpoint = await worker.connect("127.0.0.1", peer.port, error_mode=error_mode)
    return endpoint, endpoint.import_key(peer.descriptor)


async def read(endpoint: ucx.Endpoint, key: ucx.RemoteKey, offset: int, size: int) -> bytes:
    dest = bytearray(size)
    await endpoint.get(key, offset, dest)
    return bytes(dest)


async def wait_closed(endpoint: ucx.Endpoint) -> None:
    while not endpoint.closed:
        await trio.sleep(0.01)


def ranges(total: int, rng: random.Random) -> list[tuple[int, int]]:
    """Edge sizes, then log-uniform random ones from 1 B to 16 MiB, at random offsets."""
    sizes = [1, 2, 4095, 4096, 4097, 65536, MiB, 16 * MiB]
    sizes += [max(1, int(2 ** rng.uniform(0, 24))) for _ in range(24)]
    out = [(0, 1), (total - 1, 1), (total - 16 * MiB, 16 * MiB)]
    out += [(rng.randrange(0, total - size + 1), size) for size in sizes]
    return out


async def test_random_gets_are_byte_exact(segment: tuple[Path, bytes]) -> None:
    with exporter(segment) as peer:
        assert peer.info["length"] == REGION_SIZE
        async with ucx.open_worker() as worker:
            endpoint, key = await connect(worker, peer)
            local_buffer = bytearray(16 * MiB)
            local = worker.register(local_buffer)
            rng = random.Random(2024)
            with trio.fail_after(60):
                for i, (offset, size) in enumerate(ranges(REGION_SIZE, rng)):
                    if i % 2:  # alternate a fresh bytearray and the registered buffer
                        got = await read(endpoint, key, offset, size)
                    else:
                        dest = local.view[:size]
                        await endpoint.get(key, offset, dest, local=local)
                        got = bytes(dest)
                        dest.release()
                    assert got == peer.content[offset : offset + size], (offset, size)
            with pytest.raises(ValueError):
                await read(endpoint, key, REGION_SIZE - 1, 2)


@pytest.mark.parametrize(
    ("tls", "error_mode", "expected"),
    [
        (None, "none", "cma/memory"),
        ("tcp", "none", "tcp/lo"),
        (None, "peer", "tcp/lo"),  # DESIGN §3.4: error mode PEER drops shared memory and cma
    ],
    ids=["default-cma", "forced-tcp", "peer-mode-tcp"],
)
async def test_transport_carrying_the_gets_is_identified(
    segment: tuple[Path, bytes], tls: str | None, error_mode: str, expected: str
) -> None:
    with exporter(segment, tls=tls, error_mode=error_mode) as peer:
        async with ucx.open_worker(config_for(tls)) as worker:
            endpoint, key = await connect(worker, peer, error_mode)
            with trio.fail_after(DEADLINE):
                got = await read(endpoint, key, 12345, 2 * MiB)
            assert got == peer.content[12345 : 12345 + 2 * MiB]
            assert endpoint.rma_transports() == [expected]
            assert "rma_bw" in endpoint.info()


@pytest.mark.parametrize("tls", [None, "tcp"], ids=["cma", "tcp"])
async def test_peer_death_raises_peer_error_without_hanging(
    segment: tuple[Path, bytes], tls: str | None
) -> None:
    with exporter(segment, tls=tls) as peer:
        async with ucx.open_worker(config_for(tls)) as worker:
            endpoint, key = await connect(worker, peer)
            with trio.fail_after(DEADLINE):
                assert await read(endpoint, key, 0, 4096) == peer.content[:4096]
            outcomes: list[str] = []

            async def reader(seed: int) -> None:
                rng = random.Random(seed)
                try:
                    while True:
                        offset = rng.randrange(0, REGION_SIZE - 4 * MiB)
                        got = await read(endpoint, key, offset, 4 * MiB)
                        assert got == peer.content[offset : offset + 4 * MiB]
                except ucx.PeerError:
                    outcomes.append("peer error")

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    for seed in range(4):
                        nursery.start_soon(reader, seed)
                    await trio.sleep(0.2)
                    peer.proc.kill()  # SIGKILL: no goodbye, mid-transfer
                    peer.proc.wait()
                await wait_closed(endpoint)  # the worker force-closes failed endpoints
            assert outcomes == ["peer error"] * 4
            assert isinstance(endpoint.error, ucx.PeerError)
            with pytest.raises(ucx.PeerError):
                await read(endpoint, key, 0, 1)


async def test_cancelled_get_keeps_its_buffer_until_ucx_completes_it(
    segment: tuple[Path, bytes],
) -> None:
    """Over tcp a GET needs the peer's progress; with the peer stopped it cannot finish."""
    with exporter(segment, tls="tcp") as peer:
        async with ucx.open_worker({"TLS": "tcp"}) as worker:
            endpoint, key = await connect(worker, peer)
            dest = bytearray(4 * MiB)
            os.kill(peer.proc.pid, signal.SIGSTOP)
            try:
                with trio.move_on_after(0.3) as scope:
                    await endpoint.get(key, MiB, dest)
                assert scope.cancelled_caught
                assert worker.pending == 1  # abandoned by us, still owned by UCX
            finally:
                os.kill(peer.proc.pid, signal.SIGCONT)
            with trio.fail_after(DEADLINE):
                while worker.pending:
                    await trio.sleep(0.01)
            assert dest == peer.content[MiB : 5 * MiB]  # the abandoned GET landed intact
            with trio.fail_after(DEADLINE):
                assert await read(endpoint, key, 7, 100) == peer.content[7:107]


READER = """
    import sys, trio
    from rdma.ucx import open_worker

    async def main():
        async with open_worker() as worker:
            endpoint = await worker.connect("127.0.0.1", int(sys.argv[1]))
            key = endpoint.import_key(bytes.fromhex(sys.argv[2]))
            data = bytearray(1 << 20)
            await endpoint.get(key, 0, data)
            print(data[:16].hex(), flush=True)
            await trio.sleep(60)  # until killed

    trio.run(main)
"""


async def test_exporter_survives_a_reader_that_dies(segment: tuple[Path, bytes]) -> None:
    """The in-test worker exports; reader processes connect, read, and get SIGKILLed."""
    path, content = segment
    async with ucx.open_worker() as worker:
        with path.open("rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        region = worker.register(mapped)
        listener = worker.listen("127.0.0.1", 0)
        for _ in range(2):
            args = [str(listener.address[1]), region.export().hex()]
            reader = await trio.lowlevel.open_process(
                [sys.executable, "-c", textwrap.dedent(READER), *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )
            try:
                with trio.fail_after(DEADLINE):
                    accepted = await listener.accept()
                    assert reader.stdout is not None
                    line = await reader.stdout.receive_some()
                    assert line.strip() == content[:16].hex().encode()
                    reader.kill()
                    await reader.wait()
                    await wait_closed(accepted)
                assert isinstance(accepted.error, ucx.PeerError)
            finally:
                if reader.returncode is None:
                    reader.kill()
                    await reader.wait()
