"""Streaming safetensors and torch_dist I/O, dtype checks and atomic output directories."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion.dist_io import CheckpointFormatError, DcpChunkReader, DcpStreamWriter
from conversion.io_utils import atomic_output_dir, cast_checked, parse_dtype
from conversion.safetensors_io import PlannedShardWriter, SafetensorsError, SafetensorsReader, parse_size
from tests.unit.conversion.conftest import load_all


def test_reader_matches_safetensors_library_on_sharded_dir(qwen_dir):
    ref = load_all(qwen_dir)
    assert (qwen_dir / "model.safetensors.index.json").is_file()
    reader = SafetensorsReader(qwen_dir)
    assert sorted(reader.names()) == sorted(ref)
    for name, t in ref.items():
        got = reader.get(name)
        assert got.dtype == t.dtype and torch.equal(got, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_planned_writer_output_loads_with_safetensors_library(tmp_path, dtype):
    tensors = {f"w{i}": torch.randn(3 + i, 5).to(dtype) for i in range(7)}
    tensors["scalarish"] = torch.randn(1).to(dtype)
    plan = [(n, tuple(t.shape)) for n, t in tensors.items()]
    writer = PlannedShardWriter(
        tmp_path, plan, dtype, max_shard_bytes=100 * torch.empty((), dtype=dtype).element_size()
    )
    for n, t in reversed(list(tensors.items())):  # any order
        writer.write(n, t)
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and len(set(index["weight_map"].values())) > 1
    got = load_all(tmp_path)
    assert all(torch.equal(got[n], t) and got[n].dtype == dtype for n, t in tensors.items())


def test_planned_writer_single_shard_and_missing_tensor(tmp_path):
    writer = PlannedShardWriter(tmp_path, [("a", (2,)), ("b", (3,))], torch.float32, 10**9)
    writer.write("a", torch.ones(2))
    with pytest.raises(RuntimeError, match="never written"):
        writer.finish()
    writer.write("b", torch.ones(3))
    writer.finish()
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert torch.equal(load_file(tmp_path / "model.safetensors")["b"], torch.ones(3))


def test_reader_errors_missing_shard_corrupt_and_truncated(tmp_path):
    save_file({"a": torch.randn(10, 10), "b": torch.randn(3)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"c": torch.randn(4)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(SafetensorsReader(tmp_path).get("c"), load_all(tmp_path)["c"])
    (tmp_path / "model-00002-of-00002.safetensors").rename(tmp_path / "gone")
    with pytest.raises(SafetensorsError, match="missing shard"):
        SafetensorsReader(tmp_path)
    (tmp_path / "gone").write_bytes(b"\xff" * 64)
    (tmp_path / "gone").rename(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(SafetensorsError, match="corrupt"):
        SafetensorsReader(tmp_path)
    first = tmp_path / "model-00001-of-00002.safetensors"
    first.write_bytes(first.read_bytes()[:-50])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    save_file({"c": torch.randn(4)}, tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(SafetensorsError, match="truncated"):
        SafetensorsReader(tmp_path)
    with pytest.raises(SafetensorsError, match="no model.safetensors"):
        SafetensorsReader(tmp_path / "gone")


def test_dcp_stream_writer_chunks_read_back_in_any_block(tmp_path):
    full = torch.randn(4, 6, 5)
    emb = torch.randn(7, 5).to(torch.bfloat16)
    writer = DcpStreamWriter(tmp_path, bucket_bytes=200)  # several data files
    for layer in range(4):
        writer.add_tensor("stack", full[layer : layer + 1], (layer, 0, 0), full.shape)
    writer.add_tensor("emb", emb, (0, 0), emb.shape)
    writer.add_object("stack._extra_state/shard_0_4", None)
    writer.finish()
    assert len(list(tmp_path.glob("*.distcp"))) > 1
    assert json.loads((tmp_path / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    reader = DcpChunkReader(tmp_path)
    assert torch.equal(reader.read("stack"), full)
    assert torch.equal(reader.read("stack", (1, 2, 1), (2, 3, 4)), full[1:3, 2:5, 1:5])
    got = reader.read("emb")
    assert got.dtype == torch.bfloat16 and torch.equal(got, emb)
    with pytest.raises(CheckpointFormatError, match="not in checkpoint"):
        reader.read("nope")


def test_dcp_reader_errors(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no .metadata"):
        DcpChunkReader(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"garbage")
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        DcpChunkReader(tmp_path)


def test_cast_checked_overflow_and_nan():
    ok = torch.tensor([1.0, -2.0, 6e4])
    assert cast_checked("w", ok, torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="float16 cannot hold w"):
        cast_checked("w", torch.tensor([1.0, 1e5]), torch.float16)
    with pytest.raises(ValueError, match="NaN"):
        cast_checked("w", torch.tensor([float("nan")]), torch.bfloat16)
    with pytest.raises(ValueError, match="float16 cannot hold w"):
        cast_checked("w", torch.tensor([1.0, -7e4]).to(torch.bfloat16), torch.float16)
    assert torch.equal(
        cast_checked("w", torch.tensor([1e5]), torch.float64), torch.tensor([1e5], dtype=torch.float64)
    )
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(None) is None
    with pytest.raises(ValueError, match="valid:"):
        parse_dtype("fp8")
    assert parse_size("2GB") == 2 * 10**9 and parse_size("200KB") == 200_000 and parse_size(7) == 7


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_output_dir(out, force=False):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "a").exists()
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
