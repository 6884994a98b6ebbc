"""`run_corpus(cfg)`: labeled rows -> a label-only corpus, without a teacher (`adnanny-cook corpus`).

The same loader, checks, split, corpus schema, task files and dataset card as `run_cook`, minus the reasoning:
one `mode = "label"` row per valid input row. Rows keep the user's ids (so predictions on the eval split join
back to the user's file by `id`). Output directory:

    corpus.parquet, card.json, README.md   the corpus and its dataset card (with each task definition's hash)
    tasks/<name>.toml                      the exact (label-selected) task definition the rows were built with
    manifest.json                          config, input hash, counts, task hashes
    rejects.jsonl                          bad input rows and their reasons (with --on-bad-row quarantine)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from adnanny_cook.__about__ import __version__
from adnanny_cook.config import CorpusConfig
from adnanny_cook.corpus import atomic_write_bytes, make_row, write_corpus

__all__ = ["empty_reason", "run_corpus"]


def empty_reason(*, rows_read: int, rejects: int, dropped: dict[str, int] | None = None,
                 input_path: str = "") -> str:
    """Why a run produced no corpus rows, in words a user can act on."""
    if rows_read == 0:
        return f"the input file `{input_path}` has no rows"
    if rejects >= rows_read:
        return (f"all {rows_read} input rows were rejected as bad rows (their reasons are in rejects.jsonl; map "
                f"columns with --columns, choose label fields with --labels)")
    if dropped:
        return (f"no candidate survived the filters: dropped {dict(sorted(dropped.items()))} (details in "
                f"dropped.jsonl)")
    return "no input produced a row"


def run_corpus(cfg: CorpusConfig) -> dict[str, Any]:
    """Write a label-only corpus from `cfg.input`; returns the manifest (also written as `manifest.json`).

    A manifest with `rows == 0` carries `warnings` saying why (the CLI then exits non-zero). The output folder
    is locked while it is written (`FolderLock`).
    """
    from adnanny_cook.lock import FolderLock

    with FolderLock(cfg.out, "adnanny-cook corpus"):
        return _run_corpus(cfg)


def _run_corpus(cfg: CorpusConfig) -> dict[str, Any]:
    from adnanny_cook.card import write_card
    from adnanny_cook.loaders import load_dataset
    from adnanny_cook.pipeline import CookResult, _file_hash
    from adnanny_cook.split import split_rows

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.input, cfg.base_spec, columns=cfg.columns, id_column=cfg.id_column,
                      on_bad_row=cfg.on_bad_row, limit=cfg.limit, labels=cfg.labels, split_column=cfg.split_column)
    spec = ds.spec
    rejects = list(ds.rejects)
    items = []
    for n, it in enumerate(ds.items):
        if it.labels is None:  # a generation row without outputs: only a teacher can write them
            rejects.append({"row": n, "id": it.id, "reasons": [
                f"task `{spec.name}` row has no output fields {list(spec.label_fields)}; generating them needs a "
                f"teacher (`adnanny-cook run`)"], "data": it.input})
            continue
        items.append(it)
    atomic_write_bytes(out / "rejects.jsonl", "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                                      for r in rejects).encode())
    if cfg.split_column:
        splits = [it.split or "train" for it in items]
    else:
        splits = split_rows([spec] * len(items), [it.input for it in items], eval_fraction=cfg.eval_fraction,
                            seed=cfg.seed, threshold=cfg.near_dup_threshold)
    prov = {"origin": "labeled", "source": Path(cfg.input).name}
    rows = [make_row(id=it.id, task=spec, mode="label", input=it.input, labels=it.labels or {}, reasoning=None,
                     split=sp, provenance={**prov, "source_id": it.id}, example=cfg.example)
            for it, sp in zip(items, splits, strict=True)]
    random.Random(cfg.seed).shuffle(rows)
    corpus_path = write_corpus(rows, out, tasks=[spec])
    filters = {"bad_input_rows": len(rejects), "rows_read": ds.rows_read}
    card = write_card(rows, out, title=f"adnanny-cook label corpus: {spec.name}", filters=filters,
                      extra={"teacher": None, "source": str(cfg.input)}, tasks=[spec])
    warnings = []
    if not rows:
        warnings.append("empty corpus: " + empty_reason(rows_read=ds.rows_read, rejects=len(rejects),
                                                         input_path=cfg.input))
    manifest = CookResult({
        "kind": "adnanny-cook label corpus", "version": __version__, "task": spec.name,
        "config": {**cfg.to_dict(), "labels": list(spec.label_fields)}, "input_sha256": _file_hash(cfg.input),
        "corpus_path": str(corpus_path), "rows": len(rows), "inputs": len(items), "filters": filters,
        "splits": {s: splits.count(s) for s in ("train", "eval")}, "tasks": card["tasks"],
        "label_spec": {f: list(v) for f, v in spec.label_fields.items()}, "warnings": warnings,
        "seconds": round(time.perf_counter() - t0, 3)})
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return manifest
