"""``verify``: prove a converted checkpoint is complete and intact before anyone spends GPU hours on it.

For a megatron checkpoint (from ``hf_to_mcore``): every rank file present with the size and SHA-256 the manifest
recorded; the torch_dist ``.metadata`` holds exactly the expected keys with the expected global shapes and dtypes,
and each tensor's chunks tile it exactly once (no gap, no overlap); legacy rank files hold exactly the expected
names and shapes; every tensor of the HF source is accounted for exactly once (consumed by one megatron parameter,
an FP8 scale, an MTP copy megatron shares, or listed as dropped). With ``values=True`` (and the HF source
available) each megatron parameter is also compared bit for bit with the fused, dequantized HF tensors — through
the converter's own name map and fuse functions, so it proves the files hold what the converter meant to write.
Whether what it meant is right is the job of ``forward=True`` (:mod:`adnanny_ckpt.forward_check`), which
interprets each side by its own format's semantics, independently of the name map.

For an HF checkpoint written by ``mcore_to_hf``: shard checksums, the index, and that every shard opens.
All problems are collected and raised together in one :class:`~adnanny_ckpt.errors.VerifyError`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from adnanny_ckpt.errors import AdNannyCkptError, VerifyError

__all__ = ["verify"]


def verify(path: str | os.PathLike[str], hf: str | os.PathLike[str] | None = None, *, values: bool = False,
           forward: bool = False, tolerance: float = 1e-3, progress: bool = False) -> dict[str, Any]:
    """Check the checkpoint at ``path``; return a summary dict or raise :class:`VerifyError` listing problems.

    ``forward=True`` adds the independent check of :mod:`adnanny_ckpt.forward_check`: every layer of ``path``
    run against the same layer of the reference — ``hf`` if given, else the source the descriptor names (the HF
    source of a megatron checkpoint, the megatron checkpoint an HF output came from) — on random inputs, each
    side interpreted by its own format's semantics, one layer in memory at a time.
    """
    from adnanny_ckpt.hf2mcore import MANIFEST_NAME

    path = Path(path)
    mpath = path / MANIFEST_NAME
    if not mpath.exists():
        raise VerifyError(f"`{mpath}` is missing; `verify` checks directories written by adnanny-ckpt.")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") == "adnanny-ckpt/hf":
        rep = _verify_hf(path, manifest)
    else:
        rep = _verify_mcore(path, manifest, hf, values, progress)
    if forward:
        from adnanny_ckpt.forward_check import forward_check

        ref = Path(hf) if hf is not None else (Path(manifest["source"]) if manifest.get("source") else None)
        if ref is None or not ref.exists():
            raise VerifyError(f"`forward=True` needs a reference: pass `hf=` (`--hf DIR`); `{path}` names "
                              f"{'no source' if ref is None else f'`{ref}`, which does not exist'}.")
        fc = forward_check(path, ref, tolerance=tolerance, progress=progress)
        _raise(fc["problems"], path)
        rep["forward_units"] = len(fc["units"])
        rep["forward_max_rel_diff"] = max(fc["units"].values())
        rep["forward_reference"] = str(ref)
    return rep


def _raise(problems: list[str], path: Path) -> None:
    if problems:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerifyError(f"`{path}` failed verification ({len(problems)} problems):\n- " + "\n- ".join(problems[:20]) + more)


def _verify_hf(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from adnanny_ckpt.safetensors_io import HFCheckpointReader, file_sha256

    problems = []
    if not manifest.get("complete"):
        problems.append("manifest says the conversion did not finish")
    for fname, rec in manifest.get("shards", {}).items():
        f = path / fname
        if not f.exists():
            problems.append(f"shard `{fname}` is missing")
        elif file_sha256(f) != rec["sha256"]:
            problems.append(f"shard `{fname}`: SHA-256 differs from the manifest (corrupt or modified)")
    _raise(problems, path)
    try:
        reader = HFCheckpointReader(path)
    except AdNannyCkptError as exc:
        raise VerifyError(str(exc)) from exc
    want = {t for rec in manifest["shards"].values() for t in rec["tensors"]}
    if set(reader.names()) != want:
        problems.append(f"index/shards hold {len(reader)} tensors, the manifest {len(want)}")
    _raise(problems, path)
    return {"ok": True, "kind": "hf", "files": len(manifest["shards"]), "tensors": len(want)}


def _verify_mcore(path: Path, manifest: dict[str, Any], hf: str | os.PathLike[str] | None, values: bool,
                  progress: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from adnanny_ckpt.hf2mcore import hf_source_shapes
    from adnanny_ckpt.mcore2hf import McoreCheckpoint
    from adnanny_ckpt.safetensors_io import HFCheckpointReader, file_sha256
    from adnanny_ckpt.shards import fuse, rank_chunks, rank_name

    problems: list[str] = []
    if not manifest.get("complete"):
        _raise(["manifest says the conversion did not finish; rerun hf-to-mcore to resume it"], path)
    ck = McoreCheckpoint(path)
    try:
        lay, spec = ck.layout, ck.spec
        files = 0
        for rid, rec in sorted(manifest["ranks"].items(), key=lambda kv: int(kv[0])):
            if rec.get("file") is None:
                continue
            f = ck.ckpt_dir / rec["file"]
            files += 1
            if not f.exists():
                problems.append(f"rank {rid}: file `{rec['file']}` is missing")
            elif f.stat().st_size != rec["bytes"]:
                problems.append(f"rank {rid}: `{rec['file']}` has {f.stat().st_size} bytes, manifest {rec['bytes']} (truncated?)")
            elif file_sha256(f) != rec["sha256"]:
                problems.append(f"rank {rid}: `{rec['file']}` SHA-256 differs from the manifest (corrupt or modified)")
        _raise(problems, path)

        owner = ck.format == "torch_dist"
        expected: dict[str, Any] = {}
        legacy_expected: dict[tuple[int, int, int], dict[str, tuple[int, ...]]] = {}
        for pp in range(lay.pp):
            for ep in range(lay.ep):
                for tp in range(lay.tp):
                    for c in rank_chunks(spec, ck.params, lay, pp, ep, tp, te_names=ck.te_names,
                                         padded_vocab=ck.padded_vocab, owner_only=owner):
                        if owner:
                            e = expected.setdefault(c.key, (c.global_shape, ck.param_dtype(c.param), []))
                            e[2].append((c.offsets, c.sizes))
                        else:
                            d = legacy_expected.setdefault((pp, ep, tp), {})
                            rows = c.rows[1] - c.rows[0]
                            prev = d.get(c.local_name)
                            shape = (rows, *(c.sizes[-len(c.param.shape) + 1:] if len(c.param.shape) > 1 else ()))
                            d[c.local_name] = (prev[0] + rows, *prev[1:]) if prev else shape
        n_tensors = 0
        if owner:
            reader = ck._dist
            assert reader is not None
            got = set(reader.keys())
            if manifest.get("saved_by") == "adnanny-megatron":  # training saves also hold optimizer state
                got = {k for k in got if not k.startswith("optimizer.")}
            for k in sorted(set(expected) - got):
                problems.append(f"key `{k}` is missing from `.metadata`")
            for k in sorted(got - set(expected)):
                problems.append(f"unexpected key `{k}` in `.metadata`")
            for key in sorted(set(expected) & got):
                shape, dtype, _ = expected[key]
                n_tensors += 1
                if reader.shape(key) != tuple(shape):
                    problems.append(f"`{key}`: global shape {reader.shape(key)} != expected {tuple(shape)}")
                    continue
                if str(reader.dtype(key)).removeprefix("torch.") != dtype:
                    problems.append(f"`{key}`: dtype {reader.dtype(key)} != expected {dtype}")
                chunks = reader.chunks(key)
                lo = np.array([c[0] for c in chunks], dtype=np.int64)
                sz = np.array([c[1] for c in chunks], dtype=np.int64)
                hi = lo + sz
                if (lo < 0).any() or (hi > np.array(shape)).any():
                    problems.append(f"`{key}`: a chunk lies outside the global shape {tuple(shape)}")
                if int(sz.prod(axis=1).sum()) != int(np.prod(shape)):
                    problems.append(f"`{key}`: chunks hold {int(sz.prod(axis=1).sum())} elements, tensor has {int(np.prod(shape))}")
                elif len(chunks) > 1:
                    ov = ((lo[:, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[:, None, :])).all(axis=2)
                    np.fill_diagonal(ov, False)
                    if ov.any():
                        problems.append(f"`{key}`: chunks overlap")
        else:
            for (pp, ep, tp), names in legacy_expected.items():
                sd = ck._legacy_file(f"{rank_name(lay, pp, ep, tp)}/model_optim_rng.pt")
                for k in sorted(set(names) - set(sd)):
                    problems.append(f"rank ({pp},{ep},{tp}): `{k}` is missing")
                for k in sorted(set(sd) - set(names)):
                    problems.append(f"rank ({pp},{ep},{tp}): unexpected `{k}`")
                for k in sorted(set(names) & set(sd)):
                    n_tensors += 1
                    if tuple(sd[k].shape) != tuple(names[k]):
                        problems.append(f"rank ({pp},{ep},{tp}): `{k}` has shape {tuple(sd[k].shape)}, expected {names[k]}")
        _raise(problems, path)

        # every HF source tensor accounted for exactly once
        hf_dir = Path(hf) if hf is not None else Path(manifest["source"])
        accounted: int | None = None
        if hf_dir.exists():
            reader_hf = HFCheckpointReader(hf_dir)
            counts = Counter(n for p in ck.params for n in p.hf)
            for n, c in counts.items():
                if c != 1:
                    problems.append(f"HF tensor `{n}` feeds {c} megatron parameters")
            shapes = hf_source_shapes(spec, ck.params)
            shared = {c for c, _ in manifest.get("shared_hf_tensors", [])}
            dropped = set(manifest.get("dropped_hf_tensors", []))
            for n in reader_hf.names():
                base = n.removesuffix("_scale_inv")
                if n in counts or (n != base and base in counts) or n in shared or n in dropped:
                    continue
                problems.append(f"HF tensor `{n}` is not accounted for by the conversion")
            for n in counts:
                if n not in reader_hf:
                    problems.append(f"HF tensor `{n}` (a source of the conversion) is not in `{hf_dir}`")
                elif tuple(reader_hf.info(n).shape) != tuple(shapes[n]):
                    problems.append(f"HF tensor `{n}` has shape {reader_hf.info(n).shape}, conversion assumed {shapes[n]}")
            accounted = len(reader_hf)
            _raise(problems, path)
            if values:
                block = tuple((ck.hf_config.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
                for p in tqdm(ck.params, desc="verify values", disable=not progress):
                    dt = getattr(torch, manifest["param_dtypes"][p.name])
                    ref = fuse(spec, p, [reader_hf.get_dequantized(n, dt, block) for n in p.hf], ck.padded_vocab)
                    if not torch.equal(ck.full(p), ref):
                        problems.append(f"`{p.name}` differs from its HF sources {list(p.hf)}")
                _raise(problems, path)
        elif values:
            raise VerifyError(f"`values=True` needs the HF source; `{hf_dir}` does not exist (pass `hf=`).")
    finally:
        ck.close()
    return {"ok": True, "kind": "mcore", "format": ck.format, "files": files, "tensors": n_tensors,
            "hf_tensors_accounted": accounted, "values_checked": bool(values and accounted is not None)}
