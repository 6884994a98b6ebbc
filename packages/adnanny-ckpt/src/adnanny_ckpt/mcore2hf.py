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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import AdNannyCkptError, CheckpointFormatError
from adnanny_ckpt.fp8 import FP8_QUANTIZATION_CONFIG, keeps_bf16, scale_inv_name
from adnanny_ckpt.records import RecordDir
from adnanny_ckpt.hf2mcore import MANIFEST_NAME, iteration_dir_name, load_manifest
from adnanny_ckpt.layout import ParallelLayout
from adnanny_ckpt.names import ModelSpec, ParamSpec, mcore_params, model_spec_from_hf_config, sharded_key
from adnanny_ckpt.safetensors_io import (
    atomic_write_bytes,
    atomic_write_json,
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
        self.manifest = load_manifest(mcore_dir)
        m = self.manifest
        self.path = Path(m["_root"])
        self.opts = m["options"]
        self.hf_config = m["hf_config"]
        self.spec: ModelSpec = model_spec_from_hf_config(self.hf_config)
        self.layout = ParallelLayout.from_dict(m["layout"])
        self.te_names = bool(self.opts["te_names"])
        self.padded_vocab = int(m["padded_vocab_size"])
        self.params = mcore_params(self.spec, te_names=self.te_names, mtp=bool(m["mtp_copied"]))
        self.ckpt_dir = (self.path / m.get("iteration_dir", iteration_dir_name(self.opts.get("iteration")))).resolve()
        self.saved_by = m.get("saved_by", "adnanny-ckpt")
        self.format = self.opts["ckpt_format"]
        self._legacy_sd: dict[str, Any] | None = None
        self._legacy_rel: str | None = None
        self._legacy_copied = 0
        self._dist = None
        if self.format == "torch_dist":
            from adnanny_ckpt.torch_dist import TorchDistReader

            self._dist = TorchDistReader(self.ckpt_dir)

    def param_dtype(self, p: ParamSpec) -> str:
        """Stored dtype of ``p`` (``"bfloat16"``...): the descriptor's record, else the torch_dist metadata."""
        dt = (self.manifest.get("param_dtypes") or {}).get(p.name)
        if dt is None and self._dist is not None:
            key, _ = sharded_key(self.spec, p, te_names=self.te_names)
            dt = str(self._dist.dtype(key)).removeprefix("torch.")
        return dt or "bfloat16"

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
    from adnanny_ckpt.inventory import hf_tensor_shapes

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


#: files copied next to the weights so a server can load the output (from the source, or ``tokenizer``)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "spiece.model")
DTYPES = ("source", "bf16", "fp8", "float32")


def _servable_files(source: Path | None, tokenizer: Path | None) -> dict[str, Path]:
    """Output name -> file to copy: tokenizer files, generation_config.json, remote code (``*.py``: the
    ``modeling_*.py`` / ``configuration_*.py`` that ``config.json``'s ``auto_map`` names). ``tokenizer``
    overrides the source's tokenizer files (and supplies a generation_config.json when there is no source)."""
    files: dict[str, Path] = {}
    for d in (source, tokenizer):
        if d is None or not d.is_dir():
            continue
        for name in TOKENIZER_FILES:
            if (d / name).is_file():
                files[name] = d / name
        if (d / "generation_config.json").is_file() and (d is source or "generation_config.json" not in files):
            files["generation_config.json"] = d / "generation_config.json"
        if d is source:
            for f in sorted(d.glob("*.py")):
                files[f.name] = f
            for f in sorted(d.glob("tasks/*.toml")):  # adnanny task definitions the model was trained on
                files[f"tasks/{f.name}"] = f
    return files


def _source_formats(ck: McoreCheckpoint, source: Path | None) -> tuple[dict[str, str], tuple[int, int]]:
    """Each HF tensor's stored dtype in the source and the FP8 block, read from the source's safetensors
    headers when the directory exists, else from what the descriptor recorded at conversion time."""
    if source is not None and source.is_dir():
        from adnanny_ckpt.safetensors_io import HFCheckpointReader

        r = HFCheckpointReader(source)
        try:
            dtypes = {n: r.info(n).dtype for n in r.names() if not n.endswith("_scale_inv")}
            qc = r.config().get("quantization_config") or {}
        finally:
            r.close()
        return dtypes, tuple(qc.get("weight_block_size") or (128, 128))  # type: ignore[return-value]
    return dict(ck.manifest.get("hf_dtypes") or {}), tuple(ck.manifest.get("hf_block") or (128, 128))  # type: ignore[return-value]


def mcore_to_hf(
    mcore: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str = "source",
    fp8: bool = False,
    tokenizer: str | os.PathLike[str] | None = None,
    max_shard_bytes: int = 5 << 30,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge a megatron checkpoint (from ``hf_to_mcore``, or saved by adnanny-megatron's backend during or after
    training, any TP/PP/EP) into a servable HF directory.

    ``dtype``: ``"source"`` (default) writes each tensor in the format the HF source stored it — FP8 with
    ``weight_scale_inv`` where the source had FP8, else the source's dtype (read from the source's headers, or
    the descriptor's record when the source is gone); without a source, the checkpoint's own dtype.
    ``"bf16"`` / ``"float32"``: every weight in that dtype (``e_score_correction_bias`` stays FP32);
    ``"fp8"`` (or ``fp8=True``): DeepSeek's FP8 list re-quantized with 128x128 scales. The output also gets
    the tokenizer files, ``generation_config.json`` and remote code (``*.py``) of the source; ``tokenizer``
    (a directory) supplies/overrides the tokenizer and is required when the checkpoint has no source directory
    (a model trained from random initialisation). ``workers`` > 1 writes shards in that many processes.
    Optimizer state in a training checkpoint is ignored; padded vocabulary rows are dropped.
    """
    from tqdm.auto import tqdm

    if fp8:
        dtype = "fp8"
    if dtype not in DTYPES:
        raise AdNannyCkptError(f"`dtype` must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    if not isinstance(workers, int) or workers < 1:
        raise AdNannyCkptError(f"`workers` must be a positive integer; got {workers!r}.")
    out = Path(out)
    if out.exists() and not overwrite:
        raise AdNannyCkptError(f"`out` = `{out}` already exists; pass `overwrite=True` (`--overwrite`) to replace it.")
    tok = Path(tokenizer) if tokenizer is not None else None
    if tok is not None and not tok.is_dir():
        raise AdNannyCkptError(f"`tokenizer` = `{tok}` is not a directory (it should hold tokenizer.json or similar).")
    ck = McoreCheckpoint(mcore)
    try:
        source = Path(ck.manifest["source"]) if ck.manifest.get("source") else None
        if source is not None and not source.is_dir():
            source = None
        if source is None and tok is None:
            why = ("was trained from random initialisation (no HF source)" if not ck.manifest.get("source")
                   else f"names HF source `{ck.manifest['source']}`, which no longer exists")
            raise AdNannyCkptError(
                f"`{ck.path}` {why}: pass `tokenizer=DIR` (`--tokenizer DIR`) with the tokenizer files to serve it.")
        files = _servable_files(source, tok)
        src_dtypes, block = _source_formats(ck, source)
        plan = _plan(ck, dtype, src_dtypes, block)
        shards = plan_shards([(n, _nbytes(plan.entries[n])) for n, _, _ in plan.order], max_shard_bytes)
        settings = {"dtype": dtype, "max_shard_bytes": max_shard_bytes, "source_manifest": ck.manifest["fingerprint"],
                    "block": list(block)}
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
        records = RecordDir(stage)
        total = len(shards)
        todo = [si for si in range(total)
                if records.get(f"shard_{si}", stage / shard_file_name(si, total)) is None]
        t0 = time.time()
        job = _ShardJob(mcore=str(ck.path), stage=str(stage), dtype=dtype, src_dtypes=src_dtypes, block=block,
                        shards=shards)
        bar = tqdm(total=total, initial=total - len(todo), desc="mcore-to-hf", unit="shard", disable=not progress)
        try:
            if workers <= 1 or len(todo) <= 1:
                _write_shards(job, todo, bar, ck)
            else:
                import multiprocessing as mp
                from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

                parts = [todo[w::workers] for w in range(min(workers, len(todo)))]
                with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as pool:
                    pending = {pool.submit(_write_shards, job, part, None, None) for part in parts}
                    while pending:
                        done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                        bar.n = sum(1 for k in records.all() if k.startswith("shard_"))
                        bar.refresh()
                        for f in done:
                            if f.exception() is not None:
                                raise f.exception()  # type: ignore[misc]
        finally:
            bar.close()
        weight_map: dict[str, str] = {}
        total_size = 0
        max_write = 0
        for si in range(total):
            rec = records.get(f"shard_{si}", None)
            assert rec is not None, si
            fname = shard_file_name(si, total)
            manifest["shards"][fname] = rec
            for k in rec["tensors"]:
                weight_map[k] = fname
            total_size += rec["data_bytes"]
            max_write = max(max_write, rec.get("max_write_bytes", 0))
        if total > 1:
            write_index(stage, weight_map, total_size)
        cfg = dict(ck.hf_config)
        if plan.any_fp8:
            cfg["quantization_config"] = dict(cfg.get("quantization_config") or FP8_QUANTIZATION_CONFIG,
                                              weight_block_size=list(block))
        else:
            cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = plan.main_dtype
        atomic_write_json(stage / "config.json", cfg)
        for name, f in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(stage / name, f.read_bytes())
        if "generation_config.json" not in files:  # what transformers/servers read for stop tokens
            gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
            atomic_write_json(stage / "generation_config.json", gen)
        manifest["copied_files"] = sorted(files) + ([] if "generation_config.json" in files
                                                    else ["generation_config.json (written)"])
        manifest["complete"] = True
        manifest["max_write_bytes"] = max_write
        manifest["seconds"] = round(time.time() - t0, 3)
        manifest["workers"] = workers
        manifest["resume_rehashed_files"] = records.rehashed
        manifest["dtype_counts"] = plan.counts
        atomic_write_json(mpath, manifest)
        shutil.rmtree(records.path, ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
        fsync_dir(out.parent)
        return out
    finally:
        ck.close()


def _nbytes(entries: list[tuple[str, str, tuple[int, ...]]]) -> int:
    import torch

    total = 0
    for _, dt, shape in entries:
        k = 1
        for d in shape:
            k *= d
        total += k * getattr(torch, dt).itemsize
    return total


@dataclass
class _Plan:
    order: list[tuple[str, ParamSpec | None, int]]
    entries: dict[str, list[tuple[str, str, tuple[int, ...]]]]  # HF name -> (name, dtype, shape) written
    by_hf: dict[str, tuple[ParamSpec, int]]
    shared: dict[str, str]
    any_fp8: bool
    main_dtype: str
    counts: dict[str, int]


def _plan(ck: McoreCheckpoint, dtype: str, src_dtypes: dict[str, str], block: tuple[int, int]) -> _Plan:
    """What each HF tensor becomes (name, dtype, shape) — known from metadata before any data is read."""
    from collections import Counter

    spec = ck.spec
    order = _hf_order(spec, ck.params, ck.manifest.get("shared_hf_tensors", []))
    shared = dict((c, m) for c, m in ck.manifest.get("shared_hf_tensors", []))
    by_hf = {n: (p, i) for n, p, i in order if p is not None}
    entries: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}
    for name, p in ((n, p) for n, p, _ in order):
        src = by_hf[shared[name]][0] if p is None else p
        shape = tuple(_hf_shape(spec, src, name if p is not None else shared[name]))
        stored = ck.param_dtype(src)
        if dtype == "fp8":
            want = "float8_e4m3fn" if len(shape) == 2 and not keeps_bf16(name) else "bfloat16"
        elif dtype in ("bf16", "float32"):
            want = "bfloat16" if dtype == "bf16" else "float32"
        else:
            want = src_dtypes.get(name, stored)
        if name.endswith("e_score_correction_bias") and dtype != "source":
            want = "float32"  # DeepSeek keeps the routing bias in FP32
        if want.startswith("float8"):
            if len(shape) != 2:
                raise CheckpointFormatError(f"the source stores 1-D tensor `{name}` in FP8; only 2-D weights are.")
            grid = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
            entries[name] = [(name, "float8_e4m3fn", shape), (scale_inv_name(name), "float32", grid)]
        else:
            entries[name] = [(name, want, shape)]
    counts = Counter(e[0][1] for e in entries.values())
    floats = Counter({k: v for k, v in counts.items() if not k.startswith("float8") and k != "float32"})
    main = floats.most_common(1)[0][0] if floats else ("float32" if counts.get("float32") else "bfloat16")
    if dtype == "float32" or (not floats and counts.get("float32")):
        main = "float32"
    return _Plan(order, entries, by_hf, shared, any(k.startswith("float8") for k in counts), main, dict(counts))


@dataclass
class _ShardJob:
    """What a shard-writing worker needs (plain values: pickled to spawned workers)."""

    mcore: str
    stage: str
    dtype: str
    src_dtypes: dict[str, str]
    block: tuple[int, int]
    shards: list[list[str]]


def _write_shards(job: _ShardJob, todo: list[int], bar: Any, ck: McoreCheckpoint | None = None) -> None:
    """Stream the shards ``todo`` (header from the planned shapes/dtypes, then each tensor appended as soon as it
    exists: memory holds one unfused parameter, never a shard) and record each one."""
    import torch

    from adnanny_ckpt.fp8 import quantize_blocks

    own = ck is None
    ck = ck or McoreCheckpoint(job.mcore)
    try:
        plan = _plan(ck, job.dtype, job.src_dtypes, job.block)
        stage = Path(job.stage)
        records = RecordDir(stage)
        total = len(job.shards)
        cache: dict[str, list[torch.Tensor]] = {}
        for si in todo:
            names = job.shards[si]
            fname = shard_file_name(si, total)
            path = stage / fname
            shard_entries = [e for name in names for e in plan.entries[name]]
            with SafetensorsStreamWriter(path, shard_entries) as w:
                for name in names:
                    p, i = plan.by_hf[plan.shared[name]] if name in plan.shared else plan.by_hf[name]
                    if p.name not in cache:
                        cache.clear()
                        cache[p.name] = unfuse(ck.spec, p, ck.full(p))
                    t = cache[p.name][i].contiguous()
                    kind = plan.entries[name][0][1]
                    if kind == "float8_e4m3fn":
                        q, sc = quantize_blocks(t, job.block, name=name)
                        w.write(name, q)
                        w.write(scale_inv_name(name), sc)
                        del q, sc
                    else:
                        w.write(name, t.to(getattr(torch, kind)))
                    del t
            records.put(f"shard_{si}", {"file": fname, "data_bytes": w.data_bytes, "max_write_bytes": w.max_write_bytes,
                                        "tensors": sorted(e[0] for e in shard_entries)}, path)
            if bar is not None:
                bar.update(1)
        cache.clear()
    finally:
        if own:
            ck.close()


def _hf_shape(spec: ModelSpec, p: ParamSpec, name: str) -> tuple[int, ...]:
    from adnanny_ckpt.hf2mcore import hf_source_shapes

    return hf_source_shapes(spec, [p])[name]
