"""`run_cook(cfg)`: the whole cooking job, resumable (paper §3.1 pipeline, §3.4 corpus construction).

Output directory:
    corpus.parquet, card.json, README.md   the corpus (CORPUS_COLUMNS) and its dataset card
    manifest.json                          config, input hash, versions, counts, teacher stats
    rejects.jsonl                          bad input rows (with --on-bad-row quarantine) and their reasons
    dropped.jsonl                          every rejected candidate / generated output and why (write_dropped)
    golden_report.json / .md               prompt validation report (when `golden` is set)
    cache.sqlite                           teacher response cache (default location)
    .work/run.json                         the settings the chunks were cooked with (resume refuses others)
    .work/chunks/NNNNN.json                finished chunks (atomic files): what a resumed run skips; a chunk
                                           with a teacher call that failed after all retries is not written,
                                           so a rerun retries those calls

Resume: chunk i always holds inputs [i*chunk_size, (i+1)*chunk_size) of the (validated) input, so a restarted
run skips finished chunk files and recomputes an interrupted chunk from the response cache without calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from adnanny_cook.__about__ import __version__
from adnanny_cook.config import CookConfig
from adnanny_cook.corpus import atomic_write_bytes, make_row, write_corpus
from adnanny_cook.errors import AdNannyCookError
from adnanny_cook.loaders import Item, load_dataset

__all__ = ["RESUME_KEYS", "CookResult", "check_resume", "resume_fingerprint", "run_cook", "write_chunk"]


class CookResult(dict):
    """The manifest of a finished run (a dict), with `.corpus_path`."""

    @property
    def corpus_path(self) -> Path:
        return Path(self["corpus_path"])


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_path(out: Path, i: int) -> Path:
    return out / ".work" / "chunks" / f"{i:05d}.json"


def write_chunk(out: Path, i: int, results: list[dict[str, Any]]) -> bool:
    """Checkpoint finished chunk `i` (atomic) unless a teacher call in it failed after all retries.

    WHY: a checkpointed chunk is skipped on resume; if an endpoint outage were checkpointed, its inputs would be
    lost for good. Left unwritten, a rerun redoes the chunk: finished calls come back from the cache, only the
    failed ones are sent again. Returns whether the chunk was written.
    """
    if any(d["reason"] == "teacher_error" for r in results for d in r["drops"]):
        return False
    atomic_write_bytes(_chunk_path(out, i), json.dumps({"chunk": i, "results": results}).encode())
    return True


#: Config keys whose value shapes a finished chunk's results (its teacher calls, filters and choices); a
#: resumed run must use the same ones. Keys used only when the corpus is assembled (split, shuffle, cross-input
#: flags) are recomputed every run and may change; so may the endpoint (`base_url`) of the same `model`.
RESUME_KEYS: tuple[str, ...] = (
    "task_hash", "labels", "input_sha256", "columns", "id_column", "limit", "on_bad_row", "chunk_size", "model",
    "temperature", "top_p", "max_tokens", "k", "variants", "n_generate", "keep_per_input", "embed_model",
    "self_consistency_min_sim", "boilerplate_min_overlap", "boilerplate_min_words", "off_topic_min_sim",
    "near_dup_threshold", "mmr_lambda", "verifier_model", "teacher_answer", "stop")
_RUN_FILE = "run.json"


def resume_fingerprint(cfg: CookConfig, input_sha256: str) -> dict[str, Any]:
    """What a saved run's chunks were computed with (`RESUME_KEYS`)."""
    d = cfg.to_dict()
    d.update(task_hash=cfg.spec.hash, variants=cfg.variant_ids(), labels=list(cfg.spec.label_fields),
             input_sha256=input_sha256)
    return {k: d[k] for k in RESUME_KEYS}


def check_resume(out: Path, fp: dict[str, Any]) -> None:
    """Refuse to resume a run whose saved chunks were computed under other settings, naming every change.

    WHY: chunks are reused when their ids match; without this check a changed `k`, variant list, model, prompt
    or threshold would silently mix old and new results in one corpus. A run writes the fingerprint; a folder
    with no finished chunk yet (a first run that stopped early) takes the new settings.
    """
    from adnanny_cook.errors import ConfigError

    path = out / ".work" / _RUN_FILE
    if path.exists() and any((out / ".work" / "chunks").glob("*.json")):
        saved = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if k in saved and saved[k] != fp[k]]
        if changed:
            names = {"task_hash": "the task definition (prompts, labels, tags)", "input_sha256": "the input file"}
            what = "; ".join(
                f"{names[k]} changed" if k in names else f"`{k}` changed from {saved[k]!r} to {fp[k]!r}"
                for k in changed)
            raise ConfigError(f"cannot resume the run in `{out}`: {what} since its finished chunks were cooked. "
                              f"Rerun with the saved settings, choose a new `out`, or delete `{out / '.work'}` "
                              f"to cook again from the response cache.")
        return
    atomic_write_bytes(path, json.dumps(fp, indent=2, sort_keys=True).encode())


def _prefilter_keywords(cfg: CookConfig, items: list[Item], embedder: Any) -> tuple[list[Item], list[dict]]:
    """Given (keyword, query) pairs pass the keyword rules once, globally, before any teacher call."""
    from adnanny_cook.filters import keyword_rules

    kept, dropped = [], []
    seen: dict[str, list] = {}
    by_kw: dict[str, list[Item]] = {}
    for it in items:
        if it.labels is None:
            kept.append(it)
        else:
            by_kw.setdefault(it.input["keyword"].lower(), []).append(it)
    for kw, group in by_kw.items():
        ctx = " ".join(str(group[0].input[f]) for f in ("ad_title", "ad_description", "landing_page"))
        reasons = keyword_rules(group[0].input["keyword"], [g.labels["query"] for g in group], ctx,  # type: ignore[index]
                                emb_fn=embedder.encode, off_topic_min_sim=cfg.off_topic_min_sim,
                                near_dup_threshold=cfg.near_dup_threshold, seen=seen.setdefault(kw, []))
        for it, r in zip(group, reasons, strict=True):
            if r is None:
                kept.append(it)
            else:
                dropped.append({"id": it.id, "reason": r, "stage": "keyword_rules",
                                "detail": f"query {it.labels['query']!r} for keyword {kw!r}"})  # type: ignore[index]
    order = {it.id: n for n, it in enumerate(items)}
    kept.sort(key=lambda it: order[it.id])
    return kept, dropped


def run_cook(cfg: CookConfig) -> CookResult:
    """Run (or resume) a cooking job; returns the manifest. Raises `AdNannyCookError` subclasses on bad input.

    The output folder is locked for the whole run (`FolderLock`): a second `run` on the same folder is refused
    at once, naming the holder's PID, instead of paying the teacher a second time for the same calls.
    """
    from adnanny_cook.lock import FolderLock

    with FolderLock(cfg.out, "adnanny-cook run"):
        return _run_cook(cfg)


def _run_cook(cfg: CookConfig) -> CookResult:
    from adnanny_cook.embed import Embedder

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.input, cfg.base_spec, columns=cfg.columns, id_column=cfg.id_column,
                      on_bad_row=cfg.on_bad_row, limit=cfg.limit, labels=cfg.labels)
    if list(ds.spec.label_fields) != list(cfg.labels):
        # record the dataset's label fields (detected from its columns) so prompts, resume and the manifest agree
        cfg = cfg.model_copy(update={"labels": list(ds.spec.label_fields)})
    items, rejects = ds.items, ds.rejects
    check_resume(out, resume_fingerprint(cfg, _file_hash(cfg.input)))
    atomic_write_bytes(out / "rejects.jsonl", "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                                      for r in rejects).encode())
    embedder = Embedder(cfg.embed_model)
    pre_drops: list[dict[str, Any]] = []
    if cfg.task_name == "keyword_query":
        items, pre_drops = _prefilter_keywords(cfg, items, embedder)

    gate = None
    if cfg.golden:
        from adnanny_cook.golden import validate_prompts

        gate = validate_prompts(cfg, embedder=embedder)
        if not gate["passed"]:
            raise AdNannyCookError(f"golden-set gate failed for task `{cfg.task_name}`: {gate['failures']}; see "
                                   f"{out / 'golden_report.md'}. Refine the prompt or lower `gate_*` thresholds.")

    chunks = [items[i:i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    done: dict[int, list[dict[str, Any]]] = {}
    for i, ch in enumerate(chunks):
        p = _chunk_path(out, i)
        if p.exists():
            data = json.loads(p.read_text())
            if [r["id"] for r in data["results"]] == [it.id for it in ch]:
                done[i] = data["results"]
    todo = [i for i in range(len(chunks)) if i not in done]
    stats: dict[str, Any]
    if cfg.executor == "ray":
        from adnanny_cook.ray_exec import cook_chunks_ray

        new, stats = cook_chunks_ray(cfg, {i: chunks[i] for i in todo})
        done.update(new)
    else:
        stats = asyncio.run(_cook_local(cfg, chunks, todo, done, embedder))
    results = [r for i in range(len(chunks)) for r in done[i]]
    return _finalize(cfg, results, rejects, pre_drops, stats, embedder, gate, t0, resumed=len(chunks) - len(todo),
                     rows_read=ds.rows_read)


async def _cook_local(cfg: CookConfig, chunks: list[list[Item]], todo: list[int],
                      done: dict[int, list[dict[str, Any]]], embedder: Any) -> dict[str, Any]:
    from adnanny_cook.cook import open_cooker
    from adnanny_cook.progress import CookProgress

    out = Path(cfg.out)
    bar: CookProgress | None = None
    try:
        async with open_cooker(cfg, embedder) as cooker:
            # calls per input before the first checkpoint: k candidates (+ a verdict each), + 1 generation call
            guess = cfg.k * (2 if cooker.verifier is not None else 1) + (cfg.spec.kind == "generation")
            bar = CookProgress(inputs_total=sum(len(c) for c in chunks), inputs_done=sum(len(chunks[i]) for i in done),
                               calls_per_input=guess, clients=[cooker.teacher, cooker.verifier],
                               desc=f"cook {cfg.task_name}", disable=not cfg.progress)
            for client in (cooker.teacher, cooker.verifier):
                if client is not None:
                    client.add_listener(bar.on_event)
            replayed_upto = -1
            for i in todo:
                # the cooker's diversity/near-duplicate state must reflect every chunk before i
                cooker.replay([r for j in sorted(done) if replayed_upto < j < i for r in done[j]])
                res = await cooker.cook(chunks[i])
                replayed_upto = i
                write_chunk(out, i, res)
                done[i] = res
                bar.chunk_done(len(chunks[i]), kept=sum(len(s["chosen"]) for r in res for s in r["subs"]),
                               dropped=sum(len(r["drops"]) for r in res))
    finally:
        if bar is not None:
            bar.close()
    return cooker.stats()


def _finalize(cfg: CookConfig, results: list[dict[str, Any]], rejects: list[dict[str, Any]],
              pre_drops: list[dict[str, Any]], stats: dict[str, Any], embedder: Any, gate: Any, t0: float,
              resumed: int, rows_read: int = -1) -> CookResult:
    from adnanny_cook.card import write_card
    from adnanny_cook.filters import cross_input_flags
    from adnanny_cook.split import group_key, split_rows
    out = Path(cfg.out)
    spec = cfg.spec
    name = spec.name
    # cross-input consistency: near-duplicate inputs, same labels, rationales far apart -> flag
    chosen = [(r, s, c) for r in results for s in r["subs"] for c in s["chosen"]]
    flags: Counter[str] = Counter()
    if chosen:
        bad = cross_input_flags([group_key(spec, r["input"]) for r, _s, _c in chosen],
                                [json.dumps(s["labels"], sort_keys=True) for _r, s, _c in chosen],
                                embedder.encode([c["reasoning"] for _r, _s, c in chosen]),
                                min_sim=cfg.cross_input_min_sim, threshold=cfg.near_dup_threshold)
        for (_r, _s, c), b in zip(chosen, bad, strict=True):
            if b:
                c.setdefault("flags", []).append("cross_input_inconsistent")
                flags["cross_input_inconsistent"] += 1
    # rows
    base_prov = {"teacher": cfg.model, "base_url": cfg.base_url, "task": name, "temperature": cfg.temperature,
                 "verifier": cfg.verifier_model or None}
    tasks_in: list[str] = []
    inputs_in: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    cross_dropped = 0
    for r in results:
        for si, s in enumerate(r["subs"]):
            kept_any = False
            for c in s["chosen"]:
                if cfg.drop_cross_inconsistent and "cross_input_inconsistent" in c.get("flags", []):
                    r["drops"].append({"reason": "cross_input", "stage": "corpus", "sub": si, "idx": c["idx"],
                                       "detail": "rationale contradicts a near-duplicate input's"})
                    cross_dropped += 1
                    continue
                kept_any = True
                prov = {**base_prov, "prompt_id": f"{name}/{c['variant']}", "variant": c["variant"],
                        "candidate": c["idx"], "cache_key": c["key"], "filter_scores": c["scores"],
                        "flags": c.get("flags", []), "origin": s["origin"], "source_id": r["id"]}
                pending.append(dict(id=f"{r['id']}-{si}-{c['idx']}-r", task=spec, mode="reasoning",
                                    input=r["input"], labels=s["labels"], reasoning=c["reasoning"],
                                    provenance=prov))
                tasks_in.append(spec)
                inputs_in.append(r["input"])
            if cfg.label_rows and kept_any:
                pending.append(dict(id=f"{r['id']}-{si}-l", task=spec, mode="label", input=r["input"],
                                    labels=s["labels"], reasoning=None,
                                    provenance={**base_prov, "origin": s["origin"], "source_id": r["id"]}))
                tasks_in.append(spec)
                inputs_in.append(r["input"])
    splits = split_rows(tasks_in, inputs_in, eval_fraction=cfg.eval_fraction, seed=cfg.seed,
                        threshold=cfg.near_dup_threshold)
    rows = [make_row(**p, split=sp) for p, sp in zip(pending, splits, strict=True)]
    import random

    random.Random(cfg.seed).shuffle(rows)
    corpus_path = write_corpus(rows, out, tasks=[spec])
    drop_counts: Counter[str] = Counter(d["reason"] for d in pre_drops)
    for r in results:
        drop_counts.update(d["reason"] for d in r["drops"])
    no_survivor = sum(1 for r in results for s in r["subs"] if not s["chosen"])
    # inputs the teacher refused (HTTP 400/413/422: too long for its context, a rejected parameter) and that got
    # no rationale are quarantined with the teacher's reason, beside the bad input rows
    refused = [{"id": r["id"], "stage": "teacher", "row": None, "data": r["input"],
                "reasons": sorted({f"teacher refused the request: {d['detail']}" for d in r["drops"]
                                   if d["reason"] == "teacher_rejected"})}
               for r in results if any(d["reason"] == "teacher_rejected" for d in r["drops"])
               and not any(s["chosen"] for s in r["subs"])]
    if refused:
        atomic_write_bytes(out / "rejects.jsonl", "".join(json.dumps(x, sort_keys=True, default=str) + "\n"
                                                          for x in [*rejects, *refused]).encode())
    filters = {"dropped": dict(sorted(drop_counts.items())), "inputs_without_survivor": no_survivor,
               "flagged": dict(flags), "bad_input_rows": len(rejects), "teacher_refused_inputs": len(refused)}
    if cfg.write_dropped:
        lines = [json.dumps({**d, "id": d.get("id", r["id"])}, sort_keys=True) + "\n"
                 for r in results for d in r["drops"]]
        lines += [json.dumps(d, sort_keys=True) + "\n" for d in pre_drops]
        atomic_write_bytes(out / "dropped.jsonl", "".join(lines).encode())
    card = write_card(rows, out, title=f"adnanny-cook corpus: {name}", filters=filters,
                      extra={"teacher": cfg.model, "k": cfg.k, "variants": cfg.variant_ids()}, tasks=[spec])
    warnings = []
    if not rows:
        from adnanny_cook.label_corpus import empty_reason

        warnings.append("empty corpus: " + empty_reason(
            rows_read=len(results) + len(rejects) if rows_read < 0 else rows_read, rejects=len(rejects),
            dropped=dict(drop_counts), input_path=cfg.input))
    manifest = CookResult({
        "kind": "adnanny-cook corpus", "version": __version__, "task": name, "config": cfg.to_dict(),
        "input_sha256": _file_hash(cfg.input), "corpus_path": str(corpus_path), "rows": len(rows),
        "inputs": len(results), "filters": filters, "stats": stats, "resumed_chunks": resumed,
        "golden_gate": gate, "seconds": round(time.perf_counter() - t0, 3),
        "label_spec": {f: list(v) for f, v in spec.label_fields.items()}, "tasks": card["tasks"], "warnings": warnings,
    })
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return manifest
