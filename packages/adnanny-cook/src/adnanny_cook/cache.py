"""Persistent response cache (SQLite) so a killed run restarts without repeating a finished teacher call.

Key = SHA-256 of the canonical JSON of (model, base_url, messages, sampling params, variant). Each finished call is
committed before its result is used, in WAL mode: a SIGKILL can lose at most the calls that were in flight,
never a committed one, and never leaves a torn row (SQLite transactions are atomic).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ResponseCache", "request_key"]


def request_key(model: str, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any], variant: str = "",
                base_url: str = "") -> str:
    """The cache key of one request. `base_url` is part of it: two endpoints serving a model under the same
    name (a local SmolLM2 and a hosted model both called "teacher") are different teachers, and a cache shared
    between them must not answer one with the other's outputs. Trailing slashes do not matter."""
    blob = json.dumps({"model": model, "base_url": base_url.rstrip("/"), "messages": [dict(m) for m in messages],
                       "params": dict(params), "variant": variant}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """A key -> JSON response store. Thread-safe (one connection guarded by a lock; calls are sub-millisecond)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process death (not power loss)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, "
                         "created REAL NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        blob = json.dumps(dict(response), sort_keys=True, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                             (key, blob, time.time()))

    def keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
