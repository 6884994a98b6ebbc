"""Issue 11 (cook): a request the teacher refuses quarantines its input only; resume refuses a changed config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.config import load_config  # noqa: E402
from adnanny_cook.corpus import read_corpus  # noqa: E402
from adnanny_cook.errors import ConfigError, TeacherError  # noqa: E402
from adnanny_cook.pipeline import run_cook  # noqa: E402

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "progress": False, "embed_model": "hashing",
        "timeout_s": 5.0}


def _rows(tmp_path: Path, sample_dir: Path, n: int = 6) -> Path:
    df = pl.read_parquet(sample_dir / "query_ad.parquet").head(n).drop("reasons")
    df.write_parquet(tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


def _cfg(tmp_path: Path, inp: Path, base_url: str, **kw):
    return load_config(None, {"task": "query_ad", "input": str(inp), "out": str(tmp_path / "out"),
                              "base_url": base_url, "model": "teacher", "k": 2, "chunk_size": 3, **FAST, **kw})


def test_a_400_on_one_input_leaves_the_rest_cooked(tmp_path: Path, sample_dir: Path) -> None:
    inp = _rows(tmp_path, sample_dir)
    victim = pl.read_parquet(inp).row(2, named=True)
    with StubTeacher(k=2, bad_rate=0.0, reject_on=victim["query"]) as s:
        m = run_cook(_cfg(tmp_path, inp, s.base_url))
        assert s.status[400] >= 2
    assert m["filters"]["teacher_refused_inputs"] == 1 and m["filters"]["dropped"]["teacher_rejected"] == 2
    df = read_corpus(tmp_path / "out")
    src_ids = {json.loads(p)["source_id"] for p in df["provenance"]}
    assert victim["id"] not in src_ids and len(src_ids) == 5
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == [victim["id"]]
    assert "teacher refused the request" in rejects[0]["reasons"][0] and "HTTP 400" in rejects[0]["reasons"][0]
    # its chunk is checkpointed (a refusal is not an outage: a rerun does not resend it)
    assert len(list((tmp_path / "out" / ".work" / "chunks").glob("*.json"))) == 2


def test_a_401_still_stops_the_run(tmp_path: Path, sample_dir: Path) -> None:
    inp = _rows(tmp_path, sample_dir, 3)
    with StubTeacher(k=2, bad_rate=0.0, reject_on="", reject_status=401) as s:
        with pytest.raises(TeacherError, match="HTTP 401"):
            run_cook(_cfg(tmp_path, inp, s.base_url))


def test_resume_refuses_changed_settings_by_name(tmp_path: Path, sample_dir: Path) -> None:
    inp = _rows(tmp_path, sample_dir)
    with StubTeacher(k=4, bad_rate=0.0) as s:
        m1 = run_cook(_cfg(tmp_path, inp, s.base_url))
        calls = s.status[200]
        # the same settings resume (every chunk reused, no call) — also with another eval split
        again = run_cook(_cfg(tmp_path, inp, s.base_url, eval_fraction=0.3))
        assert again["resumed_chunks"] == 2 and s.status[200] == calls and again["rows"] == m1["rows"]
        with pytest.raises(ConfigError, match=r"cannot resume the run in .*: `k` changed from 2 to 3 since"):
            run_cook(_cfg(tmp_path, inp, s.base_url, k=3))
        with pytest.raises(ConfigError, match=r"`model` changed from 'teacher' to 'm2'; `variants` changed from "
                                              r"\['steps', 'rephrased', 'reordered', 'example'\] to \['steps'\]"):
            run_cook(_cfg(tmp_path, inp, s.base_url, variants=["steps"], model="m2"))
        with pytest.raises(ConfigError, match="`self_consistency_min_sim` changed from 0.6 to 0.7"):
            run_cook(_cfg(tmp_path, inp, s.base_url, self_consistency_min_sim=0.7))
        with pytest.raises(ConfigError, match=r"the task definition \(prompts, labels, tags\) changed"):
            run_cook(_cfg(tmp_path, inp, s.base_url, labels=["label"]))
        assert s.status[200] == calls  # nothing was sent for a refused resume


def test_a_second_run_on_a_locked_folder_is_refused_before_any_call(tmp_path: Path, sample_dir: Path) -> None:
    import os

    from adnanny_cook.config import CorpusConfig
    from adnanny_cook.label_corpus import run_corpus
    from adnanny_cook.lock import FolderLock, FolderLockedError

    inp = _rows(tmp_path, sample_dir, 3)
    with StubTeacher(k=2, bad_rate=0.0) as s:
        with FolderLock(tmp_path / "out", "another adnanny-cook run"):
            with pytest.raises(FolderLockedError, match=rf"in use by PID {os.getpid()} .*another adnanny-cook run"):
                run_cook(_cfg(tmp_path, inp, s.base_url))
            with pytest.raises(FolderLockedError, match="in use by PID"):
                run_corpus(CorpusConfig(task="query_ad", input=str(inp), out=str(tmp_path / "out")))
        assert sum(s.status.values()) == 0 and not (tmp_path / "out" / "corpus.parquet").exists()
        assert run_cook(_cfg(tmp_path, inp, s.base_url))["rows"] > 0  # released: the folder is usable again
