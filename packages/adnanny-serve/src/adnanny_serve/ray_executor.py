"""``--executor ray``: the same chunks, labeled by engine replicas on a Ray cluster via Ray Data.

Each pending chunk index becomes one Ray Data row; ``map_batches`` runs a callable class (one engine per
actor, loaded once) that labels its chunk and writes ``chunk-NNNNNN.parquet`` atomically itself, so the
resume rule is the local one: a chunk file exists iff the chunk is done. Connects to a running cluster
(``RAY_ADDRESS``) or starts a local one with ``num_workers`` CPUs (recent Ray has no "local mode").
Workers must see the model dir, the input and the ``.parts`` folder at the same paths (shared disk).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["run_chunks_on_ray"]


class _ChunkLabeler:
    """Ray Data callable: label the chunks of a batch of chunk indices."""

    def __init__(self, cfg: dict[str, Any], rows: list[dict[str, Any]], parts: str):
        from adnanny_cook.tasks import get_task

        from adnanny_serve.engines import load_engine
        from adnanny_serve.label import LabelConfig

        self.cfg = LabelConfig(**cfg)
        self.rows = rows
        self.parts = Path(parts)
        self.task = get_task(self.cfg.task)
        self.engine = load_engine(self.cfg.model, engine=self.cfg.engine, device=self.cfg.device,
                                  dtype=self.cfg.dtype, batch_size=self.cfg.batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from adnanny_serve.label import chunk_path, label_rows, write_chunk

        done = []
        for k in batch["chunk"]:
            k = int(k)
            path = chunk_path(self.parts, k)
            if path.is_file():  # a retried task must not label a chunk twice
                done.append(0)
                continue
            cs = self.cfg.chunk_size
            chunk = self.rows[k * cs:(k + 1) * cs]
            recs = label_rows(self.engine, self.task, chunk, mode=self.cfg.mode,
                              max_tokens=self.cfg.resolved_max_tokens, top_logprobs=self.cfg.top_logprobs,
                              example=self.cfg.example)
            write_chunk(recs, self.task, path)
            done.append(len(chunk))
        return {"chunk": list(batch["chunk"]), "rows": done}


def run_chunks_on_ray(cfg: Any, rows: list[dict[str, Any]], parts: Path, todo: list[int]) -> int:
    """Label chunks ``todo`` on Ray; returns the number of rows labeled now."""
    import ray

    if not todo:
        return 0
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=cfg.num_workers, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True
    try:
        ds = ray.data.from_items([{"chunk": k} for k in todo], override_num_blocks=len(todo))
        c = asdict(cfg)
        c["executor"] = "local"
        c["progress"] = False
        out = ds.map_batches(
            _ChunkLabeler, fn_constructor_kwargs={"cfg": c, "rows": rows, "parts": str(parts)},
            batch_size=1, concurrency=cfg.num_workers, num_cpus=1,
        ).take_all()
        return int(sum(r["rows"] for r in out))
    finally:
        if started:
            ray.shutdown()
