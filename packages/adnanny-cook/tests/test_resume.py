"""Kill a real `adnanny-cook run` subprocess with SIGKILL mid-run, restart it, and check nothing is repeated or lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.corpus import read_corpus  # noqa: E402


def _toml(path: Path, sample_dir: Path, out: Path, base_url: str) -> Path:
    path.write_text(
        f'task = "query_ad"\ninput = "{sample_dir / "query_ad.parquet"}"\nout = "{out}"\nbase_url = "{base_url}"\n'
        f'model = "teacher"\nlimit = 150\nk = 3\nchunk_size = 10\nconcurrency = 4\nembed_model = "hashing"\n'
        f'progress = false\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\n')
    return path


def _run(cfg: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(cfg.with_suffix(".log"), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "adnanny_cook.cli", "run", "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def _log(cfg: Path) -> str:
    return cfg.with_suffix(".log").read_text()[-2000:]


def test_sigkill_then_resume_repeats_no_finished_call_and_loses_no_row(tmp_path: Path, sample_dir: Path) -> None:
    with StubTeacher(k=3, bad_rate=0.3, p429=0.03, p500=0.03, latency_s=0.01) as s:
        cfg = _toml(tmp_path / "cook.toml", sample_dir, tmp_path / "out", s.base_url)
        proc = _run(cfg)
        deadline = time.time() + 120
        while s.status[200] < 200:  # ~450 calls in total: kill somewhere in the middle
            assert proc.poll() is None, _log(cfg)
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.3)  # let the server finish answering requests the dead client had in flight
        ok_at_kill = sum(s.successes.values())
        with sqlite3.connect(tmp_path / "out/cache.sqlite") as db:
            cached_at_kill = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        chunks_at_kill = len(list((tmp_path / "out/.work/chunks").glob("*.json")))
        assert 0 < cached_at_kill <= ok_at_kill and chunks_at_kill < 15
        assert not (tmp_path / "out/corpus.parquet").exists()

        proc = _run(cfg)
        assert proc.wait(180) == 0, _log(cfg)
        ok_after = sum(s.successes.values()) - ok_at_kill
        unique = len(s.successes)
        # the resumed run made exactly the calls that were not yet cached: nothing finished was repeated ...
        assert ok_after == unique - cached_at_kill
        # ... and the only requests answered twice are those the killed client never got to store
        assert s.repeated_successes() <= ok_at_kill - cached_at_kill <= 4 + 4
        with sqlite3.connect(tmp_path / "out/cache.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == unique
        resumed = read_corpus(tmp_path / "out")

        # zero lost rows: the resumed corpus equals an uninterrupted run's (same teacher answers, fresh cache)
        cfg2 = _toml(tmp_path / "cook2.toml", sample_dir, tmp_path / "out2", s.base_url)
        proc = _run(cfg2)
        assert proc.wait(180) == 0, _log(cfg2)
    clean = read_corpus(tmp_path / "out2")
    assert resumed.height == clean.height == 300
    assert resumed.sort("id").drop("provenance").equals(clean.sort("id").drop("provenance"))
    assert set(pl.Series(resumed["id"]).str.extract(r"^(q\d+-ad\d+)").unique()) == set(
        pl.read_parquet(sample_dir / "query_ad.parquet").head(150)["id"])
