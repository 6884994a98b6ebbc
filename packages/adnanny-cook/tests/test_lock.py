"""FolderLock: a second process is refused by name; a lock left by a killed process is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adnanny_cook.lock import FolderLock, FolderLockedError

HOLD = """
import sys, time
from adnanny_cook.lock import FolderLock
lock = FolderLock(sys.argv[1], "holder-test").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(d: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    p = _holder(tmp_path)
    try:
        with pytest.raises(FolderLockedError, match=rf"in use by PID {p.pid} .*'holder-test'"):
            FolderLock(tmp_path, "second").acquire()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    p = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    assert FolderLock(tmp_path).holder()["pid"] == p.pid      # the killed run's record is still there
    with FolderLock(tmp_path, "taker") as lk:
        assert lk.holder()["pid"] == os.getpid() and lk.holder()["command"] == "taker"
        with pytest.raises(FolderLockedError):                # exclusive within one process too
            FolderLock(tmp_path).acquire()
    assert FolderLock(tmp_path).holder() == {}                # released cleanly
    with FolderLock(tmp_path):                                # and free again
        time.sleep(0)
