"""kelp.files.replace_file: one rename, old or new contents, the temp file never left over."""

from __future__ import annotations

import os

import pytest

from kelp import files


@pytest.mark.parametrize("durable", [True, False])
def test_replaces_contents_and_leaves_no_temp_file(tmp_path, durable):
    target = tmp_path / "state"
    files.replace_file(target, "one\n", durable=durable)
    files.replace_file(target, b"two", durable=durable)
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["state"]


def test_a_failed_write_keeps_the_old_contents(tmp_path, monkeypatch):
    target = tmp_path / "state"
    files.replace_file(target, "old", durable=True)

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.replace_file(target, "new", durable=True)
    assert target.read_text() == "old"
    assert files.temp_path(target).name == "state.tmp"


def test_durable_syncs_data_then_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    files.replace_file(tmp_path / "a", "x", durable=True)
    assert synced == [False, True]
    synced.clear()
    files.replace_file(tmp_path / "b", "x", durable=False)
    assert synced == []
