"""Streaming safetensors I/O over HF checkpoint directories.

Users point this at a 1.3 TB DeepSeek-R1 directory (163 shards), so nothing here loads a whole shard: the reader
validates each shard's safetensors header up front and then reads one tensor at a time with ``pread`` at the
offsets the header gives; the writer buffers at most ``max_shard_bytes`` before it flushes a shard.

Deviation from "read with ``safe_open``": ``safe_open`` memory-maps the shard, and every page a streaming pass
touches stays in the process's resident set until the map is closed — a pass over a 4 GB checkpoint then shows a
4 GB peak RSS although it never holds more than one tensor. Reading at the header's offsets gives the same bytes
(tests compare with ``safe_open``/``load_file``) with memory that really is bounded by the largest tensor. Every file is published atomically (temp name in the same
directory, fsync, ``os.replace``), so a crash never leaves a half-written file under a final name.

Layout written (what transformers reads): ``model-00001-of-0000N.safetensors`` ... plus
``model.safetensors.index.json`` = ``{"metadata": {"total_size": <bytes of tensor data>}, "weight_map": {name:
file}}``; a single shard is named ``model.safetensors`` and gets no index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import CheckpointFormatError, UnsafeInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "HFCheckpointReader",
    "SafetensorsStreamWriter",
    "ShardedSafetensorsWriter",
    "TensorInfo",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "file_sha256",
    "plan_shards",
    "shard_file_name",
    "write_safetensors_file",
    "INDEX_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_ST_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I64": ("int64", 8), "I32": ("int32", 4),
    "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1),
}


# ----------------------------------------------------------------------------------------------- atomic files
def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_safetensors_file(
    path: str | os.PathLike[str], tensors: dict[str, "torch.Tensor"], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` to a temp name, fsync, rename."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata or {"format": "pt"})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


_ST_CODES = {name: code for code, (name, _) in _ST_DTYPES.items()}


def _dtype_name(dtype: "torch.dtype | str") -> str:
    return str(dtype).removeprefix("torch.")


class SafetensorsStreamWriter:
    """Write one safetensors file tensor by tensor, so memory is bounded by one tensor, not by the shard.

    Why: the reverse conversion used to build a whole output shard (up to ``max_shard_bytes``, 5 GB by default)
    in memory before ``save_file``. The safetensors header only needs names, dtypes and shapes, which are known
    before any data is produced, so the header is written first and each tensor's bytes are appended as soon as
    the tensor exists. Tensors must arrive in the declared order, with the declared dtype and shape (checked:
    anything else would make the header lie). The file lives under a temp name until :meth:`commit` (fsync,
    ``os.replace``, directory fsync); :meth:`abort` removes it. ``max_write_bytes`` records the largest single
    write — the most tensor data this writer ever had to hold at once (tests pin it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Iterable[tuple[str, "torch.dtype | str", Iterable[int]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._entries: list[tuple[str, str, tuple[int, ...], int]] = []
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in entries:
            dname = _dtype_name(dtype)
            if dname not in _ST_CODES:
                raise CheckpointFormatError(f"tensor `{name}`: dtype `{dname}` cannot be stored in safetensors.")
            if name in header:
                raise CheckpointFormatError(f"tensor `{name}` is declared twice for `{self.path}`.")
            shape = tuple(int(d) for d in shape)
            n = 1
            for d in shape:
                n *= d
            nbytes = n * _ST_DTYPES[_ST_CODES[dname]][1]
            header[name] = {"dtype": _ST_CODES[dname], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._entries.append((name, dname, shape, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors itself pads
        self.header_bytes = 8 + len(raw)
        self.data_bytes = offset
        self._next = 0
        self.max_write_bytes = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: "torch.Tensor") -> None:
        """Append ``tensor``'s bytes; it must be the next declared tensor, with the declared dtype and shape."""
        if self._fh is None:
            raise CheckpointFormatError(f"`write` called on a finished safetensors stream `{self.path}`.")
        if self._next >= len(self._entries):
            raise CheckpointFormatError(f"tensor `{name}` was not declared for `{self.path}` (all declared ones written).")
        ename, dname, shape, nbytes = self._entries[self._next]
        if name != ename:
            raise CheckpointFormatError(f"`{self.path}`: expected tensor `{ename}` next, got `{name}`.")
        if _dtype_name(tensor.dtype) != dname or tuple(tensor.shape) != shape:
            raise CheckpointFormatError(
                f"tensor `{name}` for `{self.path}` is {_dtype_name(tensor.dtype)} {tuple(tensor.shape)}; the header "
                f"declared {dname} {shape}."
            )
        if nbytes:
            flat = tensor.contiguous().reshape(-1).view(_torch_uint8())
            self._fh.write(memoryview(flat.numpy()))
            self.max_write_bytes = max(self.max_write_bytes, nbytes)
        self._next += 1

    def commit(self) -> None:
        """Check every declared tensor was written, then fsync and publish under the final name."""
        if self._fh is None:
            raise CheckpointFormatError(f"safetensors stream `{self.path}` was already finished.")
        if self._next != len(self._entries):
            missing = self._entries[self._next][0]
            self.abort()
            raise CheckpointFormatError(f"`{self.path}`: tensor `{missing}` and later ones were never written.")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temp file (nothing is published)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and self._fh is not None:
            try:
                self.commit()
            except BaseException:
                self.abort()  # never leave the handle or a half-published temp file behind
                raise
        elif exc_type is not None:
            self.abort()


def _torch_uint8() -> "torch.dtype":
    import torch

    return torch.uint8


# ------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one tensor, known without reading its data."""

    name: str
    file: str
    dtype: str  # torch dtype name, e.g. "bfloat16", "float8_e4m3fn"
    shape: tuple[int, ...]
    nbytes: int
    offset: int = -1  # absolute byte offset of the data in the file (-1: not a safetensors file)


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header; raise naming the file if it is truncated or corrupt."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise CheckpointFormatError(
            f"shard `{path}` is listed in the index but does not exist; re-download it or fix the index."
        ) from exc
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointFormatError(f"shard `{path}` is truncated ({size} bytes): no safetensors header.")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, 100 << 20):
            raise CheckpointFormatError(
                f"shard `{path}` is corrupt or truncated: header claims {hlen} bytes, file has {size}."
            )
        try:
            header = json.loads(fh.read(hlen))
        except ValueError as exc:
            raise CheckpointFormatError(f"shard `{path}` has a corrupt safetensors header: {exc}") from exc
    end = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        end = max(end, int(meta["data_offsets"][1]))
    if 8 + hlen + end > size:
        raise CheckpointFormatError(
            f"shard `{path}` is truncated: tensors need {8 + hlen + end} bytes but the file has {size}; "
            "the download or copy was interrupted — fetch the file again."
        )
    return header


class HFCheckpointReader:
    """Lazy, read-only view of an HF checkpoint directory (``config.json`` + index + safetensors shards).

    Only headers are parsed up front (to know names, shapes, dtypes and catch missing/truncated shards early);
    tensor data is read one tensor at a time with ``pread`` (at most ``max_open`` file descriptors stay open).

    >>> r = HFCheckpointReader("ckpt/")                        # doctest: +SKIP
    >>> w = r.get_dequantized("model.layers.3.mlp.experts.0.gate_proj.weight")  # FP8 -> BF16  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_pickle: bool = False, max_open: int = 8) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointFormatError(f"`hf` must be a checkpoint directory; `{self.path}` is not a directory.")
        self.max_open = max_open
        self._handles: OrderedDict[str, int] = OrderedDict()
        self._pickled: dict[str, dict[str, Any]] = {}
        self.infos: dict[str, TensorInfo] = {}
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointFormatError(f"index `{index}` is not valid JSON with a `weight_map`: {exc}") from exc
            files = sorted(set(weight_map.values()))
        elif (self.path / SINGLE_NAME).exists():
            weight_map, files = None, [SINGLE_NAME]
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
            if not files:
                pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
                if pickles and not allow_pickle:
                    raise UnsafeInputError(
                        f"`{self.path}` holds only pickle-based weights ({', '.join(pickles[:3])}); unpickling "
                        "files from outside can run arbitrary code. Convert them to safetensors, or pass "
                        "`allow_pickle=True` (CLI `--allow-pickle`) if you trust their source."
                    )
                if not pickles:
                    raise CheckpointFormatError(
                        f"`{self.path}` has no `{INDEX_NAME}`, no `{SINGLE_NAME}` and no *.safetensors shards."
                    )
                self._load_pickles(pickles)
                return
        for fname in files:
            header = _read_header(self.path / fname)
            base = 8 + self._hlen(self.path / fname)
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                dt = _ST_DTYPES.get(meta["dtype"])
                if dt is None:
                    raise CheckpointFormatError(f"shard `{fname}`: tensor `{key}` has unsupported dtype {meta['dtype']}.")
                if weight_map is not None and weight_map.get(key) != fname:
                    continue  # stale copy; the index decides
                start, stop = meta["data_offsets"]
                self.infos[key] = TensorInfo(key, fname, dt[0], tuple(meta["shape"]), int(stop) - int(start),
                                             base + int(start))
        if weight_map is not None:
            missing = [k for k in weight_map if k not in self.infos]
            if missing:
                raise CheckpointFormatError(
                    f"{len(missing)} tensors listed in `{index}` are not in their shard, e.g. `{missing[0]}` "
                    f"(expected in `{weight_map[missing[0]]}`); the shard is stale or the index is wrong."
                )

    @staticmethod
    def _hlen(path: Path) -> int:
        with open(path, "rb") as fh:
            return int(struct.unpack("<Q", fh.read(8))[0])

    def _load_pickles(self, files: list[str]) -> None:
        import torch

        for fname in files:
            sd = torch.load(self.path / fname, map_location="cpu", weights_only=True, mmap=True)
            self._pickled[fname] = sd
            for key, t in sd.items():
                self.infos[key] = TensorInfo(key, fname, str(t.dtype).removeprefix("torch."), tuple(t.shape),
                                             t.numel() * t.element_size())

    # -- metadata ------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The directory's ``config.json`` as a dict."""
        cfg = self.path / "config.json"
        if not cfg.exists():
            raise CheckpointFormatError(f"`{cfg}` is missing; an HF checkpoint directory needs its config.json.")
        return json.loads(cfg.read_text())

    def names(self) -> list[str]:
        """All tensor names (scales included), sorted."""
        return sorted(self.infos)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise CheckpointFormatError(f"tensor `{name}` is not in checkpoint `{self.path}`.") from None

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    # -- data ----------------------------------------------------------------------------------------------
    def _fd(self, fname: str) -> int:
        fd = self._handles.get(fname)
        if fd is None:
            try:
                fd = os.open(self.path / fname, os.O_RDONLY)
            except OSError as exc:
                raise CheckpointFormatError(f"cannot open shard `{self.path / fname}`: {exc}") from exc
            self._handles[fname] = fd
            while len(self._handles) > self.max_open:
                os.close(self._handles.popitem(last=False)[1])
        else:
            self._handles.move_to_end(fname)
        return fd

    def get(self, name: str) -> "torch.Tensor":
        """One tensor exactly as stored (FP8 stays FP8), read with ``pread`` into fresh memory.

        Not memory-mapped on purpose: pages touched through a map stay in the process's resident set, so a
        streaming pass over a 1.3 TB checkpoint would look (and be accounted) like it holds whole shards.
        """
        import torch

        info = self.info(name)
        if self._pickled:
            return self._pickled[info.file][name]
        buf = bytearray(info.nbytes)
        fd = self._fd(info.file)
        view, pos = memoryview(buf), 0
        while pos < info.nbytes:
            n = os.preadv(fd, [view[pos:]], info.offset + pos)
            if n <= 0:
                raise CheckpointFormatError(
                    f"cannot read tensor `{name}` from `{self.path / info.file}`: file ended early (truncated?)."
                )
            pos += n
        dtype = getattr(torch, info.dtype)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(info.shape)

    def is_fp8(self, name: str) -> bool:
        return self.info(name).dtype.startswith("float8")

    def get_dequantized(
        self, name: str, out_dtype: "torch.dtype | None" = None, block: tuple[int, int] = (128, 128)
    ) -> "torch.Tensor":
        """Tensor ``name`` in ``out_dtype`` (default BF16): FP8 ones dequantized with their ``_scale_inv``."""
        import torch

        from adnanny_ckpt.fp8 import dequantize_blocks, scale_inv_name

        out_dtype = torch.bfloat16 if out_dtype is None else out_dtype
        t = self.get(name)
        if t.dtype == torch.float8_e4m3fn:
            sname = scale_inv_name(name)
            if sname not in self.infos:
                raise CheckpointFormatError(
                    f"FP8 tensor `{name}` in `{self.path / self.info(name).file}` has no `{sname}`; the checkpoint "
                    "is incomplete (a shard or the index is missing the scale)."
                )
            return dequantize_blocks(t, self.get(sname), block, out_dtype=out_dtype, name=name)
        return t if t.dtype == out_dtype else t.to(out_dtype)

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, "torch.Tensor"]]:
        """Yield ``(name, tensor)`` one at a time, grouped by shard to keep reads sequential."""
        names = self.names() if names is None else list(names)
        for name in sorted(names, key=lambda n: (self.info(n).file, n)):
            yield name, self.get(name)

    def close(self) -> None:
        while self._handles:
            os.close(self._handles.popitem()[1])

    def __del__(self) -> None:
        # Runs at interpreter exit too, when module globals (``os``, ``contextlib``) may already be gone: touch
        # nothing but the handles and swallow everything, so exit prints no "Exception ignored in __del__".
        handles = self.__dict__.get("_handles")
        if not handles:
            return
        try:
            self.close()
        except BaseException:  # noqa: BLE001 - a finaliser must never raise
            pass

    def __enter__(self) -> "HFCheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------- writing
def shard_file_name(index: int, total: int) -> str:
    """HF shard naming: ``model-00001-of-00004.safetensors`` (``model.safetensors`` when there is one)."""
    return SINGLE_NAME if total == 1 else f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy, order-preserving split of ``(name, nbytes)`` into shards of at most ``max_shard_bytes``.

    A tensor larger than the limit gets a shard of its own. Deterministic, so a resumed run plans the same shards.
    """
    if max_shard_bytes <= 0:
        raise CheckpointFormatError(f"`max_shard_bytes` must be > 0; got {max_shard_bytes}.")
    shards: list[list[str]] = []
    cur: list[str] = []
    cur_bytes = 0
    for name, nbytes in sizes:
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    return shards


class ShardedSafetensorsWriter:
    """Streaming writer of an HF safetensors checkpoint: ``add`` tensors, ``close`` writes the index.

    Shards are flushed as soon as the buffer would exceed ``max_shard_bytes`` (so memory stays bounded by one
    shard), first under provisional names ``.model-part-00001.safetensors``; ``close`` renames them to the
    ``-of-N`` names once ``N`` is known and writes the index atomically.
    """

    def __init__(self, out_dir: str | os.PathLike[str], max_shard_bytes: int = 5 << 30) -> None:
        if max_shard_bytes <= 0:
            raise CheckpointFormatError(f"`max_shard_bytes` must be > 0; got {max_shard_bytes}.")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = int(max_shard_bytes)
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._parts: list[tuple[Path, list[str]]] = []
        self._seen: set[str] = set()
        self.total_size = 0
        self.closed = False

    def add(self, name: str, tensor: "torch.Tensor") -> None:
        if self.closed:
            raise CheckpointFormatError("`add` called on a closed ShardedSafetensorsWriter.")
        if name in self._seen:
            raise CheckpointFormatError(f"tensor `{name}` was added twice to the checkpoint in `{self.out_dir}`.")
        self._seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self._buf and self._buf_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buf[name] = tensor
        self._buf_bytes += nbytes
        self.total_size += nbytes

    def _flush(self) -> None:
        if not self._buf:
            return
        part = self.out_dir / f".model-part-{len(self._parts) + 1:05d}.safetensors"
        write_safetensors_file(part, self._buf)
        self._parts.append((part, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Flush, rename parts to their final names, write the index; returns the weight map."""
        if self.closed:
            raise CheckpointFormatError("ShardedSafetensorsWriter.close() called twice.")
        self._flush()
        self.closed = True
        total = len(self._parts)
        weight_map: dict[str, str] = {}
        for i, (part, names) in enumerate(self._parts):
            final = shard_file_name(i, total)
            os.replace(part, self.out_dir / final)
            for n in names:
                weight_map[n] = final
        fsync_dir(self.out_dir)
        if total > 1:
            write_index(self.out_dir, weight_map, self.total_size)
        return weight_map

    def __enter__(self) -> "ShardedSafetensorsWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and not self.closed:
            self.close()


def write_index(out_dir: str | os.PathLike[str], weight_map: dict[str, str], total_size: int) -> None:
    """Atomically write ``model.safetensors.index.json``."""
    atomic_write_json(
        Path(out_dir) / INDEX_NAME,
        {"metadata": {"total_size": int(total_size)}, "weight_map": dict(sorted(weight_map.items()))},
    )


__all__.append("write_index")
