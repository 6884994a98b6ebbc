"""The distill stage on adnanny-sft's shared fine-tuned fixture: AdNanny labels and explains pool inputs, DQC
(adnanny-cook's filters) sorts its outputs, two tiny students train with adnanny-sft on real corpus folders, and
Table 6 compares teacher, AdNanny and the students on the label stage's held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from adnanny.stage import StageContext
from adnanny.stages.distill import STAGE, Config, dqc_reason
from adnanny.stages.label import STAGE as LABEL
from adnanny.stages.quantize import StageInputError
from adnanny_cook.settings import load_settings


@pytest.fixture(scope="module")
def model() -> Path:
    from adnanny_sft.testing import fine_tuned_fixture

    return fine_tuned_fixture()


@pytest.fixture(scope="module")
def run(model: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("run")
    inputs = {"cook": model.parent / "sample", "train": model.parent}
    (run_dir / "label").mkdir()
    lcfg = LABEL.Config(max_rows=16, reasoning_rows=0, injection_rows=0, prompted_model=str(model), lexical=False,
                        n_resamples=0)
    LABEL.run(StageContext("label", run_dir / "label", run_dir, inputs, lcfg, None, log=lambda s: None))
    # permissive DQC thresholds so that both students train on this weak fixture; the filters themselves are
    # pinned by test_dqc_reason_applies_cooks_filters
    cfg = load_settings(Config, overrides={"pool_rows": 24, "student_steps": 8, "n_resamples": 100,
                                           "dqc_min_words": 0, "dqc_min_overlap": 0, "dqc_max_repeat": 1.0},
                        error=ValueError, what="distill")
    (run_dir / "distill").mkdir()
    ctx = StageContext("distill", run_dir / "distill", run_dir, {**inputs, "label": run_dir / "label"}, cfg, None,
                       log=lambda s: None)
    return ctx, STAGE.run(ctx)


def test_distill_corpora_students_and_table6(run, model: Path) -> None:
    ctx, res = run
    f = res.metrics["funnel"]["query_ad"]
    assert f["pool"] == 24 and f["parsed"] <= 24 and f["dqc_kept"] + sum(f["dropped"].values()) == f["parsed"]
    corpus = pl.read_parquet(ctx.out / "corpus" / "corpus.parquet")
    prov = [json.loads(p) for p in corpus["provenance"].to_list()]
    assert all(p["teacher"] == "adnanny" and p["model"] == str(model) for p in prov)
    assert set(corpus["mode"].to_list()) == {"reasoning", "label"} and set(corpus["split"].to_list()) <= {"train",
                                                                                                        "eval"}
    held = set(pl.read_parquet(ctx.out.parent / "label" / "heldout" / "query_ad.parquet")["id"].to_list())
    assert not {p["id"] for p in prov} & held  # no held-out input reaches a student
    t6 = res.metrics["table6"]["query_ad"]
    assert {"teacher", "adnanny", "student"} <= set(t6)
    assert ("student_dqc" in t6) == (f["dqc_kept"] > 0)
    for system, r in t6.items():
        assert r["n"] == 16 and 0.0 <= r["metrics"]["acc"] <= 1.0, system
    assert res.metrics["table6_view"] == {"query_ad": "bad"}
    for system in ("student", "student_dqc"):
        if system in t6:
            sdir = ctx.out / res.artifacts[system]
            assert (sdir / "config.json").is_file() and (sdir / "adnanny_model.json").is_file()
    dqc = pl.read_parquet(ctx.out / "corpus_dqc" / "corpus.parquet") if f["dqc_kept"] else None
    if dqc is not None:
        assert set(dqc["id"].to_list()) <= set(corpus["id"].to_list())
        assert all(json.loads(p)["dqc"] == "kept" for p in dqc["provenance"].to_list())


def test_distill_trace_walks_back_to_adnannys_output(run, model: Path) -> None:
    ctx, res = run
    corpus = pl.read_parquet(ctx.out / "corpus" / "corpus.parquet")
    rid = corpus["id"][0]
    t = STAGE.trace(ctx.out, rid)
    assert t["corpus"]["id"] == rid and t["corpus"]["provenance"]["teacher"] == "adnanny"
    assert t["adnanny_output"]["id"] == rid[:-2] == t["upstream_id"] and t["model"] == str(model.resolve())
    held = pl.read_parquet(ctx.out.parent / "label" / "heldout" / "query_ad.parquet")["id"][0]
    assert "student" in STAGE.trace(ctx.out, held)
    assert STAGE.trace(ctx.out, "nope") is None


def test_rerun_reuses_students(run) -> None:
    ctx, res = run
    w = ctx.out / "student" / "model" / "model.safetensors"
    before = w.stat().st_mtime_ns
    again = STAGE.run(ctx)
    assert w.stat().st_mtime_ns == before and again.metrics["table6"] == res.metrics["table6"]


def test_dqc_reason_applies_cooks_filters() -> None:
    from adnanny_cook.tasks import load_task

    spec = load_task("query_ad")
    cfg = Config()
    inp = {"query": "running shoes in Austin", "ad_title": "Cushioned running shoes", "ad_description":
           "Austin store with cushioned running shoes for new runners.", "ad_url": "x.com"}
    labels = {"label": "good", "location_label": "good", "quality_label": "good"}
    tags = "<Label>Good</Label>\n<LocationLabel>Good</LocationLabel>\n<AdQuality>Good</AdQuality>"
    good = ("<think>The query asks for running shoes in Austin and the ad sells cushioned running shoes from an "
            "Austin store, the same product and place, so it fully satisfies the need.</think>\n" + tags)
    assert dqc_reason(spec, "a", good, labels, inp, cfg, "reasoning") == (None, "")
    loop = "<think>The query wants running shoes Austin " + "best " * 40 + "cushioned store.</think>\n" + tags
    assert dqc_reason(spec, "b", loop, labels, inp, cfg, "reasoning")[0] == "repetition"
    said_bad = good.replace("so it fully satisfies the need.", "so the relevance label 'Bad' fits the running "
                            "shoes Austin store.")
    assert dqc_reason(spec, "c", said_bad, labels, inp, cfg, "reasoning")[0] == "contradiction"
    vague = "<think>The ad matches the query well and is a fine choice overall for this person.</think>\n" + tags
    assert dqc_reason(spec, "d", vague, labels, inp, cfg, "reasoning")[0] == "boilerplate"
    assert dqc_reason(spec, "e", tags, labels, inp, cfg, "reasoning")[0] == "schema"
    assert dqc_reason(spec, "f", tags, labels, inp, cfg, "label") == (None, "")


def test_distill_needs_the_label_stage(model: Path, tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="needs the cook and label stages' folders"):
        STAGE.run(StageContext("distill", tmp_path, tmp_path, {"train": model.parent, "cook": model.parent / "sample"},
                               Config(), None, log=lambda s: None))


def test_pool_mode_auto_follows_the_training_corpus(model: Path, tmp_path: Path) -> None:
    from adnanny.stages.distill import _trained_mode

    assert _trained_mode(model, "query_ad") == "reasoning"  # the fixture trained on both target forms
    pl.DataFrame({"task": ["query_ad"], "mode": ["label"]}).write_parquet(tmp_path / "corpus.parquet")
    (tmp_path / "adnanny_model.json").write_text(json.dumps({"corpus": str(tmp_path / "corpus.parquet")}))
    assert _trained_mode(tmp_path, "query_ad") == "label"  # a label-only corpus (failed gate): label-only pool
