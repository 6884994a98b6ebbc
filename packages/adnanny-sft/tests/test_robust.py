"""`adnanny-sft train` under a second process and bad model files (issue 11): the output folder is locked (a
second run is refused naming the holder's PID, a killed run's lock is taken over), pickle weights are refused
unless `--allow-pickle` (adnanny-ckpt's one rule), and model/tokenizer failures are one-line exit-2 errors
naming the file that leave no output folder behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adnanny_sft.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")


def _argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    """A short run: one step, no evaluation, no export."""
    return ["train", "--corpus", str(corpus), "--output_dir", str(out), "--max_steps", "1", "--batch_size", "2",
            "--task_weighting", "false", "--evaluate", "false", "--threshold_method", "none", "--export", "false",
            "--progress", "false", "--tensorboard", "false", "--threads", "1", "--tiny_hidden_size", "32",
            "--tiny_layers", "2", *extra]


@pytest.fixture(scope="module")
def hf_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepSeek-V3 HF folder (safetensors + the sample tokenizer)."""
    from adnanny_sft.hf_backend import load_causal_lm
    from adnanny_sft.models import resolve_model

    spec, tok = resolve_model("tiny-deepseek-v3", str(sample_dir / "tokenizer"), tiny_hidden_size=32,
                              tiny_layers=2)
    out = tmp_path_factory.mktemp("hf") / "model"
    load_causal_lm(spec, seed=0).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("adnanny-sft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_pickle_only_model_is_refused_unless_allowed(hf_dir: Path, small_corpus: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import load_file

    pick = tmp_path / "pickled"
    shutil.copytree(hf_dir, pick)
    state = load_file(str(pick / "model.safetensors"))
    (pick / "model.safetensors").unlink()
    torch.save(state, pick / "pytorch_model.bin")
    out = tmp_path / "out"
    assert main(_argv(small_corpus, out, "--model", str(pick))) == 2
    err = _one_line_error(capsys)
    assert "pytorch_model.bin" in err and "is a pickle" in err and "--allow-pickle" in err
    assert not out.exists()  # a run that never started leaves nothing
    # with consent the same folder trains (transformers reads the checked pickle)
    assert main(_argv(small_corpus, out, "--model", str(pick), "--allow_pickle")) == 0
    assert (out / "manifest.json").is_file()


def test_corrupt_weights_and_missing_tokenizer_are_named(hf_dir: Path, small_corpus: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "truncated"
    shutil.copytree(hf_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(_argv(small_corpus, out, "--model", str(bad))) == 2
    err = _one_line_error(capsys)
    assert f"{bad / 'model.safetensors'}" in err and "truncated" in err
    assert not out.exists()

    notok = tmp_path / "no-tokenizer"
    shutil.copytree(hf_dir, notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            f.unlink()
    assert main(_argv(small_corpus, out, "--model", str(notok))) == 2
    err = _one_line_error(capsys)
    assert str(notok) in err and "has no tokenizer" in err
    assert main(_argv(small_corpus, out, "--model", str(hf_dir), "--tokenizer", str(tmp_path / "nowhere"))) == 2
    assert "nowhere" in _one_line_error(capsys)
    assert not out.exists()


def _holder(out: Path) -> int | None:
    try:
        return int(json.loads((out / ".adnanny.lock").read_text() or "{}").get("pid", 0)) or None
    except (OSError, ValueError):
        return None


def test_second_process_is_refused_and_a_killed_runs_lock_is_taken_over(
        sample_dir: Path, small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    tok = ["--tokenizer", str(sample_dir / "tokenizer")]
    long_run = _argv(small_corpus, out, *tok)
    long_run[long_run.index("--max_steps") + 1] = "100000"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([sys.executable, "-m", "adnanny_sft.cli", *long_run, "--save_every", "100000"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while _holder(out) != first.pid:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        # a second process on the same folder: refused at once, naming the holder
        t0 = time.monotonic()
        assert main(_argv(small_corpus, out, *tok)) == 2
        err = _one_line_error(capsys)
        assert f"PID {first.pid}" in err and "`output_dir`" in err and "adnanny-sft train" in err
        assert time.monotonic() - t0 < 60
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        if first.stderr:
            first.stderr.close()
    # the killed run's lock file is still there (stale): the next run takes it over and finishes
    assert (out / ".adnanny.lock").is_file()
    assert main(_argv(small_corpus, out, *tok)) == 0
    assert json.loads((out / "manifest.json").read_text())["steps"] == 1
