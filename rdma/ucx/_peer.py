"""A stand-alone UCX exporter process for the binding's two-process tests (not a kelp service).

``python -m rdma.ucx._peer FILE [--error-mode none|peer] [--set K=V]``

It maps the whole file read-only, registers it, listens on 127.0.0.1 (kernel-chosen port) and
prints one JSON line to stdout: ``port``, ``pid``, ``descriptor`` (hex of
`MemoryRegion.export()`), ``length``, ``binding``. It then accepts connections and holds them.
It exits when its stdin reaches end of file, so a parent that dies takes it along.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys

import trio

from rdma.ucx import Endpoint, open_worker


async def _serve(args: argparse.Namespace) -> None:
    config = dict(item.split("=", 1) for item in args.set)
    with open(args.file, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    async with open_worker(config) as worker, trio.open_nursery() as nursery:
        region = worker.register(mapped)
        listener = worker.listen("127.0.0.1", 0, error_mode=args.error_mode)
        endpoints: list[Endpoint] = []

        async def accept_forever() -> None:
            async for endpoint in listener:
                endpoints.append(endpoint)

        nursery.start_soon(accept_forever)
        line = {
            "port": listener.address[1],
            "pid": os.getpid(),
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
    parser.add_argument("--error-mode", default="none", choices=("none", "peer"))
    parser.add_argument("--set", action="append", default=[], metavar="K=V")
    trio.run(_serve, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
