"""The broker's UCX export stopping while an OpenRead maps its segment: the read gets a 503
naming the stop (it used to die of ``raise trio.Cancelled``, a TypeError), and the segment's
descriptor is let go."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from broker import ucx_export
from broker.ucx_export import UcxExporter


class _Exports:
    def __init__(self, segment: Any) -> None:
        self.segment = segment

    def resolve(self, file_id: str) -> Any:
        return SimpleNamespace(segment=self.segment, position=0, length=100)


async def test_stopping_while_a_mapping_is_made_answers_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(os.urandom(8192))
    fd = os.open(path, os.O_RDONLY)
    try:
        segment = SimpleNamespace(fd=fd, size=8192, serial=1, readers=0, retired=False)
        exporter = UcxExporter(_Exports(segment), "127.0.0.1", 0)  # type: ignore[arg-type]
        exporter._worker = object()  # as if started; never asked to register anything
        exporter.unavailable = "UCX export stopped"
        real_run_sync = trio.to_thread.run_sync

        async def stop_while_mapping(fn: Any, *args: Any, **kwargs: Any) -> Any:
            exporter._worker = None  # what stop() and _shut() do meanwhile
            return await real_run_sync(fn, *args, **kwargs)

        monkeypatch.setattr(trio.to_thread, "run_sync", stop_while_mapping)
        with pytest.raises(ucx_export._Stopped):
            await exporter._mapping_for(segment, 100)  # type: ignore[arg-type]
        assert segment.readers == 0  # the hold on the segment's descriptor ended

        exporter._worker = object()
        reply = await exporter.open_read("3,01637037d6")
        assert reply.status == 503 and "stopped" in reply.error
        assert exporter.health()["ucx_leases"] == 0 and segment.readers == 0
    finally:
        os.close(fd)
