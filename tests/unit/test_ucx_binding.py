"""The libucp binding against the real library: loading modes, layout checks, one worker talking
to itself over loopback (listener, GET, bounds), and the guard rails.

Cross-process transfers, transport proof and peer death are in
``tests/integration/test_ucx_transfer.py``. Tests that need a fresh process (another binding
mode, fork) run a short script with ``subprocess``; UCX state is per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from rdma import ucx
from rdma.ucx import _binding, _cdef, _layout
from rdma.ucx.endpoint import decode_sockaddr, encode_sockaddr, parse_lanes
from rdma.ucx.memory import Descriptor
from rdma.ucx.worker import _tls_allows_tcp

ROOT = Path(__file__).resolve().parents[2]

try:
    BINDING: _binding.Binding | None = _binding.load()
except _binding.UcxUnavailable:  # pragma: no cover - libucx-cu12 missing
    BINDING = None

pytestmark = pytest.mark.skipif(BINDING is None, reason="libucp not loadable (libucx-cu12)")

DEADLINE = 10.0


def run_script(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


LOOPBACK_SCRIPT = """
    import json, os, trio
    from rdma.ucx import open_worker

    async def main():
        async with open_worker() as worker:
            data = bytearray(os.urandom(1 << 16))
            region = worker.register(data)
            listener = worker.listen("127.0.0.1", 0)
            with trio.fail_after(10):
                ep = await worker.connect("127.0.0.1", listener.address[1])
                key = ep.import_key(region.export())
                got = bytearray(5000)
                await ep.get(key, 100, got)
            print(json.dumps({"mode": worker.binding.mode,
                              "version": worker.binding.version_string,
                              "origin": worker.binding.install.origin,
                              "ok": got == data[100:5100],
                              "rma": ep.rma_transports()}))

    trio.run(main)
"""


# -- loading ----------------------------------------------------------------------------------


def test_loads_in_api_mode_with_verified_constants() -> None:
    assert BINDING is not None
    if BINDING.mode != "api":
        pytest.skip("ABI mode in use")
    assert BINDING.version >= (*_cdef.MIN_VERSION, 0)
    for name, value in _cdef.CONSTANTS.items():
        assert getattr(BINDING.lib, name) == value, name


def test_recorded_layout_matches_compiled_headers() -> None:
    """`_layout.LAYOUT` (what ABI mode trusts) must equal what the compiler saw."""
    assert BINDING is not None
    if BINDING.mode != "api":
        pytest.skip("needs the compiled module")
    assert _binding.layout_of(BINDING.ffi) == _layout.LAYOUT


def test_abi_layout_check_accepts_declarations_and_rejects_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_cdef.abi_cdef())
    _binding._check_layout(ffi)  # the hand-written ABI declarations match the headers
    drifted = json.loads(json.dumps(_layout.LAYOUT))
    drifted["ucp_request_param_t"]["fields"]["memh"] += 8
    monkeypatch.setattr(_layout, "LAYOUT", drifted)
    with pytest.raises(_binding.UcxUnavailable, match="ucp_request_param_t"):
        _binding._check_layout(ffi)


def test_abi_mode_end_to_end() -> None:
    result = run_script(LOOPBACK_SCRIPT, KELP_UCX_MODE="abi")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "abi" and report["ok"]


def test_falls_back_to_abi_mode_without_a_compiler(tmp_path: Path) -> None:
    result = run_script(
        LOOPBACK_SCRIPT,
        CC=str(tmp_path / "no-such-cc"),
        KELP_UCX_BUILD_DIR=str(tmp_path),
        KELP_UCX_MODE="auto",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mode"] == "abi"
    assert "trying ABI mode" in result.stderr


@pytest.mark.skipif(
    not any(Path(d, "libucp.so.0").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib")),
    reason="no system UCX (apt install libucx0)",
)
def test_system_ucx_opt_in() -> None:
    result = run_script(LOOPBACK_SCRIPT, KELP_UCX_LIB="system")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["origin"] == "system"
    assert report["rma"] == ["cma/memory"]


def test_build_command_reports_the_binding() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rdma.ucx.build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["mode"] in ("api", "abi")
    assert report["library_version"] == BINDING.version_string  # type: ignore[union-attr]


def test_bad_mode_is_refused() -> None:
    result = run_script("from rdma.ucx import load; load()", KELP_UCX_MODE="fast")
    assert result.returncode != 0 and "KELP_UCX_MODE" in result.stderr


# -- pure helpers -----------------------------------------------------------------------------


def test_descriptor_roundtrip_and_garbage() -> None:
    desc = Descriptor(0x7F00_0000_1000, 12345, b"\x01rkey\x00bytes")
    assert Descriptor.decode(desc.encode()) == desc
    for bad in (b"", b"KUX1", b"XXXX" + desc.encode()[4:], desc.encode() + b"x"):
        with pytest.raises(ValueError):
            Descriptor.decode(bad)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sockaddr_roundtrip(host: str) -> None:
    raw = encode_sockaddr(host, 17777)
    assert decode_sockaddr(raw + bytes(128 - len(raw))) == (host, 17777)


def test_sockaddr_rejects_names_and_bad_ports() -> None:
    with pytest.raises(ValueError):
        encode_sockaddr("localhost", 1)
    with pytest.raises(ValueError):
        encode_sockaddr("127.0.0.1", 70000)


def test_tls_must_include_tcp() -> None:
    assert _tls_allows_tcp("all")
    assert _tls_allows_tcp("sm,cma,tcp")
    assert _tls_allows_tcp("^ib")
    assert not _tls_allows_tcp("sm,cma")
    assert not _tls_allows_tcp("^tcp,ib")


def test_parse_lanes() -> None:
    info = """#
# UCP endpoint
#
#               peer: <no debug data>
#                 lane[0]: cm tcp
#                 lane[1]:  2:sysv/memory.0 md[2]           -> md[2]/sysv/sysdev[255] seg 4294967295 am
#                 lane[2]:  4:cma/memory.0 md[4]            -> md[4]/cma/sysdev[255] seg 4294967295 rma_bw#0
#                 lane[3]:  1:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] seg 4294967295 rma_bw#1 am wireup
"""  # noqa: E501
    assert parse_lanes(info) == [
        ucx.Lane("tcp", "", ("cm",)),
        ucx.Lane("sysv", "memory", ("am",)),
        ucx.Lane("cma", "memory", ("rma_bw",)),
        ucx.Lane("tcp", "lo", ("rma_bw", "am", "wireup")),
    ]


# -- one worker, loopback ---------------------------------------------------------------------


async def read(endpoint: ucx.Endpoint, key: ucx.RemoteKey, offset: int, size: int) -> bytes:
    dest = bytearray(size)
    await endpoint.get(key, offset, dest)
    return bytes(dest)


async def export_to_self(worker: ucx.Worker, size: int
                         ) -> tuple[bytearray, ucx.MemoryRegion, ucx.Endpoint, ucx.RemoteKey]:
    """``size`` random bytes registered on ``worker`` and a key to them on an endpoint the
    worker connected to itself over loopback: (bytes, region, endpoint, key)."""
    exported = bytearray(os.urandom(size))
    region = worker.register(exported)
    listener = worker.listen("127.0.0.1", 0)
    with trio.fail_after(DEADLINE):
        client = await worker.connect("127.0.0.1", listener.address[1])
        await listener.accept()
    return exported, region, client, client.import_key(region.export())


async def test_get_and_bounds_over_loopback() -> None:
    async with ucx.open_worker() as worker:
        exported, region, client, key = await export_to_self(worker, 1 << 20)
        assert key.length == len(exported)

        with trio.fail_after(DEADLINE):
            assert await read(client, key, 0, 1) == exported[:1]
            assert await read(client, key, len(exported) - 7, 7) == exported[-7:]
            dest = bytearray(300_000)
            local = worker.register(dest)
            await client.get(key, 4096, dest, local=local)
            assert dest == exported[4096 : 4096 + len(dest)]

        # UCX checks no bounds; the binding must, before anything is posted.
        for offset, size in ((len(exported) - 10, 11), (-1, 1), (len(exported) + 1, 0)):
            with pytest.raises(ValueError, match="outside"):
                await read(client, key, offset, size)
        with pytest.raises(ValueError, match="local region"):
            await client.get(key, 0, bytearray(10), local=local)
        with pytest.raises(BufferError):
            await client.get(key, 0, b"read-only destination")  # type: ignore[arg-type]

        await client.close()
        assert client.closed and key.closed
        with pytest.raises(ucx.UcxError):
            await read(client, key, 0, 1)
        local.close()
        region.close()
        assert region.closed


async def test_a_get_that_spares_the_schedule_point_still_reads_and_honours_cancellation(
        ) -> None:
    async with ucx.open_worker() as worker:
        exported, region, client, key = await export_to_self(worker, 1 << 16)
        settled: list[int] = []
        with trio.fail_after(DEADLINE):
            dest = bytearray(4096)
            await client.get(key, 8192, dest, schedule=False,
                             settled=lambda: settled.append(1))
            assert dest == exported[8192:12288] and settled == [1]
            # Cancelled before it starts: nothing is posted, the buffer is never touched.
            untouched = bytearray(4096)
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.get(key, 0, untouched, schedule=False,
                                 settled=lambda: settled.append(2))
            assert scope.cancelled_caught
            assert untouched == bytearray(4096) and settled == [1, 2]
        await client.close()
        region.close()


async def test_empty_buffer_is_refused_and_close_after_the_worker_is_a_noop() -> None:
    async with ucx.open_worker() as worker:
        with pytest.raises(ValueError):
            worker.register(bytearray())
        data = os.urandom(50_000)
        region = worker.register(data)
        listener = worker.listen()
        with trio.fail_after(DEADLINE):
            ep = await worker.connect("127.0.0.1", listener.address[1])
            key = ep.import_key(region.export())
            assert await read(ep, key, 1, 49_999) == data[1:]
    with trio.fail_after(1):
        await ep.close()  # after the worker is gone: a no-op, not a wait
    assert ep.closed and key.closed and region.closed


async def test_connect_to_nothing_raises_quickly() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        async with ucx.open_worker() as worker:
            with trio.fail_after(DEADLINE), pytest.raises(ucx.PeerError):
                await worker.connect("127.0.0.1", port)


async def test_listener_rejects_tls_without_tcp() -> None:
    async with ucx.open_worker({"TLS": "self,sm,cma"}) as worker:
        with pytest.raises(ucx.UcxError, match="UCX_TLS must include tcp"):
            worker.listen()


async def test_one_worker_per_process_and_clean_exit() -> None:
    threads = len(os.listdir("/proc/self/task"))
    async with ucx.open_worker() as worker:
        with pytest.raises(RuntimeError, match="one UCX worker"):
            ucx.Worker()
        listener = worker.listen()
        with trio.fail_after(DEADLINE):
            await worker.connect("127.0.0.1", listener.address[1])
        assert any(t.name == "ucx-progress" for t in _all_tasks())
    assert not any(t.name == "ucx-progress" for t in _all_tasks())
    assert len(os.listdir("/proc/self/task")) == threads  # UCX's async thread is gone too
    async with ucx.open_worker():  # and a new one can be opened
        pass


async def test_block_exception_is_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with ucx.open_worker():
            raise KeyError("from the block")


def test_use_after_fork_is_refused() -> None:
    result = run_script(
        """
        import os, trio
        from rdma.ucx import open_worker

        async def main():
            async with open_worker() as worker:
                pid = os.fork()
                if pid == 0:
                    try:
                        worker.register(bytearray(10))
                    except RuntimeError as exc:
                        os._exit(0 if "fork" in str(exc) else 2)
                    os._exit(1)
                _, status = os.waitpid(pid, 0)
                print(os.waitstatus_to_exitcode(status))

        trio.run(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def _all_tasks() -> list[trio.lowlevel.Task]:
    found = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found
