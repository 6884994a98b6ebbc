"""``--executor ray``: the same chunks, labeled by engine replicas (Ray actors) on a Ray cluster.

Cluster: with ``RAY_ADDRESS`` set (or Ray already initialised) the driver *connects* to that cluster and passes
no resource arguments (Ray refuses ``num_cpus``/``num_gpus`` when connecting); without it, a local cluster is
started with ``num_workers`` CPUs (and the visible GPUs when ``--device cuda``). Each actor asks for 1 CPU and,
with ``--device cuda[:N]``, 1 GPU (Ray then sets the actor's ``CUDA_VISIBLE_DEVICES``, so it loads on ``cuda``);
a cluster with fewer CPUs or GPUs than ``num_workers`` actors need is refused by name instead of waiting forever.

Rows: the driver streams the input one chunk at a time (as the local loop does) and hands each pending chunk to
one actor, at most two chunks per actor in flight, so memory stays a few chunks however large the file and no
actor ever receives more than the chunks it labels. Each actor writes ``chunk-NNNNNN.parquet`` atomically itself,
so the resume rule is the local one: a chunk file exists iff the chunk is done.

Failures: a chunk whose task fails (an exception in the actor, or the actor dying) is re-submitted up to
``retries`` times (a dead actor is replaced); after that the run stops with a :class:`LabelError` naming the
chunk, its rows and ids, and the last error — chunks already written stay, so rerunning resumes. Workers must see
the model dir, the input and the ``.parts`` folder at the same paths (shared disk).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from adnanny_serve.errors import EngineError, LabelError

__all__ = ["actor_resources", "run_chunks_on_ray", "run_with_retries"]


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


def actor_resources(device: str) -> dict[str, float]:
    """Ray resources of one engine replica: 1 CPU, plus 1 GPU when ``device`` is ``cuda`` or ``cuda:N``."""
    return {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0}


def run_with_retries(chunks: Iterable[tuple[int, list[dict[str, Any]]]], submit: Callable[[int, list, int], Any],
                     wait: Callable[[list[Any]], list[tuple[Any, Any, BaseException | None]]], *, limit: int,
                     retries: int, on_failure: Callable[[Any, BaseException], None] | None = None,
                     chunk_size: int | None = None) -> int:
    """Run ``chunks`` through ``submit(k, chunk, attempt) -> handle`` with at most ``limit`` in flight.

    ``wait(handles)`` blocks until at least one handle is done and returns ``(handle, result, error)`` for the
    finished ones. A failed chunk is re-submitted up to ``retries`` times (``on_failure(handle, error)`` first,
    e.g. to replace a dead actor); then :class:`LabelError` names it. Returns the sum of the results. Executor-
    agnostic so the policy is tested without a cluster; :func:`run_chunks_on_ray` plugs Ray in.
    """
    in_flight: dict[Any, tuple[int, list[dict[str, Any]], int]] = {}
    done = 0

    def drain_one() -> None:
        nonlocal done
        for h, result, err in wait(list(in_flight)):
            k, chunk, attempt = in_flight.pop(h)
            if err is None:
                done += int(result)
                continue
            if on_failure is not None:
                on_failure(h, err)
            if attempt < retries:
                in_flight[submit(k, chunk, attempt + 1)] = (k, chunk, attempt + 1)
                continue
            first = chunk_size * k if chunk_size else None
            rows = f"rows {first}-{first + len(chunk) - 1}, " if first is not None else ""
            ids = [str(r.get("id")) for r in chunk[:1] + chunk[-1:]]
            raise LabelError(
                f"chunk {k} ({rows}ids {ids[0]!r}..{ids[-1]!r}) failed {attempt + 1} times; last error: "
                f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err).strip() else ''}. "
                "Finished chunks are kept: fix the cause and rerun the same command to resume.") from None

    for k, chunk in chunks:
        while len(in_flight) >= limit:
            drain_one()
        in_flight[submit(k, chunk, 0)] = (k, chunk, 0)
    while in_flight:
        drain_one()
    return done


def _connect(ray: Any, cfg: Any, gpus: int) -> bool:
    """Connect to ``RAY_ADDRESS`` (no resource arguments) or start a local cluster; True if this call initialised
    Ray (then the run disconnects, or stops the local cluster, at its end)."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, ignore_reinit_error=True)
        return True
    kw: dict[str, Any] = {"num_cpus": cfg.num_workers}
    if gpus:
        kw["num_gpus"] = gpus
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kw)
    return True


def run_chunks_on_ray(job: Any, todo: list[int]) -> int:
    """Label chunks ``todo`` of ``job`` on Ray; returns the number of rows labeled now."""
    import dataclasses

    import ray

    if not todo:
        return 0
    cfg = job.cfg
    res = actor_resources(cfg.device)
    want_gpus = int(res["num_gpus"] * cfg.num_workers)
    local_gpus = 0
    if want_gpus and not os.environ.get("RAY_ADDRESS"):
        import torch

        local_gpus = torch.cuda.device_count()
    started = _connect(ray, cfg, local_gpus)
    try:
        have = ray.cluster_resources()
        if have.get("CPU", 0) < cfg.num_workers * res["num_cpus"]:
            raise EngineError(f"`num_workers` {cfg.num_workers} needs {cfg.num_workers} CPUs (1 per engine replica) "
                              f"but the Ray cluster has {have.get('CPU', 0):g}; lower `--num-workers`.")
        if want_gpus and have.get("GPU", 0) < want_gpus:
            raise EngineError(f"`device` {cfg.device!r} asks 1 GPU per worker x {cfg.num_workers} workers but the Ray "
                              f"cluster has {have.get('GPU', 0):g} GPUs; lower `--num-workers` or add GPU nodes.")
        # inside an actor Ray picks its GPU through CUDA_VISIBLE_DEVICES: the replica loads on plain "cuda"
        device = "cuda" if cfg.device.startswith("cuda") else cfg.device
        worker_job = dataclasses.replace(job, cfg=cfg.model_copy(update={"executor": "local", "progress": False,
                                                                         "device": device}))
        actor_cls = ray.remote(**res)(_ChunkLabeler)
        actors = [actor_cls.remote(worker_job) for _ in range(cfg.num_workers)]
        owner: dict[Any, int] = {}
        turn = [0]

        def submit(k: int, chunk: list[dict[str, Any]], attempt: int) -> Any:
            i = turn[0] % len(actors)
            turn[0] += 1
            ref = actors[i].label.remote(k, chunk)
            owner[ref] = i
            return ref

        def wait(refs: list[Any]) -> list[tuple[Any, Any, BaseException | None]]:
            ready, _ = ray.wait(refs, num_returns=1)
            out = []
            for r in ready:
                try:
                    out.append((r, ray.get(r), None))
                except Exception as e:  # RayTaskError (the chunk raised) or RayActorError (the replica died)
                    out.append((r, None, e))
            return out

        def on_failure(ref: Any, err: BaseException) -> None:
            i = owner.pop(ref, None)
            if i is not None and isinstance(err, ray.exceptions.RayActorError):
                actors[i] = actor_cls.remote(worker_job)  # a dead replica is replaced before the retry

        pending = set(todo)
        chunks = ((k, c) for k, c in enumerate(job.chunks()) if k in pending)
        return run_with_retries(chunks, submit, wait, limit=2 * len(actors), retries=cfg.retries,
                                on_failure=on_failure, chunk_size=cfg.chunk_size)
    finally:
        if started:
            ray.shutdown()
