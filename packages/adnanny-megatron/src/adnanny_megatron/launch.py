"""Launch ``adnanny-megatron train`` (or ``adnanny-sft train --backend megatron``: ``module="adnanny_sft.cli"``)
under torchrun from Python, with hang detection.

Used by tests and benchmarks. A hang (e.g. the §4.1.3 unmatched MoE collectives) is detected as "the run
printed that the backward pass of step k finished, then made no progress for ``hang_after_s`` seconds",
which is robust to a slow, shared machine: only progress, not absolute speed, is timed. On a hang the
whole torchrun process group is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from adnanny_megatron.errors import AdNannyMegatronError, HangDetected

__all__ = ["RunResult", "run_torchrun"]


@dataclass
class RunResult:
    returncode: int
    output: str
    elapsed_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_torchrun(
    nproc: int,
    args: list[str],
    *,
    timeout_s: float = 300.0,
    hang_after_s: float | None = None,
    progress_marker: str = "[adnanny-megatron] step",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    module: str = "adnanny_megatron.cli",
) -> RunResult:
    """Run ``python -m torch.distributed.run --nproc-per-node N -m MODULE ARGS`` (``module``: the entry script,
    ``adnanny_megatron.cli`` or ``adnanny_sft.cli``).

    Raises :class:`HangDetected` when no line containing ``progress_marker`` arrived for ``hang_after_s``
    seconds after the first one (or the whole run exceeds ``timeout_s``); the output so far is attached.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", module, *args,
    ]
    full_env = dict(os.environ)
    full_env.setdefault("TORCHDYNAMO_DISABLE", "1")
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("TRANSFORMERS_OFFLINE", "1")
    full_env["PYTHONWARNINGS"] = "ignore"
    full_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                            cwd=cwd, start_new_session=True)
    lines: list[str] = []
    last_progress: list[float | None] = [None]

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if progress_marker in line:
                last_progress[0] = time.monotonic()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    reason = None
    while proc.poll() is None:
        time.sleep(0.2)
        now = time.monotonic()
        if now - start > timeout_s:
            reason = f"run exceeded timeout_s={timeout_s}"
        elif hang_after_s is not None and last_progress[0] is not None and now - last_progress[0] > hang_after_s:
            reason = f"no progress for {hang_after_s}s after the last step marker"
        if reason:
            _kill_tree(proc.pid)
            proc.wait()
            th.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            exc = HangDetected(f"torchrun x{nproc} {' '.join(args)}: {reason}")
            exc.output = "".join(lines)  # type: ignore[attr-defined]
            raise exc
    th.join(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    out = "".join(lines)
    return RunResult(proc.returncode, out, time.monotonic() - start)


def _kill_tree(pid: int) -> None:
    """Kill torchrun and every worker it started: workers live in their own process groups, so killing
    torchrun's group alone would leave hung ranks behind."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(children, timeout=10)


def check_ok(result: RunResult) -> RunResult:
    """Raise with the tail of the output when the run failed."""
    if result.returncode != 0:
        raise AdNannyMegatronError(f"torchrun failed (rc={result.returncode}):\n{result.output[-4000:]}")
    return result
