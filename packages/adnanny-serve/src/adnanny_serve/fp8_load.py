"""Run an FP8 checkpoint on CPU by dequantizing it at load.

CPUs have no FP8 matmul, so an FP8 checkpoint is served on CPU in BF16/FP32: every ``float8_e4m3fn``
weight is expanded with its 128x128 ``scale_inv`` blocks (adnanny-ckpt's codec: FP32 multiply, one
rounding) as it is read, and the dequantized state dict goes through transformers' own loading (so its
weight renaming, e.g. fused MoE experts, applies). transformers itself also dequantizes FP8 on CPU
(``FineGrainedFP8`` falls back to ``dequantize=True`` without a GPU), but its dequantizer needs every
dimension to be a whole number of blocks; ours accepts ragged edge blocks (``kv_a_proj_with_mqa`` is
``[576, 7168]`` in DeepSeek-V3). Where both load, the tests check they give the same logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_serve.errors import EngineError

if TYPE_CHECKING:
    import torch

__all__ = ["is_fp8_checkpoint", "load_fp8_dequantized", "dequantized_state_dict"]


def is_fp8_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``config.json`` declares DeepSeek-style FP8 (``quantization_config.quant_method == "fp8"``)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc.get("quant_method") == "fp8"


def dequantized_state_dict(path: str | os.PathLike[str], dtype: "torch.dtype") -> dict[str, "torch.Tensor"]:
    """All tensors of the checkpoint at ``path`` in ``dtype``, FP8 ones dequantized, scales dropped."""
    from adnanny_ckpt.safetensors_io import HFCheckpointReader

    cfg = json.loads((Path(path) / "config.json").read_text())
    block = tuple((cfg.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    out: dict[str, torch.Tensor] = {}
    with HFCheckpointReader(path) as reader:
        for name in reader.names():
            if name.endswith("_scale_inv"):
                continue
            t = reader.get_dequantized(name, out_dtype=dtype, block=block)  # type: ignore[arg-type]
            out[name] = t.clone() if t.dtype == dtype and not reader.is_fp8(name) else t
    return out


def load_fp8_dequantized(path: str | os.PathLike[str], *, dtype: "torch.dtype | None" = None) -> Any:
    """A transformers causal LM from the FP8 checkpoint at ``path``, weights dequantized to ``dtype``."""
    import torch
    from transformers import AutoConfig

    from adnanny_serve._compat import dtype_kwarg
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    p = Path(path)
    if not is_fp8_checkpoint(p):
        raise EngineError(f"`model` {str(p)!r} is not an FP8 checkpoint (no quantization_config with quant_method fp8).")
    dtype = torch.float32 if dtype is None else dtype
    config = AutoConfig.from_pretrained(p)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise EngineError(f"`model` {str(p)!r}: transformers has no causal LM for model_type "
                          f"{config.model_type!r}.") from None
    sd = dequantized_state_dict(p, dtype)
    # The auto class refuses a None path; the concrete class takes the state dict through the same
    # conversion (renaming / expert fusing) as a load from disk.
    model = cls.from_pretrained(None, config=config, state_dict=sd, **{dtype_kwarg(): dtype})
    model.config._name_or_path = str(p)
    return model.eval()
