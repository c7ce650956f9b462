"""A stand-alone UCX exporter process, for tests and the benchmark (not a kelp service).

``python -m rdma.ucx._peer FILE [--offset N] [--length N] [--error-mode none|peer] [--set K=V]``

It registers the file range, listens on 127.0.0.1 (kernel-chosen port) and prints one JSON line
to stdout: ``port``, ``pid``, ``worker_address`` (hex), ``descriptor`` (hex of
`MemoryRegion.export()`), ``length``. It then accepts connections and answers active messages
with id `ECHO_AM` by sending header and data back (``reply=True`` endpoints). It exits when its
stdin reaches end of file, so a parent that dies takes it along.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

from rdma.ucx import Endpoint, open_worker

ECHO_AM = 7


async def _serve(args: argparse.Namespace) -> None:
    config = dict(item.split("=", 1) for item in args.set)
    async with open_worker(config) as worker, trio.open_nursery() as nursery:
        region = worker.register_file(args.file, args.offset, args.length)
        listener = worker.listen("127.0.0.1", 0, error_mode=args.error_mode)
        inbox = worker.am_inbox(ECHO_AM)
        endpoints: list[Endpoint] = []

        async def accept_forever() -> None:
            async for endpoint in listener:
                endpoints.append(endpoint)

        async def echo_forever() -> None:
            async for message in inbox:
                if message.endpoint is not None:
                    try:
                        await message.endpoint.am_send(
                            ECHO_AM, message.header, message.data, reply=True
                        )
                    except Exception as exc:  # a reader that died must not stop the exporter
                        print(f"echo failed: {exc}", file=sys.stderr, flush=True)

        nursery.start_soon(accept_forever)
        nursery.start_soon(echo_forever)
        line = {
            "port": listener.address[1],
            "pid": os.getpid(),
            "worker_address": worker.address.hex(),
            "descriptor": region.export().hex(),
            "length": region.length,
            "binding": worker.binding.mode,
        }
        print(json.dumps(line), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():
            pass  # anything written is ignored; EOF means "stop"
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdma.ucx._peer")
    parser.add_argument("file")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--error-mode", default="none", choices=("none", "peer"))
    parser.add_argument("--set", action="append", default=[], metavar="K=V")
    trio.run(_serve, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
