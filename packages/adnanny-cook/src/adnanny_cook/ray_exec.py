"""`executor = "ray"`: the same chunk cooking on Ray Data, for inputs beyond one machine.

Each chunk is one row of a Ray Dataset; `map` runs it in an actor (`_ChunkWorker`) that keeps the embedder and
the MMR/keyword state between chunks and writes the finished chunk file itself (atomic), so a killed Ray job
resumes like a local one. Teacher calls go through the same cached, rate-limited client.

Deviation from the local executor: the diversity memory and the keyword near-duplicate memory are per actor,
not global, so MMR choices can differ from a local run on the same input (labels and filters do not).
Rate limits (`rpm`, `tpm`) and `concurrency` apply per actor.

Recent Ray has no local mode: without `ray_address`, `ray.init` starts a real local cluster with
`ray_num_cpus` CPUs.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from adnanny_cook.config import CookConfig
from adnanny_cook.loaders import Item

__all__ = ["cook_chunks_ray"]


class _ChunkWorker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        from adnanny_cook.embed import Embedder

        self.cfg = CookConfig(**cfg)
        self.embedder = Embedder(self.cfg.embed_model)
        self.memory: dict[str, Any] = {}
        self.kw_seen: dict[str, Any] = {}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from adnanny_cook.pipeline import write_chunk

        items = [Item(d["id"], d["input"], d["labels"]) for d in json.loads(row["items"])]
        res, stats = asyncio.run(self._cook(items))
        write_chunk(Path(self.cfg.out), int(row["chunk"]), res)
        return {"chunk": int(row["chunk"]), "results": json.dumps(res), "stats": json.dumps(stats)}

    async def _cook(self, items: list[Item]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from adnanny_cook.cook import open_cooker

        async with open_cooker(self.cfg, self.embedder) as cooker:
            cooker.memory, cooker.kw_seen = self.memory, self.kw_seen
            res = await cooker.cook(items)
        return res, cooker.stats()


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = _merge(out.get(k, {}), v)
        elif isinstance(v, (int, float)):
            out[k] = round(out.get(k, 0) + v, 6)
    return out


def cook_chunks_ray(cfg: CookConfig, chunks: dict[int, list[Item]]) -> tuple[dict[int, list[dict[str, Any]]],
                                                                              dict[str, Any]]:
    import os

    import ray

    if not chunks:
        return {}, {"teacher": {"calls": 0, "cache_hits": 0}}
    started = False
    if not ray.is_initialized():
        # workers read the teacher key from `api_key_env` (not only OPENAI_API_KEY) like the local executor
        env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                                           cfg.api_key_env) if k in os.environ}
        env.setdefault("HF_HUB_OFFLINE", "1")
        kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                              "log_to_driver": False, "configure_logging": False}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, **kw)
        else:
            ray.init(num_cpus=cfg.ray_num_cpus, **kw)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(cfg.progress)
        rows = [{"chunk": i, "items": json.dumps([{"id": it.id, "input": it.input, "labels": it.labels}
                                                   for it in ch])} for i, ch in sorted(chunks.items())]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        n_actors = max(1, min(cfg.ray_num_cpus, len(rows)))
        out = ds.map(_ChunkWorker, fn_constructor_kwargs={"cfg": cfg.to_dict()},
                     compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1).take_all()
    finally:
        if started:
            ray.shutdown()
    done: dict[int, list[dict[str, Any]]] = {}
    stats: dict[str, Any] = {}
    for r in out:
        done[int(r["chunk"])] = json.loads(r["results"])
        stats = _merge(stats, json.loads(r["stats"]))
    for part in stats.values():
        if isinstance(part, dict) and "errors" in part:
            part["errors"] = dict(Counter(part["errors"]))
    return done, stats
