"""``kelp``: the command line. ``kelp up`` runs broker, gateway and sidecar together.

Each process is also startable alone (``python -m broker``, ``python -m gateway``,
``python -m rdma``); ``up`` starts them as children with the default addresses of DESIGN §1,
waits until each logs ``ready``, prints where each listens, and stops all three on Ctrl-C
(SIGTERM to each, SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


def up_commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    python = sys.executable
    return [
        ("broker", [python, "-m", "broker", "--data-dir", str(args.data_dir),
                    "--grpc", args.broker, "--http", args.broker_http, "--ucx", args.ucx,
                    "--log-level", args.log_level]),
        ("gateway", [python, "-m", "gateway", "--listen", args.kafka,
                     "--advertise", args.advertise or args.kafka, "--broker", args.broker,
                     "--http", args.registry, "--log-level", args.log_level]),
        ("sidecar", [python, "-m", "rdma", "--socket", str(args.run_dir / "sidecar.sock"),
                     "--http", args.sidecar_http, "--broker", args.broker,
                     "--broker-http", args.broker_http, "--log-level", args.log_level]),
    ]


async def _relay(name: str, stream: trio.abc.ReceiveStream, ready: trio.Event) -> None:
    """Copy a child's log lines to our stderr, prefixed, and notice its ready line."""
    buffered = b""
    async for chunk in stream:
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if "msg=ready" in text:
                ready.set()
            print(f"{name:8}| {text}", file=sys.stderr, flush=True)


async def run_up(args: argparse.Namespace) -> int:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, trio.Process]] = []
    exit_code = 0
    async with trio.open_nursery() as nursery:
        try:
            for name, command in up_commands(args):
                ready = trio.Event()
                proc = await trio.lowlevel.open_process(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, start_new_session=True)
                procs.append((name, proc))
                assert proc.stderr is not None
                nursery.start_soon(_relay, name, proc.stderr, ready)
                with trio.move_on_after(READY_TIMEOUT_S):
                    await _first_of(ready.wait, proc.wait)
                if not ready.is_set():
                    print(f"kelp: {name} did not become ready", file=sys.stderr)
                    return 1
            print(
                "kelp is ready\n"
                f"  kafka           {args.advertise or args.kafka}\n"
                f"  schema registry http://{args.registry}  (gateway HTTP, /health)\n"
                f"  broker grpc     {args.broker}\n"
                f"  broker http     {args.broker_http}  (/health, /metrics, /segments, /read)\n"
                f"  broker ucx      {args.ucx}  (segment exports for the sidecar)\n"
                f"  sidecar http    {args.sidecar_http}  (/health /stats /ping /read ...)\n"
                f"  sidecar socket  {args.run_dir / 'sidecar.sock'}\n"
                f"  data dir        {args.data_dir}\n"
                "Ctrl-C stops all three.", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                died = trio.Event()
                for name, proc in procs:
                    nursery.start_soon(_watch, name, proc, died)
                await _first_of(signals.__anext__, died.wait)
                if died.is_set():
                    exit_code = 1
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(procs)
            nursery.cancel_scope.cancel()
    return exit_code


async def _watch(name: str, proc: trio.Process, died: trio.Event) -> None:
    code = await proc.wait()
    print(f"kelp: {name} exited with code {code}", file=sys.stderr)
    died.set()


async def _first_of(*waits: object) -> None:
    async with trio.open_nursery() as nursery:
        async def run(wait: object) -> None:
            await wait()  # type: ignore[operator]
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(run, wait)


async def _stop_all(procs: Sequence[tuple[str, trio.Process]]) -> None:
    # Reverse start order: gateway and sidecar let go of the broker before it stops.
    for _name, proc in reversed(procs):
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        for _name, proc in procs:
            await proc.wait()
    for name, proc in procs:
        if proc.returncode is None:
            print(f"kelp: {name} did not stop in {STOP_GRACE_S}s, killing it", file=sys.stderr)
            proc.kill()
            await proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kelp", description="kelp command line")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run broker, gateway and sidecar together")
    sub.add_parser("mount", help="mount topic data read-only (kelp mount --help)",
                   add_help=False)
    sub.add_parser("loadtest", add_help=False,
                   help="load-test a running kelp (kelp loadtest --help)")
    up.add_argument("--data-dir", type=Path, default=Path(".kelp/data"))
    up.add_argument("--run-dir", type=Path, default=Path(".kelp/run"))
    up.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka listener")
    up.add_argument("--advertise", default=None, help="address given to Kafka clients")
    up.add_argument("--registry", default="127.0.0.1:8081",
                    help="gateway HTTP address: Schema Registry REST API and /health")
    up.add_argument("--broker", default="127.0.0.1:17777", help="broker gRPC address")
    up.add_argument("--broker-http", default="127.0.0.1:8082")
    up.add_argument("--ucx", default="127.0.0.1:17779",
                    help="broker UCX listener the sidecar reads segments through")
    up.add_argument("--sidecar-http", default="127.0.0.1:8083")
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mount"]:  # its own parser (and pyfuse3, an optional dependency)
        from rdma.mount.__main__ import main as mount_main

        mount_main(argv[1:])
        return
    if argv[:1] == ["loadtest"]:  # its own parser too (python -m kelp.loadtest is the same)
        from kelp.loadtest import main as loadtest_main

        sys.exit(loadtest_main(argv[1:]))
    args = parse_args(argv)
    if args.command == "up":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        sys.exit(trio.run(run_up, args))


if __name__ == "__main__":
    main()
