"""Run logs: one JSON object per line (``log.jsonl``) and, optionally, TensorBoard scalars.

Every record has ``kind`` (``train`` / ``eval`` / ``epoch`` / ``data``) and ``step``. On resume the JSONL is
cut back to the checkpoint's step (atomically), so an interrupted-and-resumed run leaves exactly the log an
uninterrupted one would (that is what the exact-resume test compares).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["NullLog", "RunLog", "read_log"]

LOG_FILE = "log.jsonl"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunLog:
    """Append-only JSONL log plus optional TensorBoard writer under ``output_dir``."""

    def __init__(self, output_dir: str | Path, *, tensorboard: bool) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOG_FILE
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` > ``step`` (resume); atomic rewrite."""
        if not self.path.is_file():
            return
        keep = [r for r in read_log(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(f".{LOG_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in keep:
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        rec = _clean(record)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            prefix = record.get("kind", "train")
            for key, value in _scalars(record):
                self._tb.add_scalar(f"{prefix}/{key}", value, global_step=int(record.get("step", 0)))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


class NullLog:
    """What ranks > 0 of a distributed run log to: nothing (rank 0 writes the one ``log.jsonl``)."""

    def truncate_after(self, step: int) -> None:
        """Nothing to cut."""

    def write(self, record: dict[str, Any]) -> None:
        """Dropped."""

    def close(self) -> None:
        """Nothing to close."""


def _scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for k, v in record.items():
        if k in ("kind", "step"):
            continue
        name = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out.append((name, float(v)))
        elif isinstance(v, dict):
            out.extend(_scalars(v, prefix=f"{name}/"))
    return out


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (a run directory or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_FILE
    with open(p, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
