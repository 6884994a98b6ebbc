"""HF (FP8 or BF16 safetensors) -> sharded megatron-core checkpoint — paper §4.1.2, forward direction.

Steps, streamed tensor by tensor so memory stays at about one rank's largest tensors:

1. check ``config.json`` against the tensors (names, shapes; every tensor accounted for, ``_scale_inv`` present);
2. per megatron parameter, read its HF sources, dequantize FP8 to BF16 *each on its own* (gate and up before they
   are fused), group by layer, rename and fuse (:mod:`adnanny_ckpt.names`, :mod:`adnanny_ckpt.shards`);
3. cut by the layout: PP stage by layer, EP rank by expert range, TP column/row/glu splits (legacy files are
   written EP-innermost and the replicated, non-expert tensors of a (PP, TP) position are read and dequantized
   once for all its EP ranks, not once per rank);
4. write either megatron-core's ``torch_dist`` format (one ``__<rank>_0.distcp`` per rank + ``.metadata`` +
   ``common.pt`` + ``metadata.json``; loadable and reshardable by ``dist_checkpointing.load``) or the legacy
   ``mp_rank_TT_PPP_EEE/model_optim_rng.pt`` per-rank files.

Output tree::

    OUT/latest_checkpointed_iteration.txt   ("release", or the iteration)
    OUT/release/ (or iter_0000123/)          the checkpoint
    OUT/adnanny_ckpt.json                     manifest: options, layout, HF config, per-rank files + sha256

Robustness: the work happens in ``OUT.partial/``; the manifest there records each finished rank file with its
checksum, so a rerun after a crash redoes only unfinished ranks; ``OUT.partial`` is renamed to ``OUT`` at the end.

MTP: with ``num_nextn_predict_layers`` > 0 the MTP layer is copied (``mtp.layers.k.*``, on the last stage); its
``embed_tokens`` and ``shared_head.head`` are the main model's in DeepSeek's release, which megatron shares, so
they are checked equal and not stored twice. ``mtp="drop"`` leaves the MTP layer out (recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import AdNannyCkptError, CheckpointFormatError, ConfigMismatchError, LayoutError
from adnanny_ckpt.layout import ParallelLayout, plan_layout
from adnanny_ckpt.names import (
    VOCAB_DIVISIBLE_BY,
    ModelSpec,
    ParamSpec,
    mcore_params,
    model_spec_from_hf_config,
    mtp_shared_hf_names,
)
from adnanny_ckpt.safetensors_io import HFCheckpointReader, atomic_write_bytes, atomic_write_json, fsync_dir
from adnanny_ckpt.records import RecordDir
from adnanny_ckpt.torch_dist import write_common, write_global_metadata, write_rank_file
from adnanny_ckpt.shards import Chunk, check_tp, fuse, global_rank, padded_vocab_size, rank_chunks, rank_name

if TYPE_CHECKING:
    import torch

__all__ = ["hf_to_mcore", "ConvertOptions", "MANIFEST_NAME", "hf_source_shapes", "iteration_dir_name"]

MANIFEST_NAME = "adnanny_ckpt.json"
FORMAT_VERSION = 1


@dataclass
class ConvertOptions:
    """Options of ``hf-to-mcore`` (CLI flags / TOML keys share these names)."""

    pp: int = 1
    ep: int = 1
    tp: int = 1
    dp: int | None = None
    te_names: bool = False
    ckpt_format: str = "torch_dist"  # or "legacy"
    layer_map: list[list[int]] | None = None
    balance: str = "params"
    mtp: str = "copy"  # or "drop"
    make_vocab_size_divisible_by: int = VOCAB_DIVISIBLE_BY  # the one padding rule (names.py)
    iteration: int | None = None  # None -> "release"
    allow_pickle: bool = False
    overwrite: bool = False
    progress: bool = True
    workers: int = 1  # processes converting ranks in parallel (each bounded in memory as one)

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise LayoutError(f"`workers` must be a positive integer; got {self.workers!r}.")
        if self.ckpt_format not in ("torch_dist", "legacy"):
            raise LayoutError(f"`ckpt_format` must be 'torch_dist' or 'legacy'; got {self.ckpt_format!r}.")
        if self.mtp not in ("copy", "drop"):
            raise LayoutError(f"`mtp` must be 'copy' or 'drop'; got {self.mtp!r}.")
        if self.iteration is not None and self.iteration < 0:
            raise LayoutError(f"`iteration` must be >= 0; got {self.iteration}.")
        if self.make_vocab_size_divisible_by < 1:
            raise LayoutError(f"`make_vocab_size_divisible_by` must be >= 1; got {self.make_vocab_size_divisible_by}.")


def iteration_dir_name(iteration: int | None) -> str:
    return "release" if iteration is None else f"iter_{iteration:07d}"


def hf_source_shapes(spec: ModelSpec, params: list[ParamSpec]) -> dict[str, tuple[int, ...]]:
    """Expected HF shape of every HF source tensor of ``params``."""
    out: dict[str, tuple[int, ...]] = {}
    for p in params:
        if len(p.hf) == 1:
            out[p.hf[0]] = p.shape
        elif len(p.hf) == 2:
            out[p.hf[0]] = out[p.hf[1]] = (p.shape[0] // 2, *p.shape[1:])
        else:
            h = p.shape[1]
            out[p.hf[0]] = (spec.num_heads * spec.head_dim, h)
            out[p.hf[1]] = out[p.hf[2]] = (spec.num_query_groups * spec.head_dim, h)
    return out


def _check_sources(reader: HFCheckpointReader, spec: ModelSpec, params: list[ParamSpec], mtp: str) -> dict[str, Any]:
    """Every HF tensor accounted for exactly once; shapes and FP8 scales present. Returns bookkeeping."""
    expected = hf_source_shapes(spec, params)
    shared = mtp_shared_hf_names(spec) if mtp == "copy" else []
    names = set(reader.names())
    for name, shape in expected.items():
        if name not in names:
            raise ConfigMismatchError(
                f"config.json describes tensor `{name}` (shape {list(shape)}) but the checkpoint in `{reader.path}` "
                "does not have it; the config belongs to another model or a shard is missing."
            )
        got = reader.info(name).shape
        if tuple(got) != tuple(shape):
            raise ConfigMismatchError(
                f"tensor `{name}` has shape {list(got)} in `{reader.info(name).file}` but config.json implies "
                f"{list(shape)}; the config does not match the weights."
            )
        if reader.is_fp8(name) and name + "_scale_inv" not in names:
            raise CheckpointFormatError(
                f"FP8 tensor `{name}` has no `{name}_scale_inv` in `{reader.path}`; a shard or the index is incomplete."
            )
    consumed = set(expected) | {n + "_scale_inv" for n in expected if n + "_scale_inv" in names}
    for copy, main in shared:
        if copy in names:
            consumed.add(copy)
    dropped: list[str] = []
    unknown = []
    for n in sorted(names - consumed):
        base = n.removesuffix("_scale_inv")
        layer = _hf_layer(base)
        if layer is not None and spec.num_layers <= layer < spec.num_layers + spec.num_mtp_layers and mtp == "drop":
            dropped.append(n)  # the config's MTP layers, when the user drops them
        elif base == "lm_head.weight" and spec.tie_word_embeddings:
            dropped.append(n)
        elif base.endswith("rotary_emb.inv_freq"):
            dropped.append(n)
        else:
            unknown.append(n)
    if unknown:
        raise ConfigMismatchError(
            f"{len(unknown)} tensors in `{reader.path}` are not described by its config.json, e.g. `{unknown[0]}`; "
            "check `num_hidden_layers`, `n_routed_experts`, `first_k_dense_replace`, `num_nextn_predict_layers`."
        )
    return {"dropped": dropped, "shared": shared}


def _hf_layer(name: str) -> int | None:
    if name.startswith("model.layers."):
        try:
            return int(name.split(".")[2])
        except ValueError:
            return None
    return None


def _fingerprint(reader: HFCheckpointReader, opts: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(reader.config(), sort_keys=True).encode())
    for n in reader.names():
        i = reader.info(n)
        h.update(f"{n}|{i.file}|{i.dtype}|{i.shape}|{i.nbytes}\n".encode())
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    return h.hexdigest()


class _HashingWriter:
    """File-like sink for ``torch.save`` that hashes what it writes (saves reading each rank file back)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha256 = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return int(self.fh.write(data))

    def flush(self) -> None:
        self.fh.flush()


class _Source:
    """Fused megatron tensors from the HF reader, with a one-entry cache (gate/up pieces, TP ranks)."""

    def __init__(self, reader: HFCheckpointReader, spec: ModelSpec, padded_vocab: int, block: tuple[int, int]) -> None:
        self.reader, self.spec, self.padded_vocab, self.block = reader, spec, padded_vocab, block
        self._key: str | None = None
        self._val: torch.Tensor | None = None
        self.bytes_read = 0

    def dtype(self, p: ParamSpec) -> "torch.dtype":
        import torch

        dt = self.reader.info(p.hf[0]).dtype
        return torch.bfloat16 if dt.startswith("float8") else getattr(torch, dt)

    def piece(self, c: Chunk) -> "torch.Tensor":
        """Chunk ``c``'s tensor; a gate/up piece is cut from its own source, without building [gate; up]."""
        p = c.param
        f = p.shape[0] // 2
        if len(p.hf) == 2 and (c.rows[1] <= f or c.rows[0] >= f):  # the piece lies within gate or within up
            which = 0 if c.rows[0] < f else 1
            key = f"{p.name}#{which}"
            if self._key != key:
                self._val = None
                self.bytes_read += self.reader.info(p.hf[which]).nbytes
                self._val = self.reader.get_dequantized(p.hf[which], self.dtype(p), self.block)
                self._key = key
            assert self._val is not None
            lo, hi = c.rows[0] - which * f, c.rows[1] - which * f
            t = self._val[lo:hi]
            return t if c.cols is None else t[:, c.cols[0] : c.cols[1]]
        return c.take(self.full(p))

    def full(self, p: ParamSpec) -> "torch.Tensor":
        if self._key != p.name:
            self._val = None  # free before reading the next one
            parts = []
            for n in p.hf:
                self.bytes_read += self.reader.info(n).nbytes
                parts.append(self.reader.get_dequantized(n, self.dtype(p), self.block))
            self._val = fuse(self.spec, p, parts, self.padded_vocab)
            self._key = p.name
        assert self._val is not None
        return self._val


def hf_to_mcore(hf: str | os.PathLike[str], out: str | os.PathLike[str], options: ConvertOptions | None = None,
                **overrides: Any) -> Path:
    """Convert the HF checkpoint dir ``hf`` into a megatron-core checkpoint under ``out``; returns ``out``.

    ``options`` / keyword overrides: see :class:`ConvertOptions` (``pp``, ``ep``, ``tp``, ``te_names``,
    ``ckpt_format`` = ``"torch_dist"`` | ``"legacy"``, ``mtp`` = ``"copy"`` | ``"drop"`` ...).
    """
    import torch

    known = set(ConvertOptions.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AdNannyCkptError(
            f"unknown option(s) {', '.join(f'`{k}`' for k in unknown)} for hf_to_mcore; known: {', '.join(sorted(known))}."
        )
    opts = ConvertOptions(**{**(options.__dict__ if options else {}), **overrides})
    out = Path(out)
    if out.exists():
        if not opts.overwrite:
            raise AdNannyCkptError(f"`out` = `{out}` already exists; pass `overwrite=True` (`--overwrite`) to replace it.")
    reader = HFCheckpointReader(hf, allow_pickle=opts.allow_pickle)
    cfg = reader.config()
    spec = model_spec_from_hf_config(cfg, str(Path(hf) / "config.json"))
    mtp = opts.mtp == "copy" and spec.num_mtp_layers > 0
    check_tp(spec, opts.tp)
    plan = plan_layout(spec, opts.pp, opts.ep, opts.tp, opts.dp, layer_map=opts.layer_map, balance=opts.balance,
                       include_mtp=mtp)
    layout = plan.layout
    params = mcore_params(spec, te_names=opts.te_names, mtp=mtp)
    book = _check_sources(reader, spec, params, opts.mtp)
    for copy, main in book["shared"]:
        if copy in reader and not torch.equal(reader.get_dequantized(copy), reader.get_dequantized(main)):
            raise ConfigMismatchError(
                f"MTP tensor `{copy}` differs from `{main}`; megatron shares one copy between the model and its MTP "
                "layer. Convert with `mtp='drop'` (`--mtp drop`) to leave the MTP layer out."
            )
    qc = cfg.get("quantization_config") or {}
    block = tuple(qc.get("weight_block_size") or (128, 128))
    padded = padded_vocab_size(spec.vocab_size, opts.make_vocab_size_divisible_by, opts.tp)
    src = _Source(reader, spec, padded, block)  # type: ignore[arg-type]

    opt_record = {k: v for k, v in opts.__dict__.items()
                  if k not in ("progress", "overwrite", "allow_pickle", "workers")}
    fp = _fingerprint(reader, opt_record)
    stage = out.with_name(out.name + ".partial")
    manifest_path = stage / MANIFEST_NAME
    manifest: dict[str, Any] | None = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = None
        if manifest is None or manifest.get("fingerprint") != fp:
            manifest = None
    if manifest is None:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        manifest = {
            "format": "adnanny-ckpt/mcore", "format_version": FORMAT_VERSION, "fingerprint": fp,
            "saved_by": "adnanny-ckpt", "iteration_dir": iteration_dir_name(opts.iteration),
            "source": str(Path(hf).resolve()), "options": opt_record, "layout": layout.to_dict(),
            "hf_dtypes": {n: reader.info(n).dtype for n in reader.names() if not n.endswith("_scale_inv")},
            "hf_block": list(block),
            "hf_config": cfg, "padded_vocab_size": padded, "mtp_copied": mtp,
            "hf_fp8": any(reader.is_fp8(n) for n in reader.names()), "dropped_hf_tensors": book["dropped"],
            "shared_hf_tensors": [list(x) for x in book["shared"]] if mtp else [],
            "param_dtypes": {p.name: str(src.dtype(p)).removeprefix("torch.") for p in params},
            "ranks": {}, "complete": False,
        }
        atomic_write_json(manifest_path, manifest)  # written once here and once at the end (records in between)
    reader.close()
    ckpt_dir = stage / iteration_dir_name(opts.iteration)
    ckpt_dir.mkdir(exist_ok=True)
    records = RecordDir(stage)

    if opts.ckpt_format == "legacy":  # EP innermost: consecutive ranks share the replicated (dense) tensors
        ranks = [(p, e, t) for p in range(layout.pp) for t in range(layout.tp) for e in range(layout.ep)]
    else:
        ranks = [(p, e, t) for p in range(layout.pp) for e in range(layout.ep) for t in range(layout.tp)]
    todo = [r for r in ranks if records.get(_rank_key(layout, *r),
                                            ckpt_dir / _rank_rel(layout, opts.ckpt_format, *r)) is None]
    t0 = time.time()
    job = _Job(hf=str(hf), stage=str(stage), opts=dict(opts.__dict__), layout=layout.to_dict(), padded=padded,
               block=block)
    bytes_read = _run_jobs(job, todo, opts.workers, opts.ckpt_format, records, progress=opts.progress,
                           total=len(ranks))

    manifest["ranks"] = {}
    for key, rec in records.all().items():
        if key.startswith("rank_"):
            manifest["ranks"][key.removeprefix("rank_")] = rec
    if opts.ckpt_format == "torch_dist":
        import torch

        tensors: dict[str, Any] = {}
        recs = []
        for r in manifest["ranks"].values():
            for c in r.get("chunks", []):
                entry = tensors.setdefault(c["key"], (tuple(c["shape"]), getattr(torch, c["dtype"]), []))
                entry[2].append((tuple(c["offsets"]), tuple(c["sizes"])))
                recs.append(c)
        write_global_metadata(ckpt_dir, tensors, recs)
        write_common(ckpt_dir, {"checkpoint_version": 3.0, "iteration": opts.iteration or 0,
                                "adnanny_ckpt": {"layout": layout.to_dict(), "te_names": opts.te_names}})
    tracker = "release" if opts.iteration is None else str(opts.iteration)
    atomic_write_bytes(stage / "latest_checkpointed_iteration.txt", tracker.encode())
    manifest["complete"] = True
    manifest["seconds"] = round(time.time() - t0, 3)
    manifest["source_bytes_read"] = bytes_read
    manifest["workers"] = opts.workers
    manifest["resume_rehashed_files"] = records.rehashed
    atomic_write_json(manifest_path, manifest)
    shutil.rmtree(records.path, ignore_errors=True)  # the manifest now holds every record
    fsync_dir(ckpt_dir)
    if out.exists():
        shutil.rmtree(out)
    os.rename(stage, out)
    fsync_dir(out.parent)
    return out


def _rank_key(layout: ParallelLayout, pp_rank: int, ep_rank: int, tp_rank: int) -> str:
    return f"rank_{global_rank(layout, pp_rank, ep_rank, tp_rank)}"


def _rank_rel(layout: ParallelLayout, fmt: str, pp_rank: int, ep_rank: int, tp_rank: int) -> str:
    if fmt == "torch_dist":
        return f"__{global_rank(layout, pp_rank, ep_rank, tp_rank)}_0.distcp"
    return f"{rank_name(layout, pp_rank, ep_rank, tp_rank)}/model_optim_rng.pt"


@dataclass
class _Job:
    """What a worker process needs to convert its ranks (plain values: it is pickled to spawned workers)."""

    hf: str
    stage: str
    opts: dict[str, Any]
    layout: dict[str, Any]
    padded: int
    block: tuple[int, int]


def _groups(todo: list[tuple[int, int, int]], fmt: str, workers: int) -> list[list[tuple[int, int, int]]]:
    """Split the ranks to do over ``workers`` processes.

    Legacy ranks of one (PP, TP) position stay together (they share the replicated tensors, read once); groups
    are dealt round-robin so the heavier first/last stages do not all land on one worker.
    """
    blocks: list[list[tuple[int, int, int]]] = []
    for r in todo:
        if fmt == "legacy" and blocks and (blocks[-1][0][0], blocks[-1][0][2]) == (r[0], r[2]):
            blocks[-1].append(r)
        else:
            blocks.append([r])
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(max(1, min(workers, len(blocks))))]
    for i, b in enumerate(blocks):
        out[i % len(out)].extend(b)
    return out


def _run_jobs(job: _Job, todo: list[tuple[int, int, int]], workers: int, fmt: str, records: RecordDir, *,
              progress: bool, total: int) -> int:
    """Convert ``todo`` in this process (``workers`` = 1) or in ``workers`` spawned processes; bytes read."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=total - len(todo), desc="hf-to-mcore", unit="rank", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            return _convert_ranks(job, todo, bar)
        import multiprocessing as mp
        from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

        parts = _groups(todo, fmt, workers)
        # spawn, not fork: a forked torch process can deadlock on locks held by the parent's threads
        with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_convert_ranks, job, part, None) for part in parts]
            pending = set(futs)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                bar.n = sum(1 for k in records.all() if k.startswith("rank_"))
                bar.refresh()
                for f in done:
                    if f.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise f.exception()  # type: ignore[misc]
            return sum(f.result() for f in futs)
    finally:
        bar.close()


def _convert_ranks(job: _Job, ranks: list[tuple[int, int, int]], bar: Any) -> int:
    """Write the rank files of ``ranks`` and their records (runs in the caller or in a worker process).

    Memory: one fused parameter (the source cache) plus, for legacy files, one rank's state dict — per worker.
    """
    import torch

    opts = ConvertOptions(**{**job.opts, "progress": False})
    layout = ParallelLayout.from_dict(job.layout)
    reader = HFCheckpointReader(job.hf, allow_pickle=opts.allow_pickle)
    try:
        spec = model_spec_from_hf_config(reader.config(), str(Path(job.hf) / "config.json"))
        mtp = opts.mtp == "copy" and spec.num_mtp_layers > 0
        params = mcore_params(spec, te_names=opts.te_names, mtp=mtp)
        src = _Source(reader, spec, job.padded, tuple(job.block))  # type: ignore[arg-type]
        stage = Path(job.stage)
        records = RecordDir(stage)
        ckpt_dir = stage / iteration_dir_name(opts.iteration)
        owner_only = opts.ckpt_format == "torch_dist"
        replicated: dict[str, torch.Tensor] = {}  # legacy: the previous rank's non-expert tensors, reused across EP
        replicated_sig: tuple[Any, ...] | None = None
        for pp_rank, ep_rank, tp_rank in ranks:
            rid = global_rank(layout, pp_rank, ep_rank, tp_rank)
            key = _rank_key(layout, pp_rank, ep_rank, tp_rank)
            chunks = rank_chunks(spec, params, layout, pp_rank, ep_rank, tp_rank, te_names=opts.te_names,
                                 padded_vocab=job.padded, owner_only=owner_only)
            rel = _rank_rel(layout, opts.ckpt_format, pp_rank, ep_rank, tp_rank)
            path = ckpt_dir / rel
            record: dict[str, Any] = {"file": rel, "pp": pp_rank, "ep": ep_rank, "tp": tp_rank}
            if not chunks and opts.ckpt_format == "torch_dist":  # nothing to own (e.g. an EP replica): no file
                records.put(key, {**record, "file": None, "bytes": 0, "sha256": None, "chunks": []}, None)
                if bar is not None:
                    bar.update(1)
                continue
            if opts.ckpt_format == "torch_dist":
                items = [(c.key, c.global_shape, c.offsets, c.sizes, src.dtype(c.param)) for c in chunks]

                def produce(i: int, chunks: list[Chunk] = chunks) -> "torch.Tensor":
                    c = chunks[i]
                    return src.piece(c).reshape(c.sizes)

                storage = write_rank_file(ckpt_dir, rid, items, produce)
                record["chunks"] = [
                    {"key": c.key, "shape": list(c.global_shape), "offsets": list(c.offsets),
                     "sizes": list(c.sizes), "dtype": str(src.dtype(c.param)).removeprefix("torch."),
                     **{k: s[k] for k in ("file", "offset", "length")}}
                    for c, s in zip(chunks, _align(chunks, storage))
                ]
            else:
                # Non-expert (replicated) tensors are identical on every EP rank of a (PP, TP) position: read and
                # dequantize them once and hand the same tensors to each EP rank's file, instead of once per EP
                # rank. They are already part of one rank's state dict, so reusing them adds no memory.
                sig = (pp_rank, tp_rank, tuple((c.local_name, c.part, c.rows, c.cols) for c in chunks
                                               if c.param.expert is None))
                if sig != replicated_sig:
                    replicated, replicated_sig = {}, None
                sd: dict[str, torch.Tensor] = {}
                for c in chunks:
                    if c.param.expert is None and c.local_name in replicated:
                        sd[c.local_name] = replicated[c.local_name]
                        continue
                    piece = src.piece(c).clone()
                    # glu under TP: the rank's linear_fc1 is [gate_r; up_r] (part 0, then part 1)
                    sd[c.local_name] = piece if c.part == 0 else torch.cat([sd[c.local_name], piece])
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                with open(tmp, "wb") as fh:
                    hw = _HashingWriter(fh)  # the record's SHA-256 as the bytes go out: no re-read of the file
                    torch.save({"model": sd, "checkpoint_version": 3.0, "iteration": opts.iteration or 0,
                                "adnanny_ckpt": {"pp": pp_rank, "ep": ep_rank, "tp": tp_rank}}, hw)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                record["sha256"] = hw.sha256.hexdigest()
                record["tensors"] = {k: list(v.shape) for k, v in sd.items()}
                replicated = {c.local_name: sd[c.local_name] for c in chunks if c.param.expert is None}
                replicated_sig = sig
                del sd
            records.put(key, record, path)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(read_gb=f"{src.bytes_read / 1e9:.2f}")
        replicated.clear()
        return src.bytes_read
    finally:
        reader.close()



def _align(chunks: list[Chunk], storage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(s["key"], tuple(s["offsets"])): s for s in storage}
    return [by[(c.key, tuple(c.offsets))] for c in chunks]


def load_manifest(mcore_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The descriptor of a megatron checkpoint written by ``hf_to_mcore`` or saved by adnanny-megatron's backend
    (:mod:`adnanny_ckpt.descriptor`); ``mcore_dir`` may also be the iteration folder of an hf_to_mcore output."""
    p = Path(mcore_dir) / MANIFEST_NAME
    if not p.exists() and (Path(mcore_dir).parent / MANIFEST_NAME).exists():
        m = json.loads((Path(mcore_dir).parent / MANIFEST_NAME).read_text())
        if m.get("iteration_dir", iteration_dir_name((m.get("options") or {}).get("iteration"))) == Path(mcore_dir).name:
            p = Path(mcore_dir).parent / MANIFEST_NAME
    if not p.exists():
        if (Path(mcore_dir) / "metadata.json").exists():
            raise CheckpointFormatError(
                f"`{p}` is missing: `{mcore_dir}` is a megatron dist checkpoint without adnanny-ckpt's descriptor "
                "(saved by an older adnanny-megatron, or by another tool); save it again with "
                "adnanny-megatron's backend, which writes the descriptor.")
        partial = Path(str(mcore_dir) + ".partial")
        hint = f" (an unfinished conversion is in `{partial}`; rerun hf-to-mcore to resume it)" if partial.exists() else ""
        raise CheckpointFormatError(f"`{p}` is missing: `{mcore_dir}` is not an adnanny-ckpt megatron checkpoint{hint}.")
    m = json.loads(p.read_text())
    m["_root"] = str(p.parent)
    if not m.get("complete"):
        raise CheckpointFormatError(f"`{p}` says the conversion did not finish; rerun hf-to-mcore to resume it.")
    return m

__all__.append("load_manifest")
