"""The CPU process settings of `serve` and `label` (adnanny_serve.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from adnanny_serve.runtime import engine_threads, tune_malloc

# Buffers that grow a little at every step, as a KV cache does when each decoding step concatenates one column:
# each one is larger than any freed before, so glibc's moving mmap threshold maps fresh pages for it.
_GROWING = textwrap.dedent("""
    import resource, sys, torch
    from adnanny_serve.runtime import tune_malloc
    tuned = tune_malloc()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(300):
        buf = torch.empty((1 << 18) + 1024 * i).fill_(1.0)  # 1 MiB and growing by 4 KiB a step
        del buf
    print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(env_extra: dict[str, str]) -> tuple[bool, int]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", _GROWING], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="glibc's mallopt is Linux/glibc only")
def test_tune_malloc_keeps_growing_buffers_off_fresh_pages() -> None:
    tuned, faults_tuned = _faults({"ADNANNY_SERVE_MALLOC": ""})
    untuned, faults_default = _faults({"ADNANNY_SERVE_MALLOC": "default"})
    assert tuned and not untuned
    # 300 buffers of 1-2.2 MiB: on fresh pages that is ~150k page faults; reused from the heap, a few hundred
    assert faults_default > 20_000, faults_default
    assert faults_tuned * 10 < faults_default, (faults_tuned, faults_default)


def test_tune_malloc_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADNANNY_SERVE_MALLOC", "default")
    assert tune_malloc() is False


def test_engine_threads_leaves_a_core_to_the_http_side() -> None:
    cores = len(os.sched_getaffinity(0))
    assert engine_threads(3, "cpu") == 3 and engine_threads(2, "cuda") == 2
    assert engine_threads(0, "cpu") == max(1, cores - 1)
    assert engine_threads(0, "cuda:0") is None


def test_serve_config_threads_key() -> None:
    from adnanny_serve.config import load_serve_config
    from adnanny_serve.errors import ConfigError

    assert load_serve_config(cli=["--model", "m", "--threads", "4"]).threads == 4
    assert load_serve_config(cli=["--model", "m"]).threads == 0
    with pytest.raises(ConfigError, match="threads"):
        load_serve_config(cli=["--model", "m", "--threads", "-1"])
