"""Output-directory handling, dtype names and the cast check shared by both conversion directions."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
# Files of an HF directory that are not weights: copied as they are (tokenizer, generation config, ...).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; None stays None (keep the source dtype)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """transformers' spelling of a dtype in config.json ('bfloat16', 'float32', ...)."""
    return str(dtype).removeprefix("torch.")


def cast_checked(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`tensor` in `dtype`; fails when a value is beyond the range of `dtype` (e.g. > 65504 for fp16).

    Only casts to a type of smaller range are checked (min/max of the source, one fast pass): other
    casts cannot overflow. NaN in the source also fails there.
    """
    if dtype is None or tensor.dtype == dtype:
        return tensor
    if (
        tensor.is_floating_point()
        and dtype.is_floating_point
        and torch.finfo(dtype).max < torch.finfo(tensor.dtype).max
    ):
        lo, hi = (float(v) for v in torch.aminmax(tensor.reshape(-1)))
        limit = torch.finfo(dtype).max
        if lo != lo or hi != hi:
            raise ValueError(f"{name} contains NaN values")
        if max(-lo, hi) > limit:
            raise ValueError(
                f"dtype {dtype_name(dtype)} cannot hold {name}: max |value| {max(-lo, hi):.4g} exceeds its range {limit:.4g}"
            )
    return tensor.to(dtype)


def load_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {what} {path}: {e}") from e


def copy_hf_side_files(src: Path, dst: Path) -> None:
    """Copy config, generation config and tokenizer files (everything but weights) from src to dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in WEIGHT_INDEX_NAMES:
            shutil.copy2(f, dst / f.name)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, force: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; rename it to `out_dir` on success, delete it on failure.

    A non-empty `out_dir` is an error unless `force`; then it is replaced only after the new output
    is complete, so a failed conversion never leaves a half-written or missing output.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"output directory {out} is not empty; pass --force (force=True) to overwrite it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
