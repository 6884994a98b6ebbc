"""Sharded megatron-core checkpoint -> HF safetensors — paper §4.1.2, reverse direction.

Shards are merged by layer and expert index (a torch_dist checkpoint is read through its chunk table, so any
chunking works, including one megatron re-saved under another layout; legacy per-rank files are memory-mapped
one rank at a time and re-mapped every ``McoreCheckpoint.remap_bytes`` copied, so mapped pages never pile up
in the resident set), unfused (``linear_fc1`` -> gate, up; ``linear_qkv`` -> q, k, v; vocab padding dropped)
and streamed into HF shards of at most ``max_shard_bytes`` with a correct index — the safetensors header first
(shapes and dtypes are planned from metadata), then each tensor appended as it is produced, so memory is
bounded by one parameter, not by the shard — in BF16 or re-quantized to FP8 with 128×128 block scales
(DeepSeek's BF16 list stays BF16: :func:`adnanny_ckpt.fp8.keeps_bf16`). The MTP layer's ``embed_tokens`` /
``shared_head.head`` are written back as copies of the main ones, as in DeepSeek's release.

Resumable: shards are planned up front (deterministic), written to ``OUT.partial/`` and recorded in a manifest
with their SHA-256; a rerun skips finished shards. ``OUT.partial`` becomes ``OUT`` at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import AdNannyCkptError, CheckpointFormatError
from adnanny_ckpt.hf2mcore import MANIFEST_NAME, iteration_dir_name, load_manifest
from adnanny_ckpt.layout import ParallelLayout
from adnanny_ckpt.names import ModelSpec, ParamSpec, mcore_params, model_spec_from_hf_config, sharded_key
from adnanny_ckpt.safetensors_io import (
    atomic_write_json,
    file_sha256,
    fsync_dir,
    plan_shards,
    shard_file_name,
    SafetensorsStreamWriter,
    write_index,
)
from adnanny_ckpt.shards import mcore_shape, rank_chunks, rank_name, unfuse

if TYPE_CHECKING:
    import torch

__all__ = ["mcore_to_hf", "McoreCheckpoint"]


class McoreCheckpoint:
    """Read full megatron parameters from an adnanny-ckpt megatron checkpoint (torch_dist or legacy)."""

    #: legacy rank files: close the memory map after this many bytes were copied out of it (bounds RSS)
    remap_bytes: int = 256 << 20

    def __init__(self, mcore_dir: str | os.PathLike[str]) -> None:
        self.path = Path(mcore_dir)
        self.manifest = load_manifest(self.path)
        m = self.manifest
        self.opts = m["options"]
        self.hf_config = m["hf_config"]
        self.spec: ModelSpec = model_spec_from_hf_config(self.hf_config)
        self.layout = ParallelLayout.from_dict(m["layout"])
        self.te_names = bool(self.opts["te_names"])
        self.padded_vocab = int(m["padded_vocab_size"])
        self.params = mcore_params(self.spec, te_names=self.te_names, mtp=bool(m["mtp_copied"]))
        self.ckpt_dir = self.path / iteration_dir_name(self.opts.get("iteration"))
        self.format = self.opts["ckpt_format"]
        self._legacy_sd: dict[str, Any] | None = None
        self._legacy_rel: str | None = None
        self._legacy_copied = 0
        self._dist = None
        if self.format == "torch_dist":
            from adnanny_ckpt.torch_dist import TorchDistReader

            self._dist = TorchDistReader(self.ckpt_dir)

    def full(self, p: ParamSpec) -> "torch.Tensor":
        """The full (fused, vocab-padded) megatron tensor of ``p``."""
        if self._dist is not None:
            key, axes = sharded_key(self.spec, p, te_names=self.te_names)
            shape = mcore_shape(p, self.padded_vocab)
            pre: list[int] = []
            if axes == 2 or (axes == 1 and p.expert is None):
                pre.append(int(p.layer))  # type: ignore[arg-type]
            if p.expert is not None:
                pre.append(p.expert)
            t = self._dist.read(key, (*pre, *(0,) * len(shape)), (*(1,) * len(pre), *shape))
            return t.reshape(shape)
        return self._legacy_full(p)

    def _legacy_file(self, rel: str) -> dict[str, Any]:
        """The state dict of one rank file, memory-mapped; the map is dropped once ``remap_bytes`` were copied.

        Why: every page read through a map stays in the resident set until the map is closed, so keeping a rank
        file mapped while its parameters are copied out grows RSS to the whole rank file (several GB per rank
        for DeepSeek-R1). Re-opening only re-reads the small pickle, so the map is closed after each
        ``remap_bytes`` of tensor data copied out of it (and when another rank file is needed).
        """
        import torch

        if self._legacy_rel == rel and self._legacy_sd is not None and self._legacy_copied < self.remap_bytes:
            return self._legacy_sd
        self._legacy_sd, self._legacy_rel, self._legacy_copied = None, None, 0  # unmap before mapping again
        path = self.ckpt_dir / rel
        if not path.exists():
            raise CheckpointFormatError(f"rank file `{path}` is missing; the checkpoint is incomplete.")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
        except Exception as exc:
            raise CheckpointFormatError(f"cannot read rank file `{path}` (truncated or corrupt?): {exc}") from exc
        self._legacy_sd, self._legacy_rel = sd, rel
        return sd

    def _legacy_full(self, p: ParamSpec) -> "torch.Tensor":
        import torch

        lay = self.layout
        stage = lay.stage_of_param(p)
        ep = lay.ep_rank_of(p.expert) if p.expert is not None else 0
        shape = mcore_shape(p, self.padded_vocab)
        out = torch.empty(shape, dtype=None)
        first = True
        for t in range(lay.tp):
            cs = [c for c in rank_chunks(self.spec, [p], lay, stage, ep, t, te_names=self.te_names,
                                         padded_vocab=self.padded_vocab, owner_only=False)]
            sd = self._legacy_file(f"{rank_name(lay, stage, ep, t)}/model_optim_rng.pt")
            name = cs[0].local_name
            if name not in sd:
                raise CheckpointFormatError(f"`{name}` missing from rank file {rank_name(lay, stage, ep, t)}.")
            local = sd[name]
            self._legacy_copied += local.numel() * local.element_size()
            if first:
                out = torch.empty(shape, dtype=local.dtype)
                first = False
            row = 0
            for c in cs:
                n = c.rows[1] - c.rows[0]
                piece = local[row : row + n] if len(cs) > 1 else local
                row += n
                if c.cols is None:
                    out[c.rows[0] : c.rows[1]] = piece
                else:
                    out[c.rows[0] : c.rows[1], c.cols[0] : c.cols[1]] = piece
        return out

    def close(self) -> None:
        self._legacy_sd, self._legacy_rel = None, None
        if self._dist is not None:
            self._dist.close()


def _hf_order(spec: ModelSpec, params: list[ParamSpec], shared: list[list[str]]) -> list[tuple[str, ParamSpec | None, int]]:
    """HF tensor names in model order: (name, param, index into unfuse(param)) — param None for MTP copies."""
    from adnanny_ckpt.synthetic import hf_tensor_shapes

    by_hf: dict[str, tuple[ParamSpec, int]] = {}
    for p in params:
        for i, n in enumerate(p.hf):
            by_hf[n] = (p, i)
    copies = {c for c, _ in shared}
    if spec.family == "deepseek_v3":
        names = [n for n in hf_tensor_shapes(spec.raw, include_mtp=True) if n in by_hf or n in copies]
    else:
        names = list(by_hf)
    out = []
    for n in names:
        if n in copies:
            out.append((n, None, 0))
        else:
            p, i = by_hf[n]
            out.append((n, p, i))
    return out


def mcore_to_hf(
    mcore: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fp8: bool = False,
    max_shard_bytes: int = 5 << 30,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge an adnanny-ckpt megatron checkpoint back into an HF dir (BF16, or FP8 with ``fp8=True``)."""
    import torch
    from tqdm.auto import tqdm

    from adnanny_ckpt.fp8 import keeps_bf16, quantize_blocks, scale_inv_name
    from adnanny_ckpt.synthetic import FP8_QUANTIZATION_CONFIG

    out = Path(out)
    if out.exists() and not overwrite:
        raise AdNannyCkptError(f"`out` = `{out}` already exists; pass `overwrite=True` (`--overwrite`) to replace it.")
    ck = McoreCheckpoint(mcore)
    try:
        spec = ck.spec
        order = _hf_order(spec, ck.params, ck.manifest.get("shared_hf_tensors", []))
        shared = dict((c, m) for c, m in ck.manifest.get("shared_hf_tensors", []))
        by_hf = {n: (p, i) for n, p, i in order if p is not None}

        def out_entries(name: str, p: ParamSpec | None) -> list[tuple[str, str, tuple[int, ...]]]:
            """(name, dtype, shape) of what ``name`` becomes in the output — known before any data is read."""
            src = by_hf[shared[name]][0] if p is None else p
            shape = tuple(_hf_shape(spec, src, name if p is not None else shared[name]))
            if fp8 and len(shape) == 2 and not keeps_bf16(name):
                grid = (-(-shape[0] // 128), -(-shape[1] // 128))
                return [(name, "float8_e4m3fn", shape), (scale_inv_name(name), "float32", grid)]
            return [(name, ck.manifest.get("param_dtypes", {}).get(src.name, "bfloat16"), shape)]

        entries = {n: out_entries(n, p) for n, p, _ in order}

        def out_bytes(name: str) -> int:
            total = 0
            for _, dt, shape in entries[name]:
                k = 1
                for d in shape:
                    k *= d
                total += k * getattr(torch, dt).itemsize
            return total

        shards = plan_shards([(n, out_bytes(n)) for n, _, _ in order], max_shard_bytes)
        settings = {"fp8": fp8, "max_shard_bytes": max_shard_bytes, "source_manifest": ck.manifest["fingerprint"]}
        stage = out.with_name(out.name + ".partial")
        mpath = stage / MANIFEST_NAME
        manifest: dict[str, Any] | None = None
        if mpath.exists():
            try:
                manifest = json.loads(mpath.read_text())
            except ValueError:
                manifest = None
            if manifest is not None and manifest.get("settings") != settings:
                manifest = None
        if manifest is None:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            manifest = {"format": "adnanny-ckpt/hf", "settings": settings, "source": str(Path(mcore).resolve()),
                        "shards": {}, "complete": False}
            atomic_write_json(mpath, manifest)

        cache: dict[str, list[torch.Tensor]] = {}
        max_write = 0  # largest single tensor write: the writer's whole buffer (recorded in the manifest)
        total = len(shards)
        weight_map: dict[str, str] = {}
        total_size = 0
        t0 = time.time()
        for si, names in enumerate(tqdm(shards, desc="mcore-to-hf", unit="shard", disable=not progress)):
            fname = shard_file_name(si, total)
            done = manifest["shards"].get(fname)
            path = stage / fname
            if done and path.exists() and file_sha256(path) == done["sha256"]:  # finished by an earlier run
                for k in done["tensors"]:
                    weight_map[k] = fname
                total_size += done["data_bytes"]
                continue
            # Stream: header from the planned shapes/dtypes, then each tensor appended as soon as it exists, so
            # memory holds one (unfused) parameter, never the shard.
            shard_entries = [e for name in names for e in entries[name]]
            with SafetensorsStreamWriter(path, shard_entries) as w:
                for name in names:
                    p, i = by_hf[shared[name]] if name in shared else by_hf[name]
                    if p.name not in cache:
                        cache.clear()
                        cache[p.name] = unfuse(spec, p, ck.full(p))
                    t = cache[p.name][i].contiguous()
                    if fp8 and t.dim() == 2 and not keeps_bf16(name):
                        q, sc = quantize_blocks(t, name=name)
                        w.write(name, q)
                        w.write(scale_inv_name(name), sc)
                        del q, sc
                    else:
                        w.write(name, t)
                    del t
            data_bytes = w.data_bytes
            for k, _, _ in shard_entries:
                weight_map[k] = fname
            total_size += data_bytes
            max_write = max(max_write, w.max_write_bytes)
            manifest["shards"][fname] = {"sha256": file_sha256(path), "bytes": path.stat().st_size,
                                         "data_bytes": data_bytes,
                                         "tensors": sorted(k for k, v in weight_map.items() if v == fname)}
            atomic_write_json(mpath, manifest)
        cache.clear()
        if total > 1:
            write_index(stage, weight_map, total_size)
        cfg = dict(ck.hf_config)
        if fp8:
            cfg["quantization_config"] = dict(cfg.get("quantization_config") or FP8_QUANTIZATION_CONFIG)
        else:
            cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = "bfloat16"
        atomic_write_json(stage / "config.json", cfg)
        manifest["complete"] = True
        manifest["max_write_bytes"] = max_write
        manifest["seconds"] = round(time.time() - t0, 3)
        atomic_write_json(mpath, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
        fsync_dir(out.parent)
        return out
    finally:
        ck.close()


def _hf_shape(spec: ModelSpec, p: ParamSpec, name: str) -> tuple[int, ...]:
    from adnanny_ckpt.hf2mcore import hf_source_shapes

    return hf_source_shapes(spec, [p])[name]
