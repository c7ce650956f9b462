"""Process scaffolding shared by broker, gateway and sidecar.

``run(main)`` starts trio with a trio-asyncio loop (grpclib needs one), runs ``main()`` (which
serves until cancelled) and cancels it on SIGINT or SIGTERM. Cleanups that must finish
(flushes, removing socket files) shield themselves.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio
import trio_asyncio

log = logging.getLogger("kelp.process")


async def _stop_on_signal(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def root() -> None:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await main()
            nursery.cancel_scope.cancel()

    trio.run(root)


def split_host_port(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``[::1]:9092``) to a pair; raises ``ValueError`` with the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or default_host, int(port)


def count_tasks() -> int:
    """Every live trio task in this process (tests assert that nothing leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())
