import json
from pathlib import Path

import pytest

from adnanny_ckpt import LayoutError, ParallelLayout, plan_layout
from adnanny_ckpt.cli import main
from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

V3 = Path(__file__).parent / "data" / "deepseek_v3_config.json"


@pytest.fixture(scope="module")
def v3_plan():
    return plan_layout(json.loads(V3.read_text()), pp=31, ep=8, dp=8).to_json()


def test_v3_config_file_has_published_values():
    c = json.loads(V3.read_text())
    assert (c["num_hidden_layers"], c["first_k_dense_replace"], c["n_routed_experts"], c["hidden_size"]) == (61, 3, 256, 7168)
    assert c["quantization_config"]["weight_block_size"] == [128, 128] and c["rope_scaling"]["type"] == "yarn"


def test_plan_reproduces_paper_layout(v3_plan):
    j = v3_plan
    assert (j["pp"], j["ep"], j["dp"], j["tp"], j["world_size"]) == (31, 8, 8, 1, 248)
    assert 670e9 < j["total_params"] < 672e9  # DeepSeek-V3 main model: 671B
    st = j["stages"]
    assert st[0]["layers"] == [0, 1, 2] and st[0]["has_embedding"] and not st[0]["has_head"]
    moe = [s["layers"] for s in st[1:]]
    assert sorted(x for ls in moe for x in ls) == list(range(3, 61))  # the 58 MoE layers
    assert all(1 <= len(ls) <= 2 for ls in moe)
    assert sum(len(ls) == 2 for ls in moe) == 28 and sum(len(ls) == 1 for ls in moe) == 2
    assert st[-1]["has_head"] and not any(s["has_head"] for s in st[:-1])
    assert j["expert_ranges"] == [[32 * r, 32 * r + 31] for r in range(8)]
    assert j["expert_ranges"][7] == [224, 255]
    # every stage fits an 80 GB GPU under the stated formula, and stage 0 holds no experts
    assert max(s["bytes_per_gpu"] for s in st) < 80e9
    assert st[0]["params"] == st[0]["params_per_gpu"]


def test_bytes_per_gpu_formula_by_hand(v3_plan):
    # a stage with 2 MoE layers: per GPU 32 of 256 experts + the replicated rest
    c = json.loads(V3.read_text())
    h, f, fs = c["hidden_size"], c["moe_intermediate_size"], c["moe_intermediate_size"]
    nh, qk, v = c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"], c["v_head_dim"]
    attn = (c["q_lora_rank"] * h + c["q_lora_rank"] + nh * qk * c["q_lora_rank"]
            + (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * h + c["kv_lora_rank"]
            + nh * (c["qk_nope_head_dim"] + v) * c["kv_lora_rank"] + h * nh * v + 2 * h)
    dense = attn + 256 * h + 256 + 3 * fs * h
    expert = 32 * 3 * f * h
    want = 6 * 2 * (dense + expert) + 12 * (2 * dense / 8 + 2 * expert / 1)
    st = v3_plan["stages"][2]
    assert len(st["layers"]) == 2
    assert st["bytes_per_gpu"] == int(want)


def test_plan_cli_json(capsys):
    assert main(["plan", "--config", str(V3), "--pp", "31", "--ep", "8", "--dp", "8", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert set(j) >= {"pp", "ep", "dp", "tp", "world_size", "total_params", "stages", "expert_ranges"}
    assert set(j["stages"][0]) >= {"stage", "layers", "has_embedding", "has_head", "params", "bytes_per_gpu"}
    assert j["world_size"] == 248


def test_plan_cli_text_and_error(capsys):
    assert main(["plan", "--config", str(V3), "--pp", "31", "--ep", "8", "--dp", "8"]) == 0
    out = capsys.readouterr().out
    assert "world size 248" in out and "224-255" in out and "bytes_per_gpu = 6*" in out
    assert main(["plan", "--config", str(V3), "--pp", "31", "--ep", "6"]) == 2
    assert "`ep` = 6 does not divide the model's 256 routed experts" in capsys.readouterr().err


def test_flops_balance_and_mtp():
    c = json.loads(V3.read_text())
    j = plan_layout(c, pp=31, ep=8, dp=8, balance="flops").to_json()
    assert j["stages"][0]["layers"] == [0, 1, 2]
    j2 = plan_layout(c, pp=16, ep=8, dp=8, include_mtp=True).to_json()
    assert j2["stages"][-1]["has_mtp"] and j2["total_params"] > j["total_params"]


def test_tiny_pp2_and_explicit_map():
    c = tiny_deepseek_v3_config()
    assert plan_layout(c, pp=2, ep=2).layout.stages == [[0], [1, 2, 3]]
    lay = plan_layout(c, pp=2, ep=2, layer_map=[[0, 1], [2, 3]]).layout
    assert lay.stage_of(1) == 0 and lay.stage_of(2) == 1 and lay.expert_range(1) == (4, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pp=2, stages=[[0], [1]], ep=3, num_experts=8), r"`ep` = 3 does not divide the model's 8 routed experts"),
        (dict(pp=2, stages=[[0, 2], [1]]), "must assign layers"),
        (dict(pp=3, stages=[[0], [1]]), r"2 stages but `pp` = 3"),
        (dict(pp=1, stages=[[0]], ep=2, dp=3, num_experts=8), r"`dp` \(3\) must be a multiple of `ep` \(2\)"),
        (dict(pp=0, stages=[]), "`pp` must be a positive integer"),
    ],
)
def test_layout_errors(kwargs, match):
    with pytest.raises(LayoutError, match=match):
        ParallelLayout(**kwargs)


def test_too_many_stages():
    with pytest.raises(LayoutError, match="cannot give each of 5 pipeline stages"):
        plan_layout(tiny_deepseek_v3_config(), pp=6)
