"""Process scaffolding shared by broker, gateway and sidecar.

``run(main)`` starts trio with a trio-asyncio loop (grpclib needs one), runs ``main()`` (which
serves until cancelled) and cancels it on SIGINT or SIGTERM, or when the supervisor that
started this process (``kelp up``) goes away. Cleanups that must finish (flushes, removing
socket files) shield themselves.

A process that cannot start (a port in use, an unwritable directory, a missing library, a data
directory another broker holds) says why in one line and exits 1; only a failure after
``ready`` is a bug worth a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from kelp.address import parse_host_port
from kelp.logs import RateLimited

log = logging.getLogger("kelp.process")

# ``kelp up`` passes the read end of a pipe it never writes: EOF means the supervisor died
# (even by SIGKILL), and its children stop rather than linger holding the ports.
SUPERVISOR_FD_ENV = "KELP_SUPERVISOR_FD"


class StartupError(Exception):
    """Why this process cannot start, in words for the operator (one line, no traceback)."""


_ready = False


def ready(logger: logging.Logger, **extra: object) -> None:
    """Log the ``ready`` line (tests and ``kelp up`` wait for it); failures after it are bugs."""
    global _ready
    _ready = True
    # Everything loaded so far (modules, generated message classes, opened logs) lives as long
    # as the process: moved out of the collector's generations, full collections no longer
    # walk it, which is most of what an idle process spends its CPU on.
    gc.freeze()
    logger.info("ready", extra=extra)


async def _stop_on_signal(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            cancel_scope.cancel()
            return


async def _stop_when_supervisor_exits(fd: int, cancel_scope: trio.CancelScope) -> None:
    await trio.lowlevel.wait_readable(fd)  # only EOF: the supervisor never writes
    log.warning("supervisor exited; stopping")
    cancel_scope.cancel()


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, as servers do (a
    broker holds descriptors per segment, a gateway one per connection); ``run`` does it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):  # not allowed here: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_file_limit() -> int:
    """The files this process may have open (its soft limit)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


asyncio_error_log = RateLimited(log, interval_s=1.0)  # a peer may cause them at will


def log_asyncio_error(loop: object, context: dict[str, Any]) -> None:
    """asyncio's handler for errors nothing else saw (a grpclib channel garbage-collected
    unclosed, say, after an etcd restart): logged. trio-asyncio's default handler raises them
    into the loop's nursery, which ended the whole process over a leaked socket."""
    exception = context.get("exception")
    asyncio_error_log.log(
        logging.ERROR, f"unhandled asyncio error: {context.get('message') or exception!r}",
        exc_info=exception if isinstance(exception, BaseException) else False)


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """trio-asyncio's loop (grpclib runs on it), with `log_asyncio_error` as its handler."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_asyncio_error)
        yield loop


def run(main: Callable[[], Awaitable[None]]) -> None:
    raise_open_file_limit()

    async def root() -> None:
        async with asyncio_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            supervisor_fd = os.environ.get(SUPERVISOR_FD_ENV)
            if supervisor_fd and supervisor_fd.isdigit():
                nursery.start_soon(_stop_when_supervisor_exits, int(supervisor_fd),
                                   nursery.cancel_scope)
            await main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(root)
    except BaseException as exc:
        reasons = _startup_reasons(exc)
        if _ready or reasons is None:
            raise
        for reason in reasons:
            log.error("cannot start", extra={"error": reason})
        sys.exit(1)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _startup_reasons(exc: BaseException) -> list[str] | None:
    """One line per cause when every cause is the operator's to fix; None for bugs."""
    from rdma.ucx.errors import UcxError  # the broker's UCX listener can fail to start too

    reasons = []
    for leaf in _leaves(exc):
        if isinstance(leaf, StartupError | UcxError | ImportError):
            reasons.append(str(leaf))
        elif isinstance(leaf, OSError):
            if leaf.errno == errno.EADDRINUSE:
                reasons.append(f"{leaf.strerror or leaf}: another process holds the port "
                               "(is kelp already running?)")
            else:
                where = f" ({leaf.filename})" if leaf.filename else ""
                reasons.append(f"{leaf.strerror or leaf}{where}")
        elif not isinstance(leaf, KeyboardInterrupt | SystemExit):
            return None
    return reasons or None


def lock_directory(directory: Path) -> int:
    """Hold an exclusive lock on ``<directory>/.lock`` for this process's life (as Kafka locks
    each log directory); raises ``StartupError`` naming the holder's pid if it is taken."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"data dir {directory} is in use by another broker "
                           f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# ``"host:port"`` (IPv6 as ``[::1]:9092``) to a pair: the one parser, under its older name.
split_host_port = parse_host_port


def count_tasks() -> int:
    """Every live trio task in this process (tests assert that nothing leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())
