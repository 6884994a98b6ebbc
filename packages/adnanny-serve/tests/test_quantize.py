"""FP8 export in DeepSeek's format, and loading it back: transformers' own FP8 path vs our dequantize-at-load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from adnanny_ckpt.fp8 import dequantize_blocks, keeps_bf16, scale_shape
from adnanny_ckpt.safetensors_io import HFCheckpointReader
from adnanny_serve.cli import main
from adnanny_serve.errors import QuantizeError
from adnanny_serve.fp8_load import dequantized_state_dict, is_fp8_checkpoint, load_fp8_dequantized
from adnanny_serve.quantize import FP8_QUANTIZATION_CONFIG, quantize_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_export_is_deepseek_format(tiny_bf16: Path, tiny_fp8: Path) -> None:
    cfg = json.loads((tiny_fp8 / "config.json").read_text())
    assert cfg["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "weight_block_size": [128, 128]}
    assert is_fp8_checkpoint(tiny_fp8) and not is_fp8_checkpoint(tiny_bf16)
    assert (tiny_fp8 / "tokenizer.json").is_file() and (tiny_fp8 / "manifest.json").is_file()
    src, out = HFCheckpointReader(tiny_bf16), HFCheckpointReader(tiny_fp8)
    n_fp8 = 0
    for name in src.names():
        t = out.get(name)
        if keeps_bf16(name):
            want = torch.float32 if "e_score_correction_bias" in name else torch.bfloat16
            assert t.dtype == want, name
            assert name + "_scale_inv" not in out
            assert torch.equal(t, src.get(name).to(want))
        else:
            n_fp8 += 1
            assert t.dtype == torch.float8_e4m3fn, name
            s = out.get(name + "_scale_inv")
            assert s.dtype == torch.float32 and tuple(s.shape) == scale_shape(tuple(t.shape))
            w = src.get(name).float()
            deq = dequantize_blocks(t, s, out_dtype=torch.float32)
            # e4m3 has 3 mantissa bits: relative error <= 2^-4, plus the subnormal step of the block scale
            bound = w.abs() / 16 + s.max() * 2.0**-9
            assert bool(((deq - w).abs() <= bound).all()), name
    assert n_fp8 > 50 and any(name.endswith("_scale_inv") for name in out.names())
    assert set(out.names()) == set(src.names()) | {n + "_scale_inv" for n in src.names() if not keeps_bf16(n)}


def test_transformers_fp8_load_equals_ours(tmp_path: Path) -> None:
    """Block-aligned shapes (transformers' CPU dequantizer needs them): identical weights and logits."""
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint
    from transformers import AutoModelForCausalLM

    cfg = tiny_deepseek_v3_config(hidden_size=128, vocab_size=512, fp8=False, intermediate_size=256,
                                  moe_intermediate_size=128, qk_nope_head_dim=16, v_head_dim=16)
    write_synthetic_checkpoint(tmp_path / "bf16", cfg, dtype="bf16", seed=1)
    quantize_checkpoint(tmp_path / "bf16", tmp_path / "fp8")
    ours = load_fp8_dequantized(tmp_path / "fp8", dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "fp8", dtype=torch.float32)
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert sd_o.keys() == sd_t.keys()
    assert [k for k in sd_o if not torch.equal(sd_o[k], sd_t[k])] == []
    x = torch.randint(4, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x).logits, theirs(x).logits)


def test_ragged_fp8_loads_like_transformers_on_dequantized_weights(tiny_fp8: Path, tmp_path: Path) -> None:
    """Ragged blocks (320 = 2.5 x 128): our loader == transformers loading the same weights pre-dequantized."""
    from adnanny_ckpt.safetensors_io import write_safetensors_file
    from transformers import AutoModelForCausalLM

    sd = dequantized_state_dict(tiny_fp8, torch.float32)
    plain = tmp_path / "plain"
    plain.mkdir()
    write_safetensors_file(plain / "model.safetensors", sd)
    cfg = json.loads((tiny_fp8 / "config.json").read_text())
    cfg.pop("quantization_config")
    (plain / "config.json").write_text(json.dumps(cfg))
    ref = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
    ours = load_fp8_dequantized(tiny_fp8, dtype=torch.float32)
    x = torch.randint(4, min(5000, int(cfg["vocab_size"])), (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x).logits, ref(x).logits)
    # and the weights really are the block dequantization of the stored FP8 bytes
    r = HFCheckpointReader(tiny_fp8)
    name = "model.layers.0.mlp.gate_proj.weight"
    assert tuple(r.info(name).shape)[0] % 128 != 0
    assert torch.equal(sd[name], dequantize_blocks(r.get(name), r.get(name + "_scale_inv"), out_dtype=torch.float32))


def test_export_errors(tiny_bf16: Path, tiny_fp8: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_checkpoint(tiny_fp8, tmp_path / "again")
    with pytest.raises(QuantizeError, match="already exists"):
        quantize_checkpoint(tiny_bf16, tiny_fp8)
    with pytest.raises(QuantizeError, match="config.json"):
        quantize_checkpoint(tmp_path, tmp_path / "x")
    assert not (tmp_path / "again").exists()


def test_cli_quantize(tiny_bf16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_bf16), "--out", str(out), "--max-shard-gb", "0.001", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fp8_tensors"] > 0 and rep["bytes_out"] < rep["bytes_in"]
    assert (out / "model.safetensors.index.json").is_file()  # 1 MiB shards -> several shards + index
    assert json.loads((out / "config.json").read_text())["quantization_config"] == FP8_QUANTIZATION_CONFIG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    assert main(["quantize", "--model", str(tiny_bf16), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    shutil.rmtree(out)
