"""Run in a fresh process by test_megatron_load.py: megatron-core itself loads our torch_dist checkpoints.

CPU-only workarounds (no parameters involved): megatron-core 0.16 asks ``torch.cuda.current_device()`` for the
rotary-embedding device and forks a CUDA RNG tracker around attention dropout; on a CPU build we point the first at
"cpu" and make the fork a no-op. Everything else is megatron-core's own code: GPTModel, sharded_state_dict,
dist_checkpointing.load.
"""

import contextlib
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ["MASTER_PORT"] = sys.argv[3]
import torch.distributed as dist  # noqa: E402

dist.init_process_group("gloo", rank=0, world_size=1)
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel  # noqa: E402
from megatron.core.dist_checkpointing import ShardedTensor  # noqa: E402
from megatron.core.dist_checkpointing.validation import StrictHandling  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

parallel_state.initialize_model_parallel(1, 1)
smol_ckpt, tiny_ckpt = sys.argv[1], sys.argv[2]
result = {}

# 1) dense: real SmolLM2 into a real megatron GPTModel (TP1/PP1), from a checkpoint written as PP2 x TP3
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from adnanny_ckpt.gguf import smollm2_hf_dir  # noqa: E402

hf = smollm2_hf_dir()
c = json.loads((hf / "config.json").read_text())
cfg = TransformerConfig(
    num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"], num_attention_heads=c["num_attention_heads"],
    num_query_groups=c["num_key_value_heads"], ffn_hidden_size=c["intermediate_size"], kv_channels=c["head_dim"],
    gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization="RMSNorm",
    layernorm_epsilon=c["rms_norm_eps"], add_bias_linear=False, use_cpu_initialization=True,
    masked_softmax_fusion=False, bias_activation_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
    gradient_accumulation_fusion=False, bias_dropout_fusion=False, hidden_dropout=0.0, attention_dropout=0.0)
model = GPTModel(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=c["vocab_size"],
                 max_sequence_length=2048, position_embedding_type="rope",
                 rotary_base=c["rope_parameters"]["rope_theta"], share_embeddings_and_output_weights=True)
with torch.no_grad():
    for p in model.parameters():
        p.fill_(float("nan"))  # anything not loaded would poison the logits
sharded = model.sharded_state_dict()
loaded = dist_checkpointing.load(sharded, os.path.join(smol_ckpt, "release"), strict=StrictHandling.RETURN_ALL)
loaded, missing_keys, unexpected_keys = loaded
result["missing"] = sorted(k for k in missing_keys if "_extra_state" not in k)
model.load_state_dict(loaded, strict=False)
model.eval()
tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
tok = AutoTokenizer.from_pretrained(hf)
ref = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
model = model.float()
ids = tok("The capital of France is", return_tensors="pt").input_ids
n = ids.shape[1]
with torch.no_grad():
    a = ref(ids).logits
    b = model(ids, torch.arange(n)[None], attention_mask=torch.triu(torch.ones(n, n, dtype=torch.bool), 1)[None, None])
result["max_abs_diff"] = float((a - b).abs().max())
result["max_abs"] = float(a.abs().max())
result["next_token"] = tok.decode(b[0, -1].argmax())

# 2) MLA/MoE keys of the tiny DeepSeek (written PP2 x EP2 x TP2), read back by megatron's loader under other
#    shardings: one routed expert of a layer (expert axis), TP rank 1 of 4 of linear_kv_up_proj, glu halves.
from adnanny_ckpt.safetensors_io import HFCheckpointReader  # noqa: E402

src = HFCheckpointReader(json.loads(open(os.path.join(tiny_ckpt, "adnanny_ckpt.json")).read())["source"])
kvb = src.get_dequantized("model.layers.1.self_attn.kv_b_proj.weight")
f, h = src.info("model.layers.2.mlp.experts.0.gate_proj.weight").shape
req = {}
for j in range(8):  # one ShardedTensor per expert (the file holds TP2 halves of gate and up)
    req[f"expert{j}"] = ShardedTensor.from_rank_offsets(
        "decoder.layers.2.mlp.experts.experts.linear_fc1.weight", torch.empty(2 * f, h, dtype=torch.bfloat16),
        (0, j, 8), replica_id=0, prepend_axis_num=1)
q = kvb.shape[0] // 4
for r in range(4):  # TP4 slices of a tensor written as TP2 chunks
    req[f"kv{r}"] = ShardedTensor.from_rank_offsets(
        "decoder.layers.1.self_attention.linear_kv_up_proj.weight", torch.empty(q, kvb.shape[1], dtype=torch.bfloat16),
        (0, r, 4), replica_id=0)
got = dist_checkpointing.load(req, os.path.join(tiny_ckpt, "release"))
result["expert_equal"] = all(
    torch.equal(got[f"expert{j}"], torch.cat([src.get_dequantized(f"model.layers.2.mlp.experts.{j}.gate_proj.weight"),
                                              src.get_dequantized(f"model.layers.2.mlp.experts.{j}.up_proj.weight")]))
    for j in range(8))
result["kv_up_equal"] = all(torch.equal(got[f"kv{r}"], kvb[r * q:(r + 1) * q]) for r in range(4))
meta = dist_checkpointing.load_tensors_metadata(os.path.join(tiny_ckpt, "release"))
result["meta_expert_shape"] = list(meta["decoder.layers.2.mlp.experts.experts.linear_fc1.weight"].global_shape)
print("RESULT " + json.dumps(result))
