"""Per-file resume records of a conversion in progress (``OUT.partial/.records/<key>.json``).

Why not one manifest: rewriting (and fsyncing) one JSON of every finished rank after each rank grows as
ranks × chunks — quadratic over a 690 GB conversion — and several worker processes cannot share it. Each finished
output file gets its own small record instead, written atomically by whichever process produced the file; the
final manifest is assembled once from the records.

Resume re-hashes only what changed: a record stores the file's size, ``st_mtime_ns`` and SHA-256 (computed while
the bytes were written). A file whose size and mtime still match its record is trusted without reading it; a
file whose stat differs is re-hashed, and kept only if the hash still matches (e.g. a copy that changed mtime).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adnanny_ckpt.safetensors_io import atomic_write_json, file_sha256

__all__ = ["RecordDir"]


class RecordDir:
    """The records of one staging directory (``stage/.records``)."""

    def __init__(self, stage: str | os.PathLike[str]) -> None:
        self.path = Path(stage) / ".records"
        self.path.mkdir(parents=True, exist_ok=True)
        self.rehashed = 0  # files whose stat changed and were read again (tests and benchmarks look at it)

    def _file(self, key: str) -> Path:
        return self.path / f"{key.replace('/', '__')}.json"

    def put(self, key: str, record: dict[str, Any], output: Path | None) -> dict[str, Any]:
        """Record ``key`` as finished; ``output`` (if any) is stat'ed now so resume can trust it unchanged."""
        rec = dict(record)
        if output is not None:
            st = output.stat()
            rec["bytes"], rec["mtime_ns"] = st.st_size, st.st_mtime_ns
            if not rec.get("sha256"):
                rec["sha256"] = file_sha256(output)
        atomic_write_json(self._file(key), rec)
        return rec

    def get(self, key: str, output: Path | None) -> dict[str, Any] | None:
        """The record of ``key`` if its output is still intact (see module docstring), else ``None``."""
        f = self._file(key)
        if not f.exists():
            return None
        try:
            rec = json.loads(f.read_text())
        except ValueError:
            return None
        if output is None or rec.get("sha256") is None:
            return rec
        if not output.exists():
            return None
        st = output.stat()
        if st.st_size != rec.get("bytes"):
            return None
        if st.st_mtime_ns == rec.get("mtime_ns"):
            return rec
        self.rehashed += 1
        if file_sha256(output) != rec["sha256"]:
            return None
        rec["mtime_ns"] = st.st_mtime_ns
        atomic_write_json(f, rec)
        return rec

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record by key (for assembling the final manifest)."""
        out = {}
        for f in sorted(self.path.glob("*.json")):
            try:
                out[f.stem.replace("__", "/")] = json.loads(f.read_text())
            except ValueError:
                continue
        return out
