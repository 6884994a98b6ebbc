"""The train stage: adnanny-sft on a (label-only) cook corpus at tiny sizes -> an exported model that loads, the
JSONL step log, validation BACC/AUC in the flow schema, lineage; the recipe comes from adnanny-sft's fixture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from adnanny.stage import StageContext
from adnanny.stages.cook import STAGE as COOK
from adnanny.stages.cook import CookStageConfig
from adnanny.stages.train import STAGE, TrainStageConfig, recipe

FLOW = SimpleNamespace(tasks=["query_ad"], seed=0, data={})


def cook_and_train(tmp: Path, **train_over) -> tuple[StageContext, object]:
    """A teacher-free cook of 200 inputs, then `steps` of SFT (shared with the align test)."""
    (tmp / "cook").mkdir(parents=True, exist_ok=True)
    cook_cfg = CookStageConfig(teacher="none", max_inputs=200, sample_sizes={"queries": 2600, "corpus_query_ad": 1500})
    cook = StageContext("cook", tmp / "cook", tmp, {}, cook_cfg, FLOW, log=lambda s: None)
    res = COOK.run(cook)
    (tmp / "cook" / "manifest.json").write_text(json.dumps({"artifacts": res.artifacts}))
    (tmp / "train").mkdir(exist_ok=True)
    cfg = TrainStageConfig(**{"steps": 6, "batch_size": 4, "eval_rows_per_task": 4, "threads": 2, **train_over})
    ctx = StageContext("train", tmp / "train", tmp, {"cook": tmp / "cook"}, cfg, FLOW, log=lambda s: None)
    return ctx, STAGE.run(ctx)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    return cook_and_train(tmp_path_factory.mktemp("run"))


def test_model_dir_loads_and_metrics_follow_the_schema(trained) -> None:
    from transformers import AutoModelForCausalLM

    from adnanny_ckpt.models import check_model_dir
    from adnanny_sft import read_model_manifest

    ctx, res = trained
    model = ctx.out / res.artifacts["model"]
    check_model_dir(model)
    assert AutoModelForCausalLM.from_pretrained(model).config.hidden_size == recipe()["tiny_hidden_size"]
    man = read_model_manifest(model)
    assert "query_ad" in man["tasks"]
    m = res.metrics
    assert m["steps"] == 6 and m["tokens_per_s"] > 0
    assert set(m["val"]["query_ad"]) >= {"bacc", "auc"} and 0 <= m["val"]["query_ad"]["bacc"] <= 1
    steps = [json.loads(x) for x in (ctx.out / res.artifacts["log"]).read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, 7)) and all(r["loss"] > 0 for r in steps)
    raw = [json.loads(x) for x in (ctx.out / res.artifacts["sft_log"]).read_text().splitlines()]
    assert [r["loss"] for r in raw if r["kind"] == "train"] == [r["loss"] for r in steps]


def test_recipe_and_weighting_reach_adnanny_sft(trained) -> None:
    ctx, _res = trained
    cfg = json.loads((ctx.out / "sft" / "manifest.json").read_text())["config"]
    rec = recipe()
    for k in ("model", "tiny_hidden_size", "tiny_layers", "class_balance", "target_forms", "lr_schedule"):
        assert cfg[k] == rec[k], k
    assert cfg["instance_weighting"] and cfg["task_weighting"]
    assert cfg["max_steps"] == 6 and cfg["batch_size"] == 4 and cfg["tasks"] == ["query_ad"]
    assert cfg["tokenizer"].endswith("cook/world/tokenizer")


def test_lineage_corpus_and_base_model(trained) -> None:
    import polars as pl

    ctx, res = trained
    assert res.lineage["corpus"].endswith("cook/corpus") and res.lineage["base_model"] == recipe()["model"]
    rid = pl.read_parquet(ctx.run_dir / "cook" / "corpus" / "corpus.parquet")["id"][0]
    t = STAGE.trace(ctx.out, rid)
    assert t is not None and t["base_model"] == recipe()["model"] and t["rows"][0]["row"] == rid
    assert Path(t["model"]).is_dir()
    assert STAGE.trace(ctx.out, "not-a-row") is None


def test_bad_override_names_the_key(tmp_path: Path, trained) -> None:
    ctx, _ = trained
    bad = StageContext("train", tmp_path, ctx.run_dir, ctx.inputs,
                       TrainStageConfig(steps=1, overrides={"lrr": 1.0}), FLOW, log=lambda s: None)
    with pytest.raises(Exception, match="lrr"):
        STAGE.run(bad)


def test_supports_is_honest() -> None:
    lines = STAGE.supports(TrainStageConfig(overrides={"backend": "nope"}), FLOW)
    assert lines[0].supported
    assert not next(s for s in lines if s.what == "train backend: nope").supported
