"""``kelp up``'s supervisor: start the children in order, restart one that dies, stop together.

Like a service manager: a child that dies after start-up is restarted with a backoff while the
others keep serving, and one that keeps dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``) is
given up on, which stops the rest. Children die with the supervisor even if it is SIGKILLed:
each inherits the read end of a pipe the supervisor never writes, and stops at EOF (see
``kelp.process``). Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace).

Start-up is strict: a child that does not become ready (a port in use, a locked data
directory) stops everything, since restarting it would only fail again. Each child explains
itself in one line, which the supervisor relays.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from kelp.process import SUPERVISOR_FD_ENV, split_host_port

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# A child that stayed up this long starts again from the first backoff.
STABLE_AFTER_S = 30.0


def say(text: str) -> None:
    print(f"kelp: {text}", file=sys.stderr, flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    name: str
    command: list[str]
    proc: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    restarts: list[float] = field(default_factory=list)
    started_at: float = 0.0
    # What the child logs once it serves (kelp's processes log msg=ready; etcd does not).
    ready_marker: str = "msg=ready"


class Supervisor:
    def __init__(self, commands: Sequence[tuple[str, list[str]] | tuple[str, list[str], str]]
                 ) -> None:
        self.children = [Child(command[0], command[1], ready_marker=command[2])
                         if len(command) == 3 else Child(command[0], command[1])
                         for command in commands]
        self.stopping = False
        self.failed = trio.Event()  # a child could not start, or crash-looped
        self._pipe_read, self._pipe_write = os.pipe()  # the write end is never written

    async def start_all(self, nursery: trio.Nursery) -> bool:
        """Start each child in order, waiting for its ready line; False if one fails."""
        for child in self.children:
            await self._spawn(child, nursery)
            with trio.move_on_after(READY_TIMEOUT_S):
                await first_of(child.ready.wait, self._exited(child))
            if not child.ready.is_set():
                say(f"{child.name} could not start"
                    + ("" if child.proc is None or child.proc.returncode is None
                       else f" ({describe_exit(child.proc.returncode)})"))
                return False
        for child in self.children:
            nursery.start_soon(self._watch, child, nursery)
        return True

    async def _spawn(self, child: Child, nursery: trio.Nursery) -> None:
        child.ready = trio.Event()
        env = {**os.environ, SUPERVISOR_FD_ENV: str(self._pipe_read)}
        child.proc = await trio.lowlevel.open_process(
            child.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True, env=env,
            pass_fds=(self._pipe_read,))
        child.started_at = time.monotonic()
        assert child.proc.stderr is not None
        nursery.start_soon(_relay, child.name, child.proc.stderr, child.ready,
                           child.ready_marker)

    def _exited(self, child: Child) -> Callable[[], Awaitable[None]]:
        async def wait() -> None:
            assert child.proc is not None
            await child.proc.wait()
        return wait

    async def _watch(self, child: Child, nursery: trio.Nursery) -> None:
        """Restart ``child`` whenever it dies, until stopping or it crash-loops."""
        backoff = FIRST_BACKOFF_S
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping:
                return
            now = time.monotonic()
            if now - child.started_at >= STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            if len(child.restarts) >= MAX_RESTARTS:
                say(f"{child.name} exited ({describe_exit(code)}) {MAX_RESTARTS + 1} times in "
                    f"{RESTART_WINDOW_S:.0f} s; giving up and stopping kelp")
                self.failed.set()
                return
            child.restarts.append(now)
            say(f"{child.name} exited ({describe_exit(code)}); restarting in {backoff:.1f} s")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            if self.stopping:
                return
            await self._spawn(child, nursery)

    async def stop_all(self) -> None:
        """SIGTERM every child (reverse start order), SIGKILL what lingers past the grace."""
        self.stopping = True
        running = [c.proc for c in reversed(self.children) if c.proc is not None]
        for proc in running:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            for proc in running:
                await proc.wait()
        for child in self.children:
            proc = child.proc
            if proc is None:
                continue
            if proc.returncode is None:
                say(f"{child.name} did not stop in {STOP_GRACE_S:.0f} s, killing it")
                proc.kill()
                await proc.wait()
            say(f"{child.name} stopped ({describe_exit(proc.returncode)})")
        os.close(self._pipe_write)
        os.close(self._pipe_read)


async def _relay(name: str, stream: trio.abc.ReceiveStream, ready: trio.Event,
                 marker: str = "msg=ready") -> None:
    """Copy a child's log lines to our stderr, prefixed, and notice its ready line."""
    buffered = b""
    async for chunk in stream:
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if marker in text:
                ready.set()
            print(f"{name:8}| {text}", file=sys.stderr, flush=True)


async def first_of(*waits: object) -> None:
    async with trio.open_nursery() as nursery:
        async def run(wait: object) -> None:
            await wait()  # type: ignore[operator]
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(run, wait)


def check_ports(addresses: dict[str, str]) -> list[str]:
    """One line per address that cannot be bound now (``{what: "host:port"}``)."""
    problems = []
    for what, address in addresses.items():
        host, port = split_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    pid = listening_pid(port)
                    holder = f" (pid {pid})" if pid else ""
                    problems.append(f"port {port} ({what}) is in use — is kelp already "
                                    f"running{holder}?")
                else:
                    problems.append(f"cannot listen on {address} ({what}): "
                                    f"{exc.strerror or exc}")
    return problems


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port``, when /proc lets us see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None
