"""Checkpoint directories: atomic, complete-or-absent, with everything exact resumption needs.

``<output_dir>/checkpoints/step-00000042/`` holds the backend's files (model or adapter, optimizer,
scheduler), ``trainer_state.json`` (step, sampler state with its RNG, instance and task weighting state,
config) and ``rng.pt`` (torch's CPU RNG). It is written under a temporary name and renamed only when
complete, so a crash mid-save leaves the previous checkpoint as the latest; a directory without
``trainer_state.json`` is never picked up.

A distributed backend (Megatron) saves collectively: every rank writes its shards into the same temporary
directory (a name without a PID, agreed by all ranks), and rank 0 alone adds the trainer state, renames and
prunes, between barriers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from adnanny_sft.errors import CheckpointError

__all__ = ["save_checkpoint", "latest_checkpoint", "read_trainer_state", "checkpoint_dir"]

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def _dist() -> tuple[int, Any]:
    """(rank, torch.distributed or None) — None when no process group is running (one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist
    return 0, None


def save_checkpoint(output_dir: str | Path, step: int, backend: Any, state: dict[str, Any], *, keep: int,
                    distributed: bool = False) -> Path:
    """Write a checkpoint for ``step`` atomically and prune all but the ``keep`` most recent ones.

    ``distributed``: ``backend.save`` is a collective call of every rank (module docstring)."""
    import torch

    final = checkpoint_dir(output_dir, step)
    rank, dist = _dist() if distributed else (0, None)
    tmp = final.with_name(f".{final.name}.tmp" if dist is not None else f".{final.name}.tmp-{os.getpid()}")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if dist is not None:
        dist.barrier()
    try:
        backend.save(tmp)
        if dist is not None:
            dist.barrier()
        if rank == 0:
            torch.save({"torch": torch.get_rng_state()}, tmp / RNG_FILE)
            with open(tmp / STATE_FILE, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
    if rank == 0:
        done = sorted(p for p in final.parent.glob("step-*") if (p / STATE_FILE).is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if dist is not None:
        dist.barrier()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``output_dir``, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def read_trainer_state(ckpt: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state.json contents, rng dict) of a checkpoint."""
    import torch

    p = Path(ckpt)
    if not (p / STATE_FILE).is_file() or not (p / RNG_FILE).is_file():
        raise CheckpointError(f"checkpoint `{p}` lacks `{STATE_FILE}` or `{RNG_FILE}`; it is incomplete.")
    try:
        state = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"`{p / STATE_FILE}` is not valid JSON ({e}).") from e
    return state, torch.load(p / RNG_FILE, weights_only=True)
