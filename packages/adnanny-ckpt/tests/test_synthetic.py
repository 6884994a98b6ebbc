import json

import pytest
import torch

from adnanny_ckpt.fp8 import keeps_bf16
from adnanny_ckpt.safetensors_io import HFCheckpointReader
from adnanny_ckpt.synthetic import hf_tensor_shapes, tiny_deepseek_v3_config, write_synthetic_checkpoint


def test_tiny_config_fields():
    c = tiny_deepseek_v3_config()
    assert c["num_hidden_layers"] == 4 and c["first_k_dense_replace"] == 1
    assert (c["n_routed_experts"], c["n_shared_experts"], c["n_group"], c["topk_group"], c["num_experts_per_tok"]) == (
        8, 1, 4, 2, 4)
    assert c["num_experts_per_tok"] == 2 * c["topk_group"]
    assert c["rope_scaling"]["type"] == "yarn" and "mscale_all_dim" in c["rope_scaling"]
    assert c["quantization_config"]["weight_block_size"] == [128, 128]


def test_fp8_checkpoint_format(tiny_fp8_dir, tiny_cfg):
    r = HFCheckpointReader(tiny_fp8_dir)
    shapes = hf_tensor_shapes(tiny_cfg)
    scales = [n for n in r.names() if n.endswith("_scale_inv")]
    assert set(r.names()) == set(shapes) | set(scales)
    ragged = 0
    for name, shape in shapes.items():
        info = r.info(name)
        assert info.shape == shape
        if keeps_bf16(name):
            assert info.dtype == ("float32" if name.endswith("e_score_correction_bias") else "bfloat16"), name
        else:
            assert info.dtype == "float8_e4m3fn"
            s = r.info(name + "_scale_inv")
            assert s.dtype == "float32" and s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
            ragged += (shape[0] % 128 != 0) or (shape[1] % 128 != 0)
    assert ragged > 10  # the tiny dims exercise ragged edge blocks
    assert len({r.info(n).file for n in r.names()}) > 1  # sharded, with an index
    assert json.loads((tiny_fp8_dir / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"


def test_bf16_checkpoint_loads_in_transformers_and_runs(tiny_bf16_dir):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        tiny_bf16_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"]
    assert all(".layers.4." in k for k in info["unexpected_keys"])  # only the MTP layer, which HF does not model
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = model(ids).logits
    assert logits.shape == (2, 12, 512) and torch.isfinite(logits).all()
    # the loaded router bias is the file's, not a default zero
    r = HFCheckpointReader(tiny_bf16_dir)
    assert torch.equal(model.model.layers[1].mlp.gate.e_score_correction_bias,
                       r.get("model.layers.1.mlp.gate.e_score_correction_bias"))


def test_fp8_checkpoint_dequantized_runs_in_transformers(tiny_fp8_dir):
    transformers = pytest.importorskip("transformers")
    cfg = json.loads((tiny_fp8_dir / "config.json").read_text())
    cfg.pop("quantization_config")
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**cfg)).eval()
    r = HFCheckpointReader(tiny_fp8_dir)
    sd = {n: r.get_dequantized(n, torch.float32) for n in r.names()
          if not n.endswith("_scale_inv") and ".layers.4." not in n}
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize  # noqa: F401 - keeps the dependency honest
    # stack experts into transformers' fused layout
    for i in range(1, 4):
        p = f"model.layers.{i}.mlp.experts"
        gate_up = torch.stack([torch.cat([sd.pop(f"{p}.{j}.gate_proj.weight"), sd.pop(f"{p}.{j}.up_proj.weight")])
                               for j in range(8)])
        down = torch.stack([sd.pop(f"{p}.{j}.down_proj.weight") for j in range(8)])
        sd[f"{p}.gate_up_proj"], sd[f"{p}.down_proj"] = gate_up, down
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not missing
    logits = model(torch.arange(10)[None]).logits
    assert torch.isfinite(logits).all()


def test_synthetic_is_deterministic(tmp_path, tiny_cfg):
    a = write_synthetic_checkpoint(tmp_path / "a", tiny_cfg, dtype="bf16", seed=5, max_shard_bytes=1 << 30)
    b = write_synthetic_checkpoint(tmp_path / "b", tiny_cfg, dtype="bf16", seed=5, max_shard_bytes=1 << 30)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
