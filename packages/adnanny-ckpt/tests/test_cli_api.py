import json
import subprocess
import sys

import pytest
import torch

import adnanny_ckpt
from adnanny_ckpt.cli import main
from adnanny_ckpt.safetensors_io import HFCheckpointReader


def test_public_api_is_pinned():
    assert adnanny_ckpt.__all__ == [
        "__version__", "AdNannyCkptError", "CheckpointFormatError", "ConfigMismatchError", "LayoutError",
        "UnsafeInputError", "VerifyError", "LayoutPlan", "ParallelLayout", "plan_layout", "hf_to_mcore",
        "mcore_to_hf", "verify", "UnknownModelError", "resolve_model",
    ]
    for name in adnanny_ckpt.__all__:
        assert hasattr(adnanny_ckpt, name)
    assert issubclass(adnanny_ckpt.LayoutError, adnanny_ckpt.AdNannyCkptError)


def test_import_is_light():
    code = "import adnanny_ckpt, adnanny_ckpt.layout, adnanny_ckpt.names, adnanny_ckpt.models, sys; " \
           "assert not {'torch', 'safetensors', 'transformers', 'megatron'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_round_trip_with_toml_and_json(tiny_fp8_dir, tmp_path, capsys):
    toml = tmp_path / "conv.toml"
    toml.write_text('pp = 2\nep = 2\nformat = "legacy"\nte_names = true\n')
    out = tmp_path / "m"
    assert main(["hf-to-mcore", "--config", str(toml), "--hf", str(tiny_fp8_dir), "--out", str(out), "--ep", "4",
                 "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["layout"]["ep"] == 4 and rep["layout"]["pp"] == 2  # flag overrides the file
    assert (out / "release" / "mp_rank_00_001_003" / "model_optim_rng.pt").exists()
    sd = torch.load(out / "release" / "mp_rank_00_001_003" / "model_optim_rng.pt", weights_only=True)["model"]
    # stage 1 holds layers 1-3 as local layers 0-2; EP rank 3 holds experts 6, 7 as local 0, 1 (TE grouped names)
    assert "decoder.layers.2.mlp.experts.linear_fc1.weight1" in sd and "decoder.layers.3.input_layernorm.weight" not in sd
    assert "decoder.layers.0.self_attention.linear_q_up_proj.layer_norm_weight" in sd
    assert main(["verify", str(out), "--values", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["values_checked"]
    assert main(["mcore-to-hf", "--mcore", str(out), "--out", str(tmp_path / "h"), "--fp8", "--max-shard-size", "300KB",
                 "--no-progress", "--json"]) == 0
    r = HFCheckpointReader(json.loads(capsys.readouterr().out)["out"])
    assert r.names() == HFCheckpointReader(tiny_fp8_dir).names()


def test_cli_errors(tiny_bf16_dir, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("pp = 2\npipeline = 3\n")
    assert main(["hf-to-mcore", "--config", str(toml), "--hf", str(tiny_bf16_dir), "--out", str(tmp_path / "o")]) == 2
    assert "unknown key(s) `pipeline`" in capsys.readouterr().err
    assert main(["hf-to-mcore", "--hf", str(tiny_bf16_dir), "--out", str(tmp_path / "o"), "--ep", "3"]) == 2
    assert "`ep` = 3 does not divide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mcore-to-hf", "--max-shard-size", "lots"])


def test_help_explains_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("hf-to-mcore", "mcore-to-hf", "plan", "verify"):
        assert verb in out


def test_iteration_dir_and_unknown_option(tiny_bf16_dir, tmp_path):
    from adnanny_ckpt import AdNannyCkptError, hf_to_mcore, mcore_to_hf

    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", iteration=7, ckpt_format="legacy", progress=False)
    assert (m / "latest_checkpointed_iteration.txt").read_text() == "7"
    assert (m / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt").exists()
    h = mcore_to_hf(m, tmp_path / "h", progress=False)
    assert len(HFCheckpointReader(h)) == len(HFCheckpointReader(tiny_bf16_dir))
    with pytest.raises(AdNannyCkptError, match="unknown option\\(s\\) `pipeline_parallel`"):
        hf_to_mcore(tiny_bf16_dir, tmp_path / "x", pipeline_parallel=2)
