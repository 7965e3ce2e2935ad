"""Streaming safetensors I/O without mmap: read one tensor at a time, write planned shards in place.

Reading uses explicit `readinto` instead of safetensors' mmap so resident memory stays at the tensor
being converted (mmapped pages would count as RSS until evicted). Writing plans the shards up front
(all names, shapes and dtypes are known from the config before any tensor is produced), writes each
file's header first and every tensor at its planned offset, so nothing is buffered beyond one tensor.
File format: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian data.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsError(RuntimeError):
    """A missing, truncated or corrupt safetensors file or index."""


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 << 20:
            raise SafetensorsError(
                f"corrupt safetensors file {path}: header length {n} exceeds the file size {size}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"corrupt safetensors file {path}: unreadable JSON header ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"corrupt safetensors file {path}: header is not a JSON object")
    return header, 8 + n


class SafetensorsReader:
    """All tensors of an HF directory (`model.safetensors` or sharded with `model.safetensors.index.json`)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SafetensorsError(f"corrupt index {index}: {e}") from e
            files = sorted(set(weight_map.values()))
        elif (self.dir / SINGLE_NAME).is_file():
            weight_map, files = None, [SINGLE_NAME]
        else:
            raise SafetensorsError(f"no {SINGLE_NAME} or {INDEX_NAME} in {self.dir}")
        missing = [f for f in files if not (self.dir / f).is_file()]
        if missing:
            raise SafetensorsError(f"missing shard(s) listed in {index}: {missing}")
        self.entries: dict[str, _Entry] = {}
        for fname in files:
            self._scan(self.dir / fname)
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(self.entries))
            if absent:
                raise SafetensorsError(
                    f"tensors listed in {index} but absent from their shards: {absent[:5]}"
                )

    def _scan(self, path: Path) -> None:
        header, data_start = _read_header(path)
        size = path.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = tuple(int(s) for s in info["shape"])
            except (KeyError, TypeError, ValueError) as e:
                raise SafetensorsError(
                    f"corrupt safetensors file {path}: bad entry for {name!r} ({e})"
                ) from e
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or data_start + end > size:
                raise SafetensorsError(
                    f"corrupt or truncated safetensors file {path}: tensor {name!r} needs bytes "
                    f"[{data_start + begin}, {data_start + end}) of a {size}-byte file"
                )
            self.entries[name] = _Entry(path, dtype, shape, data_start + begin, nbytes)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise SafetensorsError(f"tensor {name!r} not found in {self.dir}")
        e = self.entries[name]
        out = torch.empty(e.shape, dtype=e.dtype)
        buf = memoryview(out.view(-1).view(torch.uint8).numpy()) if e.nbytes else memoryview(b"")
        with open(e.file, "rb") as f:
            f.seek(e.start)
            got = f.readinto(buf)
        if got != e.nbytes:
            raise SafetensorsError(
                f"truncated safetensors file {e.file}: read {got} of {e.nbytes} bytes of {name!r}"
            )
        return out


def parse_size(size: str | int) -> int:
    """'2GB' / '500MB' / '200KB' / bytes -> bytes (decimal units, as transformers)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB)?\s*", size)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use e.g. '2GB', '500MB'")
    units = {
        None: 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KiB": 2**10,
        "MiB": 2**20,
        "GiB": 2**30,
    }
    return int(float(m.group(1)) * units[m.group(2)])


@dataclass
class _Shard:
    names: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    nbytes: int = 0


class PlannedShardWriter:
    """Write tensors whose names/shapes/dtype are known up front into size-bounded shards + an index.

    `plan` is [(name, shape)] in write order; every tensor is cast-checked by the caller and must have
    `dtype`. Shards are named like transformers' (`model-0000i-of-0000n.safetensors`, or one
    `model.safetensors` without index when everything fits one shard).
    """

    def __init__(
        self,
        out_dir: str | Path,
        plan: list[tuple[str, tuple[int, ...]]],
        dtype: torch.dtype,
        max_shard_bytes: int,
    ):
        self.dir = Path(out_dir)
        self.dtype = dtype
        elem = torch.empty((), dtype=dtype).element_size()
        shards: list[_Shard] = [_Shard()]
        for name, shape in plan:
            nbytes = math.prod(shape) * elem
            if shards[-1].names and shards[-1].nbytes + nbytes > max_shard_bytes:
                shards.append(_Shard())
            s = shards[-1]
            s.header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [s.nbytes, s.nbytes + nbytes],
            }
            s.names.append(name)
            s.nbytes += nbytes
        n = len(shards)
        self.files = (
            [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.where: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self._data_start: list[int] = []
        for i, s in enumerate(shards):
            header = json.dumps(
                {"__metadata__": {"format": "pt"}, **s.header}, separators=(",", ":")
            ).encode()
            header += b" " * (-len(header) % 8)  # 8-byte alignment of the data, as safetensors does
            with open(self.dir / self.files[i], "wb") as f:
                f.write(struct.pack("<Q", len(header)))
                f.write(header)
                f.truncate(8 + len(header) + s.nbytes)
            self._data_start.append(8 + len(header))
            for name in s.names:
                begin, _ = s.header[name]["data_offsets"]
                self.where[name] = (i, begin, tuple(s.header[name]["shape"]))
        self._written: set[str] = set()
        self.total_size = sum(s.nbytes for s in shards)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.where:
            raise KeyError(f"tensor {name!r} is not in the planned output")
        if name in self._written:
            raise KeyError(f"tensor {name!r} written twice")
        i, begin, shape = self.where[name]
        if tuple(tensor.shape) != shape or tensor.dtype != self.dtype:
            raise ValueError(
                f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {self.dtype}"
            )
        data = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
        with open(self.dir / self.files[i], "r+b") as f:
            f.seek(self._data_start[i] + begin)
            f.write(memoryview(data))
        self._written.add(name)

    def finish(self) -> None:
        """Check every planned tensor was written; write the index when there are several shards."""
        missing = sorted(set(self.where) - self._written)
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors never written, e.g. {missing[:3]}")
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: self.files[i] for name, (i, _, _) in self.where.items()},
            }
            (self.dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))
