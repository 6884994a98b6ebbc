"""The CLI contract, end to end in subprocesses (the way other tools call it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

PAPER_KEYS_DR = {"DR", "Model DR", "BACC", "Acc", "PosAcc", "PosPrec", "NegAcc", "NegPrec", "PosF1", "NegF1"}
# Beside the metrics: counts, the parse-error rate and mode, and where AUC's score came from.
SIDE_KEYS = {"n", "n_defect", "n_parse_errors", "parse_error_rate", "n_dropped", "parse_errors", "auc_source"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "adnanny_eval.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = run("demo", "--out", str(out), "--n-resamples", "300")
    assert "demo report written" in proc.stdout
    return out


def test_demo_writes_a_complete_report_folder(demo_dir):
    for name in (
        "report.md",
        "report.csv",
        "report.json",
        "bacc.png",
        "regression.md",
        "gate.md",
        "gate.json",
    ):
        assert (demo_dir / name).stat().st_size > 0, name
    md = (demo_dir / "report.md").read_text()
    for title in ("Bad defect view", "Fair defect view", "location labeling", "quality labeling", "Ad–user"):
        assert title in md
    assert "| **Avg.** | **0.867** | **0.819** (−5.54%)" in md and "Decision:" in md
    data = json.loads((demo_dir / "report.json").read_text())
    assert set(data["views"]) == {"bad", "fair", "location", "quality", "ad-user"}
    assert len(data["views"]["bad"]) == 6 and len(data["views"]["ad-user"]) == 2
    assert (demo_dir / "bacc.png").read_bytes()[:4] == b"\x89PNG"
    frame = pl.read_csv(demo_dir / "report.csv")
    assert frame.height == (6 * 4 + 2) * 3


def test_demo_is_deterministic(demo_dir, tmp_path):
    run("demo", "--out", str(tmp_path), "--n-resamples", "300")
    assert (tmp_path / "report.json").read_text() == (demo_dir / "report.json").read_text()


def test_report_json_has_exactly_the_paper_keys(demo_dir):
    d = demo_dir / "data" / "dataset_a"
    proc = run(
        "report",
        "--gold",
        str(d / "gold.parquet"),
        "--pred",
        str(d / "candidate.parquet"),
        "--view",
        "bad",
        "--json",
    )
    obj = json.loads(proc.stdout)
    assert set(obj) == PAPER_KEYS_DR | SIDE_KEYS
    assert obj["parse_errors"] == "wrong" and obj["n_parse_errors"] == 0 and obj["parse_error_rate"] == 0.0
    assert obj["auc_source"] is None  # the demo's query-ad files carry `p_non_defect`, not `score`
    assert obj["n"] == 1500 and 0 < obj["n_defect"] < 1500 and 0 <= obj["BACC"] <= 100


def test_report_ad_user_keys_with_auc_and_cross_check_library(demo_dir):
    from adnanny_eval import evaluate_files

    d = demo_dir / "data" / "dataset_g"
    proc = run(
        "report",
        "--gold",
        str(d / "gold.parquet"),
        "--pred",
        str(d / "candidate.parquet"),
        "--view",
        "ad-user",
        "--json",
    )
    obj = json.loads(proc.stdout)
    assert set(obj) == {
        "RR",
        "Model RR",
        "BACC",
        "Acc",
        "PosAcc",
        "PosPrec",
        "NegAcc",
        "NegPrec",
        "PosF1",
        "NegF1",
        "AUC",
    } | SIDE_KEYS
    assert obj["auc_source"] == "score"
    lib = evaluate_files(d / "gold.parquet", d / "candidate.parquet", "ad-user")
    assert obj["BACC"] == pytest.approx(lib.bacc * 100) and obj["AUC"] == pytest.approx(lib.auc * 100)


def test_report_columns_csv_jsonl_and_baseline(tmp_path, demo_dir):
    src = demo_dir / "data" / "dataset_b"
    pl.read_parquet(src / "gold.parquet").write_csv(tmp_path / "gold.csv")
    pl.read_parquet(src / "candidate.parquet").write_ndjson(tmp_path / "cand.jsonl")
    pl.read_parquet(src / "baseline.parquet").write_csv(tmp_path / "base.csv")
    proc = run(
        "report",
        "--gold",
        str(tmp_path / "gold.csv"),
        "--pred",
        str(tmp_path / "cand.jsonl"),
        "--baseline",
        str(tmp_path / "base.csv"),
        "--view",
        "location",
        "--gold-col",
        "location_label",
        "--pred-col",
        "location_label",
        "--score-col",
        "p_non_defect",
        "--json",
        "--out",
        str(tmp_path / "r"),
    )
    obj = json.loads(proc.stdout)
    assert set(obj) == {"candidate", "baseline", "delta", "bootstrap", "parse_errors", "auc_source"}
    assert obj["auc_source"] == {"candidate": "p_non_defect", "baseline": "p_non_defect"}
    assert "AUC" in obj["candidate"] and obj["bootstrap"]["n_resamples"] == 1000
    assert obj["delta"]["BACC"] == pytest.approx(obj["candidate"]["BACC"] - obj["baseline"]["BACC"])
    assert (tmp_path / "r" / "bacc.png").is_file() and (tmp_path / "r" / "report.md").is_file()
    md = run(
        "report",
        "--gold",
        str(tmp_path / "gold.csv"),
        "--pred",
        str(tmp_path / "cand.jsonl"),
        "--view",
        "bad",
    ).stdout
    assert md.startswith("### Query–ad relevance (Bad defect view)") and "| gold DR" in md


def test_report_errors_exit_2_with_a_message(tmp_path):
    pl.DataFrame({"id": ["a", "b", "c"], "label": ["bad", "good", "fair"]}).write_csv(tmp_path / "g.csv")
    pl.DataFrame({"id": ["a", "b", "x"], "label": ["bad", "good", "meh"]}).write_csv(tmp_path / "p.csv")
    proc = run(
        "report",
        "--gold",
        str(tmp_path / "g.csv"),
        "--pred",
        str(tmp_path / "p.csv"),
        "--view",
        "bad",
        check=False,
    )
    assert proc.returncode == 2
    assert "in `" in proc.stderr and "'c'" in proc.stderr and "'x'" in proc.stderr
    proc = run(
        "report",
        "--gold",
        str(tmp_path / "g.csv"),
        "--pred",
        str(tmp_path / "g.csv"),
        "--view",
        "nope",
        check=False,
    )
    assert proc.returncode == 2 and "unknown `view` 'nope'" in proc.stderr


def test_regression_and_gate_verbs(tmp_path, demo_dir):
    proc = run("regression", "--scores", str(demo_dir / "data" / "benchmarks.csv"), "--json")
    obj = json.loads(proc.stdout)
    assert obj["average_relative_change_percent"]["AdNanny (multi-task finetuned)"] == -5.54
    (tmp_path / "rule.toml").write_text("min_judgments = 500\n")
    proc = run(
        "gate",
        "--judgments",
        str(demo_dir / "data" / "judgments.jsonl"),
        "--config",
        str(tmp_path / "rule.toml"),
        "--json",
        "--fail-on-hold",
        check=False,
    )
    assert proc.returncode == 3 and json.loads(proc.stdout)["decision"] == "hold"
    proc = run(
        "gate",
        "--judgments",
        str(demo_dir / "data" / "judgments.jsonl"),
        "--config",
        str(tmp_path / "rule.toml"),
        "--min-judgments",
        "30",
        "--json",
        "--fail-on-hold",
        check=False,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["rule"]["min_judgments"] == 30
    (tmp_path / "bad.toml").write_text("min_judgements = 5\n")
    proc = run(
        "gate",
        "--judgments",
        str(demo_dir / "data" / "judgments.jsonl"),
        "--config",
        str(tmp_path / "bad.toml"),
        check=False,
    )
    assert proc.returncode == 2 and "unknown key(s) ['min_judgements']" in proc.stderr


def test_help_explains_every_verb():
    out = run("--help").stdout
    for verb in ("report", "demo", "querygen", "regression", "gate"):
        assert verb in out
    assert "--gold-col" in run("report", "--help").stdout


def test_missing_score_names_the_id_and_degenerate_data_warns(tmp_path):
    pl.DataFrame({"id": ["a", "b", "c"], "label": ["good", "good", "fair"]}).write_csv(tmp_path / "g.csv")
    pl.DataFrame(
        {"id": ["a", "b", "c"], "label": ["good", "bad", "good"], "score": [0.9, None, 0.8]}
    ).write_csv(tmp_path / "p.csv")
    proc = run(
        "report",
        "--gold",
        str(tmp_path / "g.csv"),
        "--pred",
        str(tmp_path / "p.csv"),
        "--view",
        "bad",
        "--json",
        check=False,
    )
    assert (
        proc.returncode == 2
        and "p.csv:score` is missing or not finite for 1 row(s) (ids: 'b')" in proc.stderr
    )
    proc = run(
        "report",
        "--gold",
        str(tmp_path / "g.csv"),
        "--pred",
        str(tmp_path / "p.csv"),
        "--view",
        "bad",
        "--no-auc",
        "--json",
    )
    obj = json.loads(proc.stdout)
    assert obj["NegAcc"] is None and obj["BACC"] is None and obj["n_defect"] == 0  # NaN -> null, not 0
    assert (
        "warning: BACC, NegAcc undefined for candidate on g (bad view)" in proc.stderr
        and "no gold defects" in proc.stderr
    )


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("adnanny-eval")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: adnanny-eval" in proc.stdout


@pytest.mark.slow
def test_querygen_verb_and_demo_with_querygen(tmp_path):
    from adnanny_eval.demo import sample_querygen

    frame, clicks, pool = sample_querygen()
    frame.write_parquet(tmp_path / "q.parquet")
    clicks.write_csv(tmp_path / "c.csv")
    pl.DataFrame({"ad_text": pool}).write_ndjson(tmp_path / "pool.jsonl")
    proc = run(
        "querygen",
        "--queries",
        str(tmp_path / "q.parquet"),
        "--clicks",
        str(tmp_path / "c.csv"),
        "--ad-pool",
        str(tmp_path / "pool.jsonl"),
        "--json",
        "--out",
        str(tmp_path / "qg"),
    )
    rows = json.loads(proc.stdout)
    assert [r["model"] for r in rows] == ["DeepSeek-R1", "AdNanny-671B", "AdNanny-7B"]
    assert (tmp_path / "qg" / "querygen.md").is_file()
    run("demo", "--out", str(tmp_path / "demo"), "--querygen", "--n-resamples", "100")
    assert "Query generation" in (tmp_path / "demo" / "report.md").read_text()


def test_bad_input_writes_nothing_and_names_file_and_column(tmp_path):
    pl.DataFrame({"id": ["a", "b"], "label": ["bad", "good"]}).write_csv(tmp_path / "g.csv")
    pred = pl.DataFrame({"id": ["a", "b"], "label": ["bad", "excellent"], "p": [0.1, 0.9]})
    pred.write_csv(tmp_path / "p.csv")
    out = tmp_path / "report"
    args = ["report", "--gold", str(tmp_path / "g.csv"), "--pred", str(tmp_path / "p.csv"), "--view", "bad"]
    proc = run(*args, "--out", str(out), check=False)
    assert proc.returncode == 2 and "p.csv:label` has 1 row(s) with label(s) ['excellent']" in proc.stderr
    assert "ids: 'b'" in proc.stderr and not out.exists()
    pl.DataFrame({"id": ["a", "b"], "label": ["bad", "good"], "p": [0.1, 0.9]}).write_csv(tmp_path / "p.csv")
    proc = run(*args, "--score-col", "prob", "--json", check=False)  # a named score column must exist
    assert proc.returncode == 2 and "has no score column 'prob'" in proc.stderr
    obj = json.loads(run(*args, "--score-col", "p", "--json", "--n-resamples", "0").stdout)
    assert obj["AUC"] == 100.0
