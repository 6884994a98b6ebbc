"""Issue 11 on `label`: one writer per `--out`, pickle weights only with consent, bad model folders named in one
line (exit 2) with nothing left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QA = get_task("query_ad")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _input(rows, path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows.head(n).select("id", *QA.input_fields).to_dicts()))
    return path


def _cmd(model: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adnanny_serve.cli", "label", "--model", str(model), "--task", "query_ad",
            "--input", str(inp), "--out", str(out), "--chunk-size", "1", "--batch-size", "1", "--max-tokens", "8",
            "--no-progress", *extra]


def test_second_label_process_on_one_out_is_refused_naming_the_holder(tiny_fp8, query_ad_rows, tmp_path) -> None:
    """Two real processes: the second fails at once naming the first's PID; the first's file equals a lone run."""
    inp = _input(query_ad_rows, tmp_path / "in.jsonl", 12)
    out = tmp_path / "shared.parquet"
    first = subprocess.Popen(_cmd(tiny_fp8, inp, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    parts = tmp_path / "shared.parquet.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("chunk-*.parquet")) and first.poll() is None:
        time.sleep(0.02)
    assert first.poll() is None, f"the first run ended before the second started: {first.stderr.read()}"
    # Pause the first run mid-job: it keeps its lock, and a slow machine cannot let it finish (and release the
    # lock) before the second has even imported torch, which is how CI once saw "already exists" instead.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        second = subprocess.run(_cmd(tiny_fp8, inp, out), env=ENV, capture_output=True, text=True, timeout=120)
        took = time.time() - t0
        still_running = first.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(rf"`out` '.*shared.parquet' is being written by another label run: .* in use by PID "
                     rf"{first.pid} ", err), err
    assert still_running, "the second run was not refused while the first was running"
    assert took < 60
    print(f"second refused after {took:.1f}s")
    _, ferr = first.communicate(timeout=300)
    assert first.returncode == 0, ferr
    # the lone run: same command, another file, nobody else around
    lone = tmp_path / "lone.parquet"
    r = subprocess.run(_cmd(tiny_fp8, inp, lone), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = pl.read_parquet(out), pl.read_parquet(lone)
    assert a.height == 12 and a.equals(b)
    assert not parts.exists()
    assert (tmp_path / ".shared.parquet.lock").read_text() == ""  # released: no holder recorded


def _model_copy(src: Path, dst: Path, *, weights: bool = True, tokenizer: bool = True) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        is_weight = f.suffix == ".safetensors" or f.name.endswith(".index.json")
        is_tok = f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))
        if (is_weight and not weights) or (is_tok and not tokenizer):
            continue
        shutil.copy(f, dst / f.name)
    return dst


def _run_label(model: Path, inp: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["label", "--model", str(model), "--task", "query_ad", "--input", str(inp), "--out", str(out),
               "--max-tokens", "4", "--no-progress", *extra])
    return rc, capsys.readouterr().err.strip()


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".parts").exists(), "a run that never started left its state behind"


def test_pickle_only_model_is_refused_unless_allowed(tiny_bf16, query_ad_rows, tmp_path, capsys) -> None:
    import torch
    from safetensors.torch import load_file

    m = _model_copy(tiny_bf16, tmp_path / "pickled", weights=False)
    sd = {}
    for f in tiny_bf16.glob("*.safetensors"):
        sd.update(load_file(f))
    torch.save(sd, m / "pytorch_model.bin")
    inp = _input(query_ad_rows, tmp_path / "in.jsonl", 3)
    out = tmp_path / "p.parquet"
    rc, err = _run_label(m, inp, out, capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"weight file `.*/pickled/pytorch_model.bin` is a pickle .*--allow-pickle", err), err
    _nothing_left(out)
    rc, err = _run_label(m, inp, out, capsys, "--allow-pickle", "--json")
    assert rc == 0, err
    assert pl.read_parquet(out).height == 3


def test_bad_model_folders_are_one_line_errors_and_leave_nothing(tiny_bf16, query_ad_rows, tmp_path, capsys) -> None:
    inp = _input(query_ad_rows, tmp_path / "in.jsonl", 2)
    # a truncated download
    m = _model_copy(tiny_bf16, tmp_path / "trunc")
    w = sorted(m.glob("*.safetensors"))[0]
    w.write_bytes(w.read_bytes()[:-1000])
    out = tmp_path / "t.parquet"
    rc, err = _run_label(m, inp, out, capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.search(rf"error: weight file `.*/trunc/{w.name}` is truncated .*need \d+ data bytes", err), err
    _nothing_left(out)
    # quantize names it too
    rc = main(["quantize", "--model", str(m), "--out", str(tmp_path / "q")])
    qerr = capsys.readouterr().err.strip()
    assert rc == 2 and re.search(rf"quantize: error: weight file `.*{w.name}` is truncated", qerr), qerr
    # a header of 100 MiB
    m = _model_copy(tiny_bf16, tmp_path / "bighdr", weights=False)
    (m / "model.safetensors").write_bytes((100 << 20).to_bytes(8, "little") + b"{}")
    rc, err = _run_label(m, inp, out, capsys)
    assert rc == 2 and "model.safetensors` has a 104857600-byte safetensors header" in err, err
    _nothing_left(out)
    # no tokenizer
    m = _model_copy(tiny_bf16, tmp_path / "notok", tokenizer=False)
    rc, err = _run_label(m, inp, out, capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"model `.*/notok` has no tokenizer \(none of tokenizer.json", err), err
    _nothing_left(out)
    # a config transformers cannot build a model from: named, one line
    m = _model_copy(tiny_bf16, tmp_path / "badcfg")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "model_type": "no-such-arch"}))
    rc, err = _run_label(m, inp, out, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "/badcfg`" in err, err
    _nothing_left(out)
