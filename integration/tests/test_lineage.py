"""The lineage walk: label -> model -> corpus + base model -> the corpus row's teacher prompt and response."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from adnanny.config import load_flow_config
from adnanny.flow import run_flow
from adnanny.lineage import LineageError, format_lineage, trace_lineage
from adnanny.stage import StageResult

_TOYS = Path(__file__).with_name("test_flow_toys.py")


def _toys():
    spec = importlib.util.spec_from_file_location("adnanny_test_toys_lineage", _TOYS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TOYS = _toys()


class Distill(TOYS.ToyLabel):
    """A student row `s-rN` made from label row `rN`: maps ids upstream through `upstream_id`."""

    name = "distill"
    requires: tuple[str, ...] = ("label",)

    def run(self, ctx: Any) -> StageResult:
        preds = (ctx.inputs["label"] / "predictions.jsonl").read_text().splitlines()
        (ctx.out / "student.jsonl").write_text("".join(
            json.dumps({"id": "s-" + json.loads(p)["id"], "from": json.loads(p)["id"]}) + "\n" for p in preds))
        return StageResult(artifacts={"data": "student.jsonl"},
                           lineage={"labels": str(ctx.inputs["label"] / "predictions.jsonl")})

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        for line in (out / "student.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["id"] == row_id:
                return {"student_row": r, "upstream_id": r["from"]}
        return None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    st = {**TOYS.toy_stages(), "distill": Distill()}
    d = tmp_path_factory.mktemp("lin") / "run"
    run_flow(load_flow_config(None, stages=st, default=False, overrides={"run_dir": str(d)}), st,
             log=lambda s: None, report=False)
    return d, st


def _chain(node: dict) -> list[str]:
    names = [node["stage"]]
    for e in node.get("from", []):
        if "node" in e:
            names += _chain(e["node"])
    return names


def test_label_to_teacher_exchange(run: tuple[Path, dict]) -> None:
    d, st = run
    st = {k: v for k, v in st.items() if k != "distill"}
    tree = trace_lineage(d, "r3", st)
    root = tree["root"]
    assert root["stage"] == "label" and root["trace"]["prediction"]["id"] == "r3"
    assert _chain(root) == ["label", "train", "cook"]
    train = root["from"][0]["node"]
    whats = {e["what"]: e for e in train["from"]}
    assert whats["base_model"]["path"] == "/models/toy-base" and "node" not in whats["base_model"]
    cook = whats["corpus"]["node"]
    corpus = {json.loads(x)["id"]: json.loads(x) for x in (d / "cook" / "corpus.jsonl").read_text().splitlines()}
    assert cook["trace"] == {"teacher_prompt": corpus["r3"]["prompt"], "teacher_response": corpus["r3"]["response"]}
    text = format_lineage(tree)
    assert "teacher_response: <Reason>because 3</Reason>" in text
    assert {"what": "prompted_model", "value": "toy-teacher"} in root["from"]  # a name, not a path
    assert "<- prompted_model: toy-teacher\n" in text + "\n"


def test_walk_starts_at_the_latest_stage_and_follows_upstream_ids(run: tuple[Path, dict]) -> None:
    d, st = run
    tree = trace_lineage(d, "s-r2", st)  # label does not know student ids: distill is the latest that does
    assert _chain(tree["root"]) == ["distill", "label", "train", "cook"]
    label = tree["root"]["from"][0]["node"]
    assert label["trace"]["prediction"]["id"] == "r2"  # asked about the mapped id
    assert label["from"][0]["node"]["from"][1]["node"]["trace"]["teacher_prompt"].startswith("query 2 ")


def test_unknown_id_and_missing_dir(run: tuple[Path, dict], tmp_path: Path) -> None:
    d, st = run
    with pytest.raises(LineageError, match=r"id 'zz' is not known to any stage .*asked: \['label', 'distill', "
                                           r"'train', 'cook'\]"):
        trace_lineage(d, "zz", st)
    with pytest.raises(LineageError, match="does not exist"):
        trace_lineage(tmp_path / "none", "r1", st)


def test_a_moved_run_dir_keeps_its_lineage(run: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    d, st = run
    moved = tmp_path / "moved"
    shutil.copytree(d, moved)
    tree = trace_lineage(moved, "r1", st)
    assert all(e["exists"] for e in tree["root"]["from"] if "path" in e)
    assert tree["root"]["from"][0]["path"].startswith(str(moved))


def test_label_is_preferred_and_start_can_be_chosen(run: tuple[Path, dict]) -> None:
    d, st = run

    class KnowsAll(Distill):
        def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
            return {"student_prediction": row_id}

    st = {**st, "distill": KnowsAll()}
    assert trace_lineage(d, "r1", st)["root"]["stage"] == "label"
    assert trace_lineage(d, "r1", st, start="distill")["root"]["stage"] == "distill"
    with pytest.raises(LineageError, match=r"--stage 'nope' is not an installed stage"):
        trace_lineage(d, "r1", st, start="nope")
