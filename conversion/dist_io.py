"""Streaming reader and writer of Megatron-Core's `torch_dist` dist_checkpointing format, one process.

The format is PyTorch Distributed Checkpoint (DCP): `*.distcp` data files holding `torch.save`d chunks,
a pickled `.metadata` (global shape + chunk list per key, and where each chunk lives), plus Megatron's
`metadata.json` (backend name) and `common.pt` (non-sharded objects). Loading is resharding: each rank
reads the parts of the stored chunks that overlap its own shard, so a single process may write chunks
that cover the global (TP/PP-agnostic) tensors, and the trainer loads them at any TP/PP.

Why not `dist_checkpointing.save`: it takes the whole state dict at once (memory = model size). Here
`DcpStreamWriter` drives DCP's own `FileSystemWriter` one bounded bucket at a time (one data file per
bucket) and writes the merged `.metadata` once at the end, so peak memory is one bucket.
`DcpChunkReader` reads any sub-block of a key (e.g. one layer of a layer-stacked tensor) without
materialising the rest.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StoragePrefix
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    BytesIOWriteData,
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.utils import _create_file_view
from torch.futures import Future

MEGATRON_CONFIG = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


class CheckpointFormatError(RuntimeError):
    """A dist checkpoint directory is missing, incomplete or corrupt."""


class _BucketPlanner:
    """The one method of a SavePlanner that FileSystemWriter.write_data calls: data per write item."""

    def __init__(self, data: dict[MetadataIndex, torch.Tensor | io.BytesIO]):
        self.data = data

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        return self.data[write_item.index]


class DcpStreamWriter:
    """Write a torch_dist checkpoint chunk by chunk, flushing a data file every `bucket_bytes`.

    Usage: `add_tensor(key, chunk, offsets, global_shape)` for every chunk (chunks of one key must tile
    its global shape), `add_object(unique_key, obj)` for ShardedObjects, then `finish()`.
    """

    def __init__(self, path: str | Path, *, bucket_bytes: int = 256 << 20):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.bucket_bytes = bucket_bytes
        self._writer = FileSystemWriter(str(self.path), single_file_per_rank=True, sync_files=False)
        self._writer.set_up_storage_writer(is_coordinator=True)
        self._items: list[WriteItem] = []
        self._data: dict[MetadataIndex, torch.Tensor | io.BytesIO] = {}
        self._pending = 0
        self._n_files = 0
        self._results: list = []
        self._md: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}

    def add_tensor(
        self, key: str, chunk: torch.Tensor, offsets: Sequence[int], global_shape: Sequence[int]
    ) -> None:
        chunk = chunk.detach().contiguous().cpu()
        if len(offsets) != chunk.dim() or len(global_shape) != chunk.dim():
            raise ValueError(
                f"{key}: offsets {offsets} / global shape {global_shape} vs chunk {tuple(chunk.shape)}"
            )
        props = TensorProperties(dtype=chunk.dtype)
        storage_chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=chunk.size())
        md = self._md.setdefault(key, TensorStorageMetadata(props, torch.Size(global_shape), []))
        if not isinstance(md, TensorStorageMetadata) or md.size != torch.Size(global_shape):
            raise ValueError(f"{key}: inconsistent global shape {tuple(global_shape)}")
        if md.properties.dtype != chunk.dtype:
            raise ValueError(f"{key}: chunks of mixed dtypes {md.properties.dtype} and {chunk.dtype}")
        md.chunks.append(storage_chunk)
        index = MetadataIndex(key, torch.Size(offsets))
        self._items.append(
            WriteItem(
                index=index,
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=storage_chunk, properties=props, size=torch.Size(global_shape)
                ),
            )
        )
        self._data[index] = chunk
        self._pending += chunk.numel() * chunk.element_size()
        if self._pending >= self.bucket_bytes:
            self.flush()

    def add_object(self, unique_key: str, obj: object) -> None:
        """A Megatron ShardedObject: stored as torch.save([obj]) bytes under its unique key."""
        buf = io.BytesIO()
        torch.save([obj], buf)
        index = MetadataIndex(unique_key)
        self._md[unique_key] = BytesStorageMetadata()
        self._items.append(
            WriteItem(
                index=index,
                type=WriteItemType.BYTE_IO,
                bytes_io_data=BytesIOWriteData(nbytes=len(buf.getbuffer())),
            )
        )
        self._data[index] = buf

    def flush(self) -> None:
        """Write the pending chunks to one new data file and drop them from memory."""
        if not self._items:
            return
        plan = SavePlan(items=self._items, storage_data=_StoragePrefix(f"__0_b{self._n_files:05d}_"))
        # The zip CRC32 of torch.save is the slowest part of writing and nothing checks it on load.
        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            fut: Future = self._writer.write_data(plan, _BucketPlanner(self._data))
            self._results.append(fut.wait())
        finally:
            torch.serialization.set_crc32_options(crc)
        self._n_files += 1
        self._items, self._data, self._pending = [], {}, 0

    def finish(self, common_state: dict | None = None) -> None:
        """Flush, then write `.metadata`, Megatron's `common.pt` and `metadata.json`."""
        self.flush()
        self._writer.finish(Metadata(state_dict_metadata=self._md), self._results)
        torch.save(common_state or {}, self.path / "common.pt")
        (self.path / "metadata.json").write_text(json.dumps(MEGATRON_CONFIG))


class _ChunkLoadPlanner:
    """The LoadPlanner methods FileSystemReader.read_data calls, writing into one target block."""

    def __init__(self, target: torch.Tensor):
        self.target = target

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        t = self.target
        for dim, (off, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            t = t.narrow(dim, off, length)
        return t

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise CheckpointFormatError(f"unexpected bytes item {read_item.storage_index.fqn}")


class DcpChunkReader:
    """Read sub-blocks of tensors from a torch_dist checkpoint directory (no process group needed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / ".metadata").is_file():
            raise CheckpointFormatError(f"{self.path} is not a torch_dist checkpoint: no .metadata file")
        self._reader = FileSystemReader(str(self.path))
        try:
            self.metadata = self._reader.read_metadata()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise CheckpointFormatError(f"corrupt checkpoint metadata {self.path / '.metadata'}: {e}") from e
        self._reader.set_up_storage_reader(self.metadata, is_coordinator=True)

    def keys(self) -> list[str]:
        return [
            k for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
        ]

    def tensor_meta(self, key: str) -> TensorStorageMetadata:
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise CheckpointFormatError(
                f"tensor {key!r} not in checkpoint {self.path}; it has: {sorted(self.keys())}"
            )
        return md

    def read(
        self, key: str, offsets: Sequence[int] | None = None, sizes: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The block [offsets, offsets+sizes) of `key` (the whole tensor by default), in its stored dtype."""
        md = self.tensor_meta(key)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(md.size)
        sizes = tuple(sizes) if sizes is not None else tuple(md.size)
        chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        items = create_read_items_for_chunk_list(key, md, [chunk])
        covered = sum(int(torch.Size(it.lengths).numel()) for it in items)
        if covered != torch.Size(sizes).numel():
            raise CheckpointFormatError(
                f"{key}: stored chunks cover {covered} of {torch.Size(sizes).numel()} requested elements"
            )
        if (
            len(items) == 1
            and tuple(items[0].lengths) == sizes
            and tuple(items[0].storage_offsets) == (0,) * len(sizes)
        ):
            stored = self._load_stored_chunk(items[0])  # the block is one whole stored chunk: no extra copy
            if stored is not None and tuple(stored.shape) == sizes:
                return stored
        target = torch.empty(sizes, dtype=md.properties.dtype)
        try:
            self._reader.read_data(LoadPlan(items), _ChunkLoadPlanner(target)).wait()
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, AssertionError) as e:
            raise CheckpointFormatError(
                f"cannot read {key!r} from {self.path} (corrupt or truncated file?): {e}"
            ) from e
        return target

    def _load_stored_chunk(self, item: ReadItem) -> torch.Tensor | None:
        """torch.load one stored chunk straight from its file range (None if stored with transforms)."""
        info = self.metadata.storage_data[item.storage_index]
        if info.transform_descriptors:
            return None
        try:
            with open(self.path / info.relative_path, "rb") as f:
                return torch.load(
                    _create_file_view(f, info.offset, info.length), map_location="cpu", weights_only=True
                )
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
            raise CheckpointFormatError(
                f"cannot read {item.storage_index.fqn!r} from {self.path} (corrupt or truncated file?): {e}"
            ) from e
