"""benchmarks/paper_tables.py: the paper's derived columns recomputed; a changed printed value is flagged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("paper_tables", REPO / "benchmarks" / "paper_tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


# Table 1's Dataset A rows and Table 10 as the paper prints them (consistent), with a caption and prose around.
PAPER = """Some text.

Table 1: Query–ad relevance (**Bad** defect view).

Dataset\tModel\tModel DR\tBACC\tAce\tPosAcc\tPosPrec\tNegAcc\tNegPrec\tPosF1\tNegF1
Dataset A DR 56.62\t4o-1120\t56.95\t76.25\t76.70\t72.87\t73.24\t79.63\t79.24\t73.10\t79.53
\tAdNanny\t53.25\t80.50\t80.40\t81.25\t75.40\t79.74\t84.80\t78.18\t82.10
\tDelta\t-3.71\t4.25\t3.70\t8.38\t2.16\t0.11\t5.56\t5.07\t2.56

Table 8: Generalization.

Dataset\tDeepSeek-R1\tAdNanny (multi-task finetuned)
anli_r3\t0.694\t0.658 (−5.19%)
arc_challenge\t0.961\t0.952 (−0.94%)
<b>Avg.</b>\t<b>0.828</b>\t<b>0.805</b> (−2.78%)

Table 10: Serving cost.

Model\tAvg. input tokens\tAvg. output tokens\tGPU cost (\\$/s)\tThroughput (samples/s)\tCost / 1M samples (\\$)\tCost ratio (AdNanny / GPT-4o)
GPT-4o (prompt baseline)\t1710\t260\t—\t—\t592\t1.00
AdNanny (label only)\t1654\t21\t0.0027\t20.22\t134\t0.23
"""


def test_consistent_rows_are_not_flagged() -> None:
    mod = _module()
    tables = mod.parse_tables(PAPER)
    assert sorted(tables) == [1, 8, 10]
    checks = mod.check_binary_table(1, tables[1], 0.5)
    assert {c.column for c in checks} >= {"Model DR", "BACC", "Acc", "PosPrec", "NegPrec", "PosF1", "NegF1"}
    assert not [c for c in checks if c.flagged]
    bacc = next(c for c in checks if c.model == "4o-1120" and c.column == "BACC")
    assert bacc.recomputed == pytest.approx((72.87 + 79.63) / 2, abs=1e-3)
    assert not [c for c in mod.check_table8(tables[8], 0.5) if c.flagged]
    t10, tput = mod.check_table10(tables[10], 0.5)
    assert tput == {"AdNanny (label only)": 20.22} and not [c for c in t10 if c.flagged]


def test_a_changed_printed_value_is_flagged_by_name() -> None:
    mod = _module()
    bad = PAPER.replace("\t76.70\t", "\t78.70\t").replace("0.658 (−5.19%)", "0.658 (−3.19%)").replace(
        "\t134\t0.23", "\t150\t0.23")
    tables = mod.parse_tables(bad)
    flagged = [(c.table, c.dataset, c.model, c.column) for c in mod.check_binary_table(1, tables[1], 0.5)
               if c.flagged]
    assert (1, "Dataset A", "4o-1120", "Acc") in flagged
    assert (1, "Dataset A", "Delta", "Acc") in flagged  # the Delta row no longer matches the printed rows
    t8 = [c for c in mod.check_table8(tables[8], 0.5) if c.flagged]
    assert [(c.dataset, c.column) for c in t8] == [("anli_r3", "relative change %")]
    t10, _ = mod.check_table10(tables[10], 0.5)
    assert [c.column for c in t10 if c.flagged] == ["Cost / 1M samples ($)"]


def test_cli_writes_json(tmp_path: Path) -> None:
    mod = _module()
    paper = tmp_path / "paper.md"
    text = PAPER
    for n in (2, 3, 4, 5):  # the CLI needs every table it checks
        text += f"\nTable {n}: copy.\n\n" + PAPER.split("Table 1: Query–ad relevance (**Bad** defect view).\n\n")[1].split("\n\n")[0] + "\n"
    paper.write_text(text, encoding="utf-8")
    out = tmp_path / "out.json"
    assert mod.main(["--paper", str(paper), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_flagged"] == 0 and result["n_checked"] > 40
    assert mod.main(["--paper", str(tmp_path / "missing.md"), "--out", str(out)]) == 2
