"""One writer per output folder: an exclusive lock every long job takes on the folder it writes.

Two `label` runs on one `--out` would both label every row (and one would die on the other's renamed files);
two `cook run` on one folder pay the teacher twice. `FolderLock` makes the second process fail at once, naming
the holder's PID, command and start time.

Mechanism: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.adnanny.lock``. The kernel drops a flock when its process
dies, however it dies (kill -9 included), so a *stale* lock — the file left by a killed run — is simply acquired
again and its holder record rewritten: nothing to clean up, no PID-liveness guessing. (flock is per open file
description: it also refuses a second lock from the same process, which is what we want. It does not work
across NFS clients; keep output folders on local disk.)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from adnanny_cook.errors import AdNannyCookError

__all__ = ["FolderLock", "FolderLockedError", "LOCK_FILE"]

LOCK_FILE = ".adnanny.lock"


class FolderLockedError(AdNannyCookError, RuntimeError):
    """Another live process holds the folder; the message names it."""


class FolderLock:
    """``with FolderLock(out_dir, "adnanny-serve label"):`` — exclusive for the life of the block."""

    def __init__(self, directory: str | os.PathLike[str], command: str = "") -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_FILE
        self.command = command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its (last) holder; {} when unreadable."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FolderLock:
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"])) if "started" in h else "?"
            raise FolderLockedError(
                f"`{self.dir}` is in use by PID {h.get('pid', '?')} on {h.get('host', '?')} "
                f"({h.get('command', 'unknown command')!r}, since {since}); wait for it to finish or write to "
                f"another folder") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                             "started": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)  # no stale holder record for the next reader
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
