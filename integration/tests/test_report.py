"""The report renders exactly the stage-metrics schema (adnanny.report's docstring): the paper's tables with what
was measured, "not measured" for absent keys, a sentence where the run disagrees with the paper, a self-contained
HTML page with embedded PNG charts."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from adnanny.config import load_flow_config
from adnanny.flow import FlowError, run_flow
from adnanny.report import NOT_MEASURED, build_report, write_report

_TOYS = Path(__file__).with_name("test_flow_toys.py")


def _toys():
    spec = importlib.util.spec_from_file_location("adnanny_test_toys_report", _TOYS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TOYS = _toys()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rep") / "run"
    st = TOYS.toy_stages()
    run_flow(load_flow_config(None, stages=st, default=False, overrides={"run_dir": str(d)}), st,
             log=lambda s: None)
    return d


def test_tables_in_the_papers_layout(run_dir: Path) -> None:
    md = (run_dir / "report" / "report.md").read_text()
    assert "### Table 1: Query–ad relevance (Bad defect view)" in md
    head = next(line for line in md.splitlines() if line.startswith("| Dataset | Model | Model DR | BACC"))
    assert head.split(" | ")[2:6] == ["Model DR", "BACC", "Acc", "PosAcc"]
    # fractions print as percent with two decimals; the gold DR sits in the Dataset cell
    assert "| query_ad DR 35.00 | prompted teacher (4o-1120 analog) | 40.00 | 55.00 | 56.00 |" in md
    assert "| AdNanny | 40.00 | 70.00 | 71.00 |" in md and "[65.00, 75.00]" in md
    assert "| Delta (AdNanny − prompted) | +0.00 | +15.00 |" in md
    # Table 9, 10, funnel, golden gate, training, injection, notes
    assert "| query_ad | AdNanny (FP8) | 69.00 | 70.00 |" in md
    assert "| label only | not measured | not measured | 0.0027 | 4 | 12.50 |" in md
    assert "| query_ad | FAILED | format 50.0% (threshold 90.0%) | trained label-only |" in md
    assert "| query_ad | 12 | 12 | 12 | 11 | 10 | 10 | 2 |" in md
    assert "| query_ad | 61.00 | 66.00 |" in md and "Steps 5; throughput 123 tokens/s." in md
    assert "| 4 | 1 | 25.00% |" in md
    assert "- cook: golden gate failed for query_ad: trained label-only" in md


def test_absent_keys_print_not_measured(run_dir: Path) -> None:
    md = (run_dir / "report" / "report.md").read_text()
    assert f"Alignment: {NOT_MEASURED}." in md
    assert f"Table 6: {NOT_MEASURED}" in md
    assert "| align | not run |" in md
    # PosPrec is not in the toy metrics: never invented
    row = next(line for line in md.splitlines() if line.startswith("|  | AdNanny |"))
    assert row.split(" | ")[6] == NOT_MEASURED


def test_direction_sentences(run_dir: Path) -> None:
    md = (run_dir / "report" / "report.md").read_text()
    assert re.search(r"AdNanny − lexical baseline BACC = -5\.00 points \(paired bootstrap 95% interval "
                     r"\[-9\.00, -1\.00\]\)\. This disagrees with the paper", md)
    assert "AdNanny − prompted teacher (4o-1120 analog) BACC = +15.00 points" in md
    assert "Same direction as the paper." in md


def test_html_is_self_contained_with_embedded_charts(run_dir: Path) -> None:
    page = (run_dir / "report" / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'href="http|<link |<script', page)
    png = base64.b64decode(srcs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (run_dir / "report" / "charts").iterdir()} >= {"bacc.png", "funnel.png",
                                                                            "train_loss.png"}
    assert "Table 1: Query–ad relevance (Bad defect view)" in page


def test_disagreements_of_other_tables(tmp_path: Path, run_dir: Path) -> None:
    """Rewrite the label/align/distill metrics the other way round and read the sentences."""
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    label = json.loads((d / "label" / "manifest.json").read_text())
    label["metrics"]["precision"]["query_ad"]["fp8"]["bacc"] = 0.60
    label["metrics"]["throughput"] = {"label_only": 1.0, "label_reasoning": 2.0}
    (d / "label" / "manifest.json").write_text(json.dumps(label))
    (d / "align").mkdir()
    (d / "align" / "manifest.json").write_text(json.dumps({
        "stage": "align", "status": "done", "metrics": {"reward_before": 0.5, "reward_after": 0.4, "kl": 0.01},
        "artifacts": {}, "notes": []}))
    (d / "distill").mkdir()
    sysm = {"student": {"metrics": {"bacc": 0.7}, "ci": {"bacc": [0.68, 0.72]}, "n": 50},
            "student_dqc": {"metrics": {"bacc": 0.6}, "ci": {"bacc": [0.58, 0.62]}, "n": 50},
            "teacher": {"metrics": {"bacc": 0.5}, "n": 50}}
    (d / "distill" / "manifest.json").write_text(json.dumps({
        "stage": "distill", "status": "done", "metrics": {"table6": {"query_ad": sysm}}, "notes": []}))
    md = build_report(d).to_markdown()
    assert "FP8 loses 10.00 BACC points to BF16 — the paper finds FP8 no worse" in md
    assert "Label-only throughput (1.00/s) is not above label+reasoning (2.00/s)" in md
    assert "The reward fell during alignment — this disagrees with the paper" in md
    assert "the student trained with DQC scores lower on bacc (60.00 vs 70.00)" in md
    assert "| AdNanny | not measured | not measured |" in md  # Table 6 row of a system the stage did not score
    assert "| student (with DQC) | 60.00 [58.00, 62.00] | 50 |" in md


def test_report_of_a_missing_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match=r"run directory `.*nope` does not exist"):
        write_report(tmp_path / "nope")


def test_schema_is_documented_in_the_module() -> None:
    import adnanny.report as rep

    schema = Path("/work/notes/flow_schema.md")
    doc = rep.__doc__ or ""
    for key in ("funnel", "golden", "tokens_per_s", "reward_before", "weight_bytes", "paired", "precision",
                "throughput", "injection", "table6", "student_dqc"):
        assert key in doc
    if schema.is_file():  # the shared note is the source; every schema line is in the docstring
        for line in schema.read_text().splitlines()[1:]:
            assert line.strip() in doc, line
