"""The cook stage's teacher endpoint: adnanny-serve's OpenAI-compatible server started on 127.0.0.1, or any
endpoint named by config, behind one context manager that always stops what it started.

Why a subprocess with its own process group (and not an in-process app): the server is the same `adnanny-serve
serve` a user runs, so the stage exercises the real HTTP path a hosted teacher takes (timeouts, 429s, the
client's cache keys); and a process group can be stopped as a whole. It is stopped

* on normal exit and on any exception (the `finally` of `teacher_endpoint`),
* on SIGTERM/SIGINT of the flow (turned into an exception while the endpoint is up, so the `finally` runs),
* on SIGKILL of the flow: the child asks the kernel for `PR_SET_PDEATHSIG` = SIGTERM, so it dies with its
  parent, and a pid file left behind by any other ending is reaped by the next start.

The port is kept in `teacher.json` and reused by a resumed run when free: adnanny-cook's response cache keys
include `base_url`, so the same port lets a resumed cook answer finished calls from its cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Endpoint", "TeacherStartError", "free_port", "teacher_endpoint"]

_STATE = "teacher.json"
_PIDFILE = "teacher.pid"


class TeacherStartError(RuntimeError):
    """The teacher server did not come up; the message names the model, the port and the log file."""


@dataclass(frozen=True)
class Endpoint:
    """What cook's client needs: an OpenAI-compatible base URL and the model name the endpoint knows."""

    base_url: str
    model: str
    started: bool  # True when this stage started the server (adnanny-serve), False for a given endpoint


def free_port(preferred: int = 0) -> int:
    """`preferred` when it can be bound on 127.0.0.1, else a free port the OS picks."""
    for port in ((preferred, 0) if preferred else (0,)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise TeacherStartError("no free TCP port on 127.0.0.1")


def _die_with_parent() -> None:
    """In the child before exec: own process group, and SIGTERM when the parent dies (Linux prctl)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reap_stale(folder: Path, log: Callable[[str], None]) -> None:
    """Stop a server an earlier (killed) attempt left running, identified by its pid file and command line."""
    pf = folder / _PIDFILE
    if not pf.is_file():
        return
    try:
        pid = int(pf.read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (ValueError, OSError):
        pf.unlink(missing_ok=True)
        return
    if "adnanny_serve" in cmd:
        log(f"cook: stopping a teacher server left by an earlier attempt (pid {pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    pf.unlink(missing_ok=True)


def _ready(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as r:  # noqa: S310 - 127.0.0.1 only
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to the whole group (serve shuts down in <= 5 s), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While the endpoint is up, SIGTERM/SIGINT raise (so `finally` stops the server); main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def teacher_endpoint(folder: Path, *, kind: str, model: str, base_url: str = "", port: int = 0,
                     batch_size: int = 8, max_tokens: int = 1024, device: str = "cpu", threads: int = 0,
                     start_timeout_s: float = 600.0, log: Callable[[str], None] = print) -> Iterator[Endpoint]:
    """Yield the teacher endpoint; for `kind="serve"` start `adnanny-serve serve --model MODEL` on 127.0.0.1 and
    stop it (process group) however the block ends. `kind="endpoint"` yields `base_url`/`model` unchanged."""
    if kind == "endpoint":
        yield Endpoint(base_url=base_url.rstrip("/"), model=model, started=False)
        return
    if kind != "serve":
        raise ValueError(f"teacher kind must be 'serve' or 'endpoint', got {kind!r}")
    folder.mkdir(parents=True, exist_ok=True)
    _reap_stale(folder, log)
    state_path = folder / _STATE
    saved = json.loads(state_path.read_text()).get("port", 0) if state_path.is_file() else 0
    port = free_port(port or saved)
    url = f"http://127.0.0.1:{port}/v1"
    state_path.write_text(json.dumps({"port": port, "model": model}))
    cmd = [sys.executable, "-m", "adnanny_serve.cli", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "teacher", "--batching", "continuous",
           "--batch-size", str(batch_size), "--max-tokens", str(max_tokens), "--device", device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path = folder / "teacher.log"
    t0 = time.monotonic()
    with open(log_path, "ab") as lf, _signals_raise():
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,  # noqa: S603
                                preexec_fn=_die_with_parent)
        (folder / _PIDFILE).write_text(str(proc.pid))
        try:
            while not _ready(url):
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    raise TeacherStartError(f"teacher server `{model}` exited with code {proc.returncode} before "
                                            f"answering on {url}; see {log_path}: {' | '.join(tail)}")
                if time.monotonic() - t0 > start_timeout_s:
                    raise TeacherStartError(f"teacher server `{model}` did not answer on {url} within "
                                            f"{start_timeout_s:.0f} s; see {log_path}")
                time.sleep(0.5)
            log(f"cook: teacher `{model}` serving on {url} (pid {proc.pid}, up in {time.monotonic() - t0:.0f} s)")
            yield Endpoint(base_url=url, model="teacher", started=True)
        finally:
            _stop(proc)
            (folder / _PIDFILE).unlink(missing_ok=True)
