"""megatron-core ``dist_checkpointing`` *torch_dist* files, written and read one rank / one chunk at a time.

The format is PyTorch Distributed Checkpoint (DCP) plus two megatron files:

* ``__<rank>_0.distcp`` — each rank's tensor pieces, serialized by DCP's own ``FileSystemWriter``;
* ``.metadata`` — a pickled ``torch.distributed.checkpoint.metadata.Metadata``: for every sharded key its global
  shape, dtype and the list of chunks (offset, size), and where each chunk's bytes are;
* ``common.pt`` — megatron's non-sharded state (here a small dict of plain values);
* ``metadata.json`` — ``{"sharded_backend": "torch_dist", ...}``, which megatron checks before loading.

Keys and global shapes are megatron-core's *sharded* keys (see :mod:`adnanny_ckpt.names`), which is what lets
``dist_checkpointing.load`` reshard the checkpoint into any TP/PP/EP layout. We run DCP's writer per rank without a
process group (one rank file at a time, tensors produced lazily), then write one merged ``.metadata`` — the same
bytes a distributed ``save`` would have produced with one process per rank.

Reading (:class:`TorchDistReader`) goes through the metadata's chunk table and ``torch.load(weights_only=True)``
of each chunk's bytes, so only the pieces asked for are read; it handles any chunking, including checkpoints that
megatron itself saved under another layout.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import CheckpointFormatError

if TYPE_CHECKING:
    import torch

__all__ = ["write_rank_file", "write_global_metadata", "TorchDistReader", "METADATA_JSON", "write_common"]

METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                 "common_backend_version": 1}


def _planner_cls() -> type:
    from torch.distributed.checkpoint.planner import SavePlanner

    class _LazyPlanner(SavePlanner):  # only resolve_data is used by the storage writer
        def __init__(self, produce: Callable[[Any], "torch.Tensor"]) -> None:
            self._produce = produce

        def set_up_planner(self, *args: Any, **kwargs: Any) -> None:
            return None

        def create_local_plan(self) -> Any:  # pragma: no cover - not used
            raise NotImplementedError

        def create_global_plan(self, all_plans: Any) -> Any:  # pragma: no cover
            raise NotImplementedError

        def finish_plan(self, new_plan: Any) -> Any:  # pragma: no cover
            return new_plan

        def resolve_data(self, write_item: Any) -> "torch.Tensor":
            return self._produce(write_item)

    return _LazyPlanner


def write_rank_file(
    directory: Path,
    rank: int,
    items: Sequence[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], "torch.dtype"]],
    produce: Callable[[int], "torch.Tensor"],
) -> list[dict[str, Any]]:
    """Write one rank's chunks to ``__<rank>_0.distcp`` with DCP's writer; return the storage records.

    ``items[i] = (key, global_shape, offsets, sizes, dtype)``; ``produce(i)`` returns chunk ``i``'s tensor (shape
    ``sizes``), called lazily in order so only one chunk is in memory at a time.
    """
    import torch
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import _StoragePrefix
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    write_items = []
    pos: dict[tuple[str, tuple[int, ...]], int] = {}
    for i, (key, gshape, offs, sizes, dtype) in enumerate(items):
        idx = MetadataIndex(fqn=key, offset=torch.Size(offs), index=0)
        pos[(key, tuple(offs))] = i
        write_items.append(WriteItem(
            index=idx, type=WriteItemType.SHARD,
            tensor_data=TensorWriteData(
                chunk=ChunkStorageMetadata(offsets=torch.Size(offs), sizes=torch.Size(sizes)),
                properties=TensorProperties(dtype=dtype), size=torch.Size(gshape))))

    def _resolve(wi: Any) -> "torch.Tensor":
        i = pos[(wi.index.fqn, tuple(wi.index.offset))]
        t = produce(i)
        want = tuple(items[i][3])
        if tuple(t.shape) != want or t.dtype != items[i][4]:
            raise CheckpointFormatError(f"chunk of `{items[i][0]}`: produced {tuple(t.shape)} {t.dtype}, expected {want}.")
        return t.contiguous()

    writer = FileSystemWriter(str(directory), single_file_per_rank=True, sync_files=True, thread_count=1,
                              overwrite=True)
    writer.set_up_storage_writer(True, rank=rank, use_collectives=False)
    plan = SavePlan(items=write_items, storage_data=_StoragePrefix(f"__{rank}_"))
    results = writer.write_data(plan, _planner_cls()(_resolve)).wait()
    out = []
    for r in results:
        sd = r.storage_data
        out.append({"key": r.index.fqn, "offsets": list(r.index.offset), "file": sd.relative_path,
                    "offset": sd.offset, "length": sd.length})
    return out


def write_global_metadata(
    directory: Path,
    tensors: dict[str, tuple[tuple[int, ...], "torch.dtype", list[tuple[tuple[int, ...], tuple[int, ...]]]]],
    records: list[dict[str, Any]],
) -> None:
    """Write the merged ``.metadata`` (via DCP's writer, temp + fsync + rename) for all ranks' records."""
    import torch
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.storage import WriteResult

    sdm = {
        key: TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype), size=torch.Size(shape),
            chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in chunks])
        for key, (shape, dtype, chunks) in tensors.items()
    }
    results = [
        WriteResult(index=MetadataIndex(r["key"], torch.Size(r["offsets"])), size_in_bytes=r["length"],
                    storage_data=_StorageInfo(r["file"], r["offset"], r["length"]))
        for r in records
    ]
    writer = FileSystemWriter(str(directory), single_file_per_rank=True, sync_files=True, overwrite=True)
    writer.set_up_storage_writer(True)
    writer.finish(Metadata(state_dict_metadata=sdm), [results])


def write_common(directory: Path, common: dict[str, Any]) -> None:
    """``common.pt`` + ``metadata.json`` (atomic)."""
    import torch

    from adnanny_ckpt.safetensors_io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(common, buf)
    atomic_write_bytes(directory / "common.pt", buf.getvalue())
    atomic_write_bytes(directory / "metadata.json", json.dumps(METADATA_JSON).encode())


class TorchDistReader:
    """Read regions of tensors from a torch_dist checkpoint directory, chunk by chunk."""

    def __init__(self, directory: str | os.PathLike[str], max_open: int = 4) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.path = Path(directory)
        meta_file = self.path / ".metadata"
        if not meta_file.exists():
            raise CheckpointFormatError(
                f"`{self.path}` has no `.metadata`: not a torch_dist checkpoint, or the conversion did not finish."
            )
        try:
            self.metadata = FileSystemReader(str(self.path)).read_metadata()
        except Exception as exc:
            raise CheckpointFormatError(f"cannot read `{meta_file}` (truncated or corrupt?): {exc}") from exc
        self._files: OrderedDict[str, Any] = OrderedDict()
        self.max_open = max_open

    def keys(self) -> list[str]:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        return sorted(k for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata))

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._md(key).size)

    def dtype(self, key: str) -> "torch.dtype":
        return self._md(key).properties.dtype

    def chunks(self, key: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        return [(tuple(c.offsets), tuple(c.sizes)) for c in self._md(key).chunks]

    def _md(self, key: str) -> Any:
        try:
            return self.metadata.state_dict_metadata[key]
        except KeyError:
            raise CheckpointFormatError(f"key `{key}` is not in torch_dist checkpoint `{self.path}`.") from None

    def _fh(self, rel: str) -> Any:
        fh = self._files.get(rel)
        if fh is None:
            p = self.path / rel
            if not p.exists():
                raise CheckpointFormatError(f"`{p}` is listed in `.metadata` but missing; the checkpoint is incomplete.")
            fh = open(p, "rb")  # noqa: SIM115 - cached handle, closed in close()
            self._files[rel] = fh
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(rel)
        return fh

    def read_chunk(self, key: str, offsets: tuple[int, ...]) -> "torch.Tensor":
        import torch
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = self.metadata.storage_data.get(MetadataIndex(key, torch.Size(offsets)))
        if info is None:
            raise CheckpointFormatError(f"`.metadata` of `{self.path}` has no storage entry for `{key}` at {offsets}.")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointFormatError(f"`{key}`: stream transforms {info.transform_descriptors} are not supported.")
        fh = self._fh(info.relative_path)
        fh.seek(info.offset)
        data = fh.read(info.length)
        if len(data) != info.length:
            raise CheckpointFormatError(
                f"`{self.path / info.relative_path}` is truncated: chunk of `{key}` needs bytes "
                f"{info.offset}..{info.offset + info.length}."
            )
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointFormatError(f"chunk of `{key}` in `{info.relative_path}` is corrupt: {exc}") from exc

    def read(self, key: str, offsets: Sequence[int] | None = None, sizes: Sequence[int] | None = None) -> "torch.Tensor":
        """The region ``[offsets, offsets + sizes)`` of tensor ``key`` (whole tensor by default)."""
        import torch

        md = self._md(key)
        shape = tuple(md.size)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(shape)
        sizes = tuple(sizes) if sizes is not None else shape
        out = torch.empty(sizes, dtype=md.properties.dtype)
        covered = 0
        for c in md.chunks:
            co, cs = tuple(c.offsets), tuple(c.sizes)
            lo = [max(a, b) for a, b in zip(offsets, co)]
            hi = [min(a + s, b + t) for a, s, b, t in zip(offsets, sizes, co, cs)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            t = self.read_chunk(key, co)
            src = t[tuple(slice(l - b, h - b) for l, h, b in zip(lo, hi, co))]
            out[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, offsets))] = src
            n = 1
            for l, h in zip(lo, hi):
                n *= h - l
            covered += n
        total = 1
        for s in sizes:
            total *= s
        if covered != total:
            raise CheckpointFormatError(
                f"`{key}`: chunks cover {covered} of the {total} requested elements; the checkpoint is incomplete."
            )
        return out

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
