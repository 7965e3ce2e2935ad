"""Checkpoint validation without Megatron: missing, incomplete, truncated, and the latest complete one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_ext.checkpoint import (
    COMPLETE_MARKER,
    META_FILE,
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    read_checkpoint_meta,
    remove_incomplete,
)


def fake_checkpoint(root: Path, iteration: int, *, complete: bool = True) -> Path:
    d = root / checkpoint_name(iteration)
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(b"x" * 100)
    (d / "common.pt").write_bytes(b"y" * 10)
    meta = {
        "iteration": iteration,
        "extra": {"position": iteration * 8},
        "files": {"__0_0.distcp": 100, "common.pt": 10},
    }
    (d / META_FILE).write_text(json.dumps(meta))
    if complete:
        (d / COMPLETE_MARKER).write_text("ok\n")
    return d


def test_complete_checkpoint_reads(tmp_path):
    d = fake_checkpoint(tmp_path, 3)
    assert read_checkpoint_meta(d)["extra"] == {"position": 24}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint_meta(tmp_path / "nope")


def test_incomplete_checkpoint(tmp_path):
    d = fake_checkpoint(tmp_path, 1, complete=False)
    with pytest.raises(CheckpointError, match="incomplete"):
        read_checkpoint_meta(d)


def test_truncated_and_missing_files(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    (d / "__0_0.distcp").write_bytes(b"x" * 40)
    with pytest.raises(
        CheckpointError, match=r"truncated or corrupt: __0_0.distcp has 40 bytes, expected 100"
    ):
        read_checkpoint_meta(d)
    (d / "common.pt").unlink()
    (d / "__0_0.distcp").write_bytes(b"x" * 100)
    with pytest.raises(CheckpointError, match="missing file common.pt"):
        read_checkpoint_meta(d)


def test_corrupt_metadata(tmp_path):
    d = fake_checkpoint(tmp_path, 1)
    (d / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint_meta(d)


def test_latest_checkpoint_skips_incomplete_and_temp(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 11, complete=False)
    (tmp_path / ".iter_0000012.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / checkpoint_name(10)
    assert remove_incomplete(tmp_path) == [tmp_path / ".iter_0000012.tmp"]
    assert not (tmp_path / ".iter_0000012.tmp").exists()
