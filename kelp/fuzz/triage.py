"""Find which saved frame kills kelp (or makes it log a Traceback).

A fuzz run that sees a process die, or a Traceback appear in a log, saves the last frames it
sent. ``python -m kelp.fuzz.triage FILE`` replays them against a fresh stack, in chunks (each
frame on its own connection), checks after each chunk that broker and gateway live and their
logs stay clean, and bisects a chunk that causes trouble down to the frame. A culprit is
printed with its API, version, mutation and bytes; after a death the stack is restarted and
the replay goes on, so one file can name several culprits.

File format (one entry per frame)::  prefix int32 | size int32 | payload | how-size uint8 | how
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kelp.address import parse_host_port
from kelp.fuzz.mutate import Mutant
from kelp.fuzz.stack import Stack

_ENTRY = struct.Struct(">ii")
WAIT_S = 0.5  # for an answer or a close after a replay
CHUNK = 64    # frames replayed at once before checking the stack


@dataclass(frozen=True, slots=True)
class Frame:
    prefix: int
    payload: bytes
    how: str

    def wire(self) -> bytes:
        return struct.pack(">i", self.prefix) + self.payload

    def describe(self) -> str:
        api, version = struct.unpack_from(">hh", self.payload) if len(self.payload) >= 4 \
            else (None, None)
        return (f"api {api} v{version}, mutation {self.how}, prefix {self.prefix}, "
                f"{len(self.payload)} bytes: {self.payload[:256].hex()}"
                f"{'...' if len(self.payload) > 256 else ''}")


def save_frames(mutants: list[Mutant], path: Path) -> None:
    out = []
    for mutant in mutants:
        how = mutant.how.encode()[:255]
        out += [_ENTRY.pack(mutant.prefix, len(mutant.payload)), mutant.payload,
                bytes([len(how)]), how]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))


def load_frames(path: Path) -> list[Frame]:
    data, frames, position = path.read_bytes(), [], 0
    while position < len(data):
        prefix, size = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size
        payload = data[position : position + size]
        position += size
        how_size = data[position]
        how = data[position + 1 : position + 1 + how_size].decode()
        position += 1 + how_size
        frames.append(Frame(prefix, payload, how))
    return frames


def replay(bootstrap: str, frames: list[Frame]) -> None:
    """Each frame on its own connection, all at once; wait until each was answered or closed
    (a decode failure closes, a handler answers) or ``WAIT_S`` passed."""
    host, port = parse_host_port(bootstrap)
    pending: list[socket.socket] = []
    try:
        for frame in frames:
            try:
                sock = socket.create_connection((host, port), timeout=WAIT_S)
                pending.append(sock)
                sock.sendall(frame.wire())
            except OSError:
                continue  # refused or reset: the checks after the replay will tell
        waiting = list(pending)
        deadline = time.monotonic() + WAIT_S
        while waiting and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(waiting, [], [], left)
            for sock in ready:
                waiting.remove(sock)  # answered, closed or reset: this frame was handled
    finally:
        for sock in pending:
            sock.close()


class _Replayer:
    """A stack to replay against, restarted whenever a replay kills part of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.restarts = 0
        self.stack = Stack(workdir / "stack-0").start()

    def problem(self, frames: list[Frame]) -> str | None:
        """What replaying ``frames`` did wrong (a death, a Traceback), or None."""
        offsets = {c.name: len(c.log_text()) for c in self.stack.children}
        replay(self.stack.bootstrap, frames)
        time.sleep(0.1)  # a crash or a log line may trail the answer
        for child in self.stack.children:
            new_log = child.log_text()[offsets[child.name]:]
            if not child.alive():
                code = child.popen.returncode if child.popen else None
                self.restart()
                # The first lines that are not kelp's own log lines: the abort's message.
                crash = [line for line in new_log.splitlines() if not line.startswith("ts=")]
                detail = "\n    ".join(crash[:8]) or new_log.strip()[-800:]
                return f"{child.name} died (exit {code}):\n    {detail}"
            if "Traceback" in new_log:
                return f"{child.name} logged:\n{new_log[new_log.index('Traceback'):][:1500]}"
        return None

    def restart(self) -> None:
        self.stack.stop()
        self.restarts += 1
        self.stack = Stack(self.workdir / f"stack-{self.restarts}").start()

    def close(self) -> None:
        self.stack.stop()


def bisect(replayer: _Replayer, frames: list[Frame]) -> list[tuple[list[Frame], str]]:
    """The smallest groups of frames that reproduce a problem (usually single frames)."""
    problem = replayer.problem(frames)
    if problem is None:
        return []
    if len(frames) == 1:
        return [(frames, problem)]
    middle = len(frames) // 2
    found = bisect(replayer, frames[:middle]) + bisect(replayer, frames[middle:])
    # Neither half alone does it: the frames only fail together (state across requests, or
    # a race between them). Often frames of one API are enough (two concurrent deletes).
    return found or narrow_by_api(replayer, frames) or [(frames, problem)]


def narrow_by_api(replayer: _Replayer, frames: list[Frame]) -> list[tuple[list[Frame], str]]:
    apis = sorted({f.payload[:2] for f in frames if len(f.payload) >= 2})
    for api in apis:
        subset = [f for f in frames if f.payload[:2] == api]
        if len(subset) < len(frames) and (problem := replayer.problem(subset)) is not None:
            return [(subset, problem)]
    return []


def triage(frames: list[Frame], workdir: Path,
           chunk: int = CHUNK) -> list[tuple[list[Frame], str]]:
    """Groups of frames (usually one) and what each did: killed a process, or a Traceback."""
    replayer = _Replayer(workdir)
    found: list[tuple[list[Frame], str]] = []
    try:
        for start in range(0, len(frames), chunk):
            found += bisect(replayer, frames[start : start + chunk])
    finally:
        replayer.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kelp.fuzz.triage", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("frames", type=Path, help="a crash-candidates file a fuzz run saved")
    args = parser.parse_args(argv)
    frames = load_frames(args.frames)
    print(f"triage: replaying {len(frames)} frames", flush=True)
    with tempfile.TemporaryDirectory(prefix="kelp-fuzz-triage-") as tmp:
        found = triage(frames, Path(tmp))
    for group, what in found:
        described = "\n  ".join(frame.describe() for frame in group)
        print(f"triage: CULPRIT ({len(group)} frame(s) together)\n  {described}\n"
              f"  -> {what}\n", flush=True)
    print(f"triage: {len(found)} culprit(s) in {len(frames)} frames")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
