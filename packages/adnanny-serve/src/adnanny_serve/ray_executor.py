"""``--executor ray``: the same chunks, labeled by engine replicas (Ray actors) on a Ray cluster.

The driver streams the input (one chunk at a time, as the local loop does) and hands each pending chunk to one
of ``num_workers`` actors (one engine each, loaded once), keeping at most two chunks per actor in flight so
memory stays bounded by a few chunks however large the file. Each actor labels its chunk and writes
``chunk-NNNNNN.parquet`` atomically itself, so the resume rule is the local one: a chunk file exists iff the
chunk is done (a retried task finds the file and skips it). Connects to a running cluster (``RAY_ADDRESS``) or
starts a local one with ``num_workers`` CPUs. Workers must see the model dir, the input and the ``.parts``
folder at the same paths (shared disk).
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_chunks_on_ray"]


class _ChunkLabeler:
    """One engine replica: labels the chunks it is given."""

    def __init__(self, job: Any):
        self.job = job
        self.engine = job.load_engine()
        self.builder = job.builder(self.engine)

    def label(self, k: int, chunk: list[dict[str, Any]]) -> int:
        from adnanny_serve.label import chunk_path

        if chunk_path(self.job.parts, k).is_file():  # a retried task must not label a chunk twice
            return 0
        self.job.label_chunk(self.engine, self.builder, k, chunk)
        return len(chunk)


def run_chunks_on_ray(job: Any, todo: list[int]) -> int:
    """Label chunks ``todo`` of ``job`` on Ray; returns the number of rows labeled now."""
    import dataclasses

    import ray

    if not todo:
        return 0
    started = False
    cfg = job.cfg
    if not ray.is_initialized():
        ray.init(num_cpus=cfg.num_workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        worker_job = dataclasses.replace(job, cfg=cfg.model_copy(update={"executor": "local", "progress": False}))
        actor_cls = ray.remote(num_cpus=1)(_ChunkLabeler)
        actors = [actor_cls.remote(worker_job) for _ in range(cfg.num_workers)]
        pending = set(todo)
        in_flight: dict[Any, int] = {}
        done = 0
        nxt = 0
        limit = 2 * len(actors)
        for k, chunk in enumerate(job.chunks()):
            if k not in pending:
                continue
            while len(in_flight) >= limit:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for r in ready:
                    in_flight.pop(r)
                    done += int(ray.get(r))
            ref = actors[nxt % len(actors)].label.remote(k, chunk)
            nxt += 1
            in_flight[ref] = k
        for r in list(in_flight):
            done += int(ray.get(r))
        return done
    finally:
        if started:
            ray.shutdown()
