"""Uneven pipeline stages from adnanny-ckpt's plan, as megatron-core's pipeline_model_parallel_layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adnanny_megatron.errors import AdNannyMegatronError
from adnanny_megatron.launch import check_ok, run_torchrun

pytestmark = pytest.mark.filterwarnings("ignore")

V3_CONFIG = Path(__file__).parents[2] / "adnanny-ckpt" / "tests" / "data" / "deepseek_v3_config.json"


def test_paper_layout_is_built_from_ckpt_plan_and_accepted() -> None:
    from adnanny_ckpt.layout import plan_layout

    from adnanny_megatron.layout import check_layout

    cfg = json.loads(V3_CONFIG.read_text())
    plan = plan_layout(cfg, 31, 8, dp=8)
    views = check_layout(cfg, plan.layout, plan=plan)  # raises if megatron-core refuses it
    assert len(views) == 31
    assert views[0].embedding and views[0].dense == [0, 1, 2] and not views[0].moe
    assert views[0].megatron == ["embedding", "decoder", "decoder", "decoder"]
    moe = [len(v.moe) for v in views[1:]]
    assert sum(moe) == 58 and set(moe) <= {1, 2} and all(not v.dense for v in views[1:])
    assert views[-1].head and views[-1].megatron[-1] == "loss" and not any(v.head for v in views[:-1])
    assert [v.layers for v in views] == plan.layout.stages  # ckpt's plan, not a recomputation


def test_scaled_down_uneven_layout() -> None:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    from adnanny_megatron.layout import check_layout, layout_from_stage_sizes

    cfg = tiny_deepseek_v3_config(fp8=False, num_hidden_layers=7)
    views = check_layout(cfg, layout_from_stage_sizes("2,3,2", num_experts=8))
    assert [(v.dense, v.moe, v.embedding, v.head) for v in views] == [
        ([0], [1], True, False), ([], [2, 3, 4], False, False), ([], [5, 6], False, True)]
    assert [v.megatron for v in views] == [["embedding", "decoder", "decoder"], ["decoder"] * 3,
                                           ["decoder", "decoder", "loss"]]


def test_megatron_refusal_is_reported() -> None:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    from adnanny_megatron.provider import transformer_config_from_hf

    cfg = tiny_deepseek_v3_config(fp8=False)
    with pytest.raises(AdNannyMegatronError, match=r"megatron-core refused pipeline layout .*first layer must be "
                                                   r"embedding"):
        transformer_config_from_hf(cfg, bf16=False, pp=2, use_te=False,
                                   pipeline_layout=[["decoder", "decoder", "loss"], ["embedding", "decoder", "decoder"]])
    from adnanny_megatron.layout import layout_from_stage_sizes

    with pytest.raises(AdNannyMegatronError, match=r"places 5 decoder layers but the model has 4"):
        layout_from_stage_sizes("2,3", num_layers=4)


def test_layout_cli_json_and_refusal(run_cli) -> None:
    res = run_cli(["layout", "--hf-config", str(V3_CONFIG), "--pp", "31", "--ep", "8", "--dp", "8", "--json"])
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["world_size"] == 248 and len(rep["stages"]) == 31
    assert rep["stages"][0]["dense"] == [0, 1, 2] and rep["stages"][-1]["head"]
    bad = run_cli(["layout", "--hf-config", str(V3_CONFIG), "--pp", "31", "--ep", "7"], check=False)
    assert bad.returncode == 2 and "does not divide the model's 256 routed experts" in bad.stderr


@pytest.mark.slow  # ~2 min on the shared CPU: a 3-process and a 1-process run
def test_uneven_pp3_trains_like_one_process(tmp_path: Path) -> None:
    """1 dense + 6 MoE layers over PP3 as [embedding, dense, 1 MoE] / [3 MoE] / [2 MoE, head] (gloo)."""
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    cfg = tiny_deepseek_v3_config(fp8=False, num_hidden_layers=7, hidden_size=64, intermediate_size=96,
                                  moe_intermediate_size=32)
    write_synthetic_checkpoint(tmp_path / "hf", cfg, dtype="bf16", seed=0)
    hf_to_mcore(str(tmp_path / "hf"), str(tmp_path / "mc"), progress=False)
    base = ["train", "--model", str(tmp_path / "hf"), "--init", str(tmp_path / "mc" / "release"),
            "--seq_len", "16", "--batch_size", "2", "--lr", "1e-3", "--seed", "7", "--steps", "2"]
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    check_ok(run_torchrun(1, [*base, "--log_json", str(one)], timeout_s=400))
    res = check_ok(run_torchrun(3, [*base, "--layout", "pp3", "--stage_layers", "2,3,2", "--log_json", str(three)],
                                timeout_s=400, hang_after_s=120))
    assert "training finished" in res.output
    a = [json.loads(x) for x in one.read_text().splitlines()]
    b = [json.loads(x) for x in three.read_text().splitlines()]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (a, b)
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-5 * abs(x["grad_norm"]), (a, b)
