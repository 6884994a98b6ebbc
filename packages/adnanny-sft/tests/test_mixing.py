"""Public-data mixing at a ratio, and n-gram decontamination against the shared benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adnanny_sft.errors import ConfigError, ContaminationError, DataError
from adnanny_sft.mixing import Decontaminator, decontaminate, mix_public, read_public_rows

DATA = Path("/work/shared/data")
GSM8K = DATA / "gsm8k" / "test.jsonl"
ARC = DATA / "arc_challenge" / "arc_challenge_test.jsonl"

pytestmark = pytest.mark.skipif(not GSM8K.is_file(), reason="shared benchmark data not present")


def _public(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "public.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Write a short note number {i} about tidy desks.",
                                 "response": f"Note {i}: a tidy desk saves time."}) + "\n")
        fh.write(json.dumps({"messages": [{"role": "user", "content": "Say hi"},
                                          {"role": "assistant", "content": "hi"}]}) + "\n")
    return path


def test_public_rows_and_mix_ratio(tmp_path: Path) -> None:
    rows = read_public_rows(_public(tmp_path))
    assert len(rows) == 41 and rows[0]["task"] == "public" and rows[0]["messages"][-1]["role"] == "user"
    assert rows[-1]["target"] == "hi"
    ads = [{"id": f"a{i}", "task": "query_ad", "messages": [], "target": "x"} for i in range(60)]
    mixed = mix_public(ads, rows, ratio=0.25, seed=0)  # 25% of the final mix: 20 public + 60 ads
    assert len(mixed) == 80 and sum(r["task"] == "public" for r in mixed) == 20
    assert mixed == mix_public(ads, rows, ratio=0.25, seed=0)  # seeded
    with pytest.raises(ConfigError, match="needs 60 public rows"):
        mix_public(ads, rows, ratio=0.5, seed=0)
    with pytest.raises(ConfigError, match="`public_ratio` must be in \\[0, 1\\)"):
        mix_public(ads, rows, ratio=1.0, seed=0)


def test_public_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(DataError, match="must end with an assistant turn"):
        read_public_rows(bad)
    bad.write_text('{"prompt": "x", "response": "y"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_public_rows(bad)


def test_benchmark_overlap_is_refused(tmp_path: Path) -> None:
    item = json.loads(GSM8K.read_text().splitlines()[5])
    arc = json.loads(ARC.read_text().splitlines()[3])
    rows = [
        {"id": "clean", "task": "public", "messages": [{"role": "user", "content": "Explain tidy desks."}],
         "target": "A tidy desk saves time and keeps papers safe."},
        {"id": "leak-gsm8k", "task": "public",
         "messages": [{"role": "user", "content": "Solve: " + item["question"].upper()}], "target": "ok"},
        {"id": "leak-arc", "task": "public", "messages": [{"role": "user", "content": "Q"}],
         "target": "Sure. " + arc["question"]},
    ]
    index = Decontaminator([DATA / "gsm8k", ARC], n=8)
    assert index.file_records[str(GSM8K)] == 1319 and index.file_records[str(ARC)] == 1172
    with pytest.raises(ContaminationError, match=r"2 training row\(s\) overlap.*'leak-gsm8k'.*gsm8k/test.jsonl"):
        decontaminate(rows, index)
    clean, refused = decontaminate(rows, index, on_contamination="drop")
    assert [r["id"] for r in clean] == ["clean"]
    assert {r["id"] for r in refused} == {"leak-gsm8k", "leak-arc"} and all(r["ngram"] for r in refused)


def test_ads_corpus_is_clean_against_shared_benchmarks(corpus_rows) -> None:
    index = Decontaminator([DATA / "gsm8k", DATA / "arc_challenge", DATA / "hellaswag"], n=8)
    clean, refused = decontaminate(corpus_rows[:300], index, on_contamination="drop")
    assert refused == [] and len(clean) == 300


def test_decontaminator_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`decontam_ngram` must be >= 3"):
        Decontaminator([GSM8K], n=2)
    with pytest.raises(ConfigError, match="does not exist"):
        Decontaminator([tmp_path / "missing.jsonl"])
    with pytest.raises(ConfigError, match="`on_contamination` must be"):
        decontaminate([], Decontaminator([GSM8K]), on_contamination="warn")
