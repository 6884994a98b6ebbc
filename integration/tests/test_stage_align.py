"""The align stage: adnanny-rl GRPO from the train stage's model at tiny sizes, with the label reward and the
downstream retrieval and CTR rewards: the RL log (step, reward, kl), held-out reward before/after with a paired
interval, the aligned model dir, and honest notes for rewards on tasks the model was not trained on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from adnanny.stage import StageContext
from adnanny.stages.align import STAGE, AlignStageConfig, paired_bootstrap_mean

FLOW = SimpleNamespace(tasks=["query_ad"], seed=0, data={})


def _align(tmp: Path, rewards: list[str]):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_stage_train import cook_and_train

    _tctx, tres = cook_and_train(tmp, steps=2)
    (tmp / "train" / "manifest.json").write_text(json.dumps({"artifacts": tres.artifacts}))
    (tmp / "align").mkdir()
    cfg = AlignStageConfig(steps=2, prompts_per_step=2, group_size=2, eval_prompts=4, max_completion_tokens=8,
                           threads=2, rewards=rewards)
    ctx = StageContext("align", tmp / "align", tmp, {"cook": tmp / "cook", "train": tmp / "train"}, cfg, FLOW,
                       log=lambda s: None)
    return ctx, STAGE.run(ctx)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory):
    # the CTR reward fits its click model on ~31k impressions (~30 s under load): it runs in the slow test below
    return _align(tmp_path_factory.mktemp("run"), ["labels", "retrieval"])


def test_rl_log_and_reward_metrics(aligned) -> None:
    ctx, res = aligned
    m = res.metrics
    assert m["reward_task"] == "query_ad" and m["steps"] == 2
    assert isinstance(m["reward_before"], float) and isinstance(m["reward_after"], float)
    lo, hi = m["reward_ci"]
    assert lo <= m["reward_after"] - m["reward_before"] <= hi or lo == hi
    assert set(m["tasks"]) == {"query_ad", "keyword_query"}
    assert all(v["n"] == 4 for v in m["tasks"].values())
    log = [json.loads(x) for x in (ctx.out / res.artifacts["log"]).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all({"step", "reward", "kl"} <= set(r) for r in log)
    assert m["kl"] >= 0.0


def test_aligned_model_loads_and_lineage(aligned) -> None:
    from transformers import AutoModelForCausalLM

    ctx, res = aligned
    AutoModelForCausalLM.from_pretrained(ctx.out / res.artifacts["model"])
    assert res.lineage["policy"].endswith("train/model")
    # the downstream rewards ran on tasks the model never trained on, and the notes say so
    assert any("keyword_query" in n and "not trained on" in n for n in res.notes)
    assert STAGE.trace(ctx.out, "anything") is None
    # label reads the task definitions and the calibrated threshold from the aligned model itself
    model = ctx.out / res.artifacts["model"]
    assert (model / "tasks").is_dir() and (model / "adnanny_model.json").is_file()
    # ... with the threshold refitted by adnanny-rl on the held-out split (RL moved the scores it was fitted on)
    assert any("threshold refitted after RL" in n for n in res.notes)
    entry = json.loads((model / "adnanny_model.json").read_text())["tasks"]["query_ad"]
    assert entry["calibrated_by"] == "adnanny-rl"
    assert entry["threshold"] == res.metrics["calibration"]["query_ad"]["threshold"]


def test_paired_bootstrap_interval() -> None:
    lo, hi = paired_bootstrap_mean([0.0] * 50, [1.0] * 50)
    assert lo == hi == 1.0
    lo, hi = paired_bootstrap_mean([0.0, 1.0] * 25, [1.0, 0.0] * 25, seed=1)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_bootstrap_mean([1.0], [])


def test_supports_names_what_is_not_wired() -> None:
    lines = STAGE.supports(AlignStageConfig(overrides={"backend": "megatron"}), FLOW)
    assert lines[0].supported
    assert not next(s for s in lines if s.what == "rl backend: megatron").supported


@pytest.mark.slow
def test_ctr_reward_runs(tmp_path: Path) -> None:
    ctx, res = _align(tmp_path, ["labels", "retrieval", "ctr"])
    assert set(res.metrics["tasks"]) == {"query_ad", "keyword_query", "ad_rewrite"}
    assert (ctx.out / "rl" / "ctr" / "ctr.json").is_file()  # the frozen click model, fitted once per run
    assert (ctx.out / "data" / "ad_rewrite.parquet").is_file()
