"""FP8 weights that stay FP8 in memory: :class:`FP8Linear` and the loader :func:`load_fp8_resident`.

Why: dequantizing an FP8 checkpoint at load (:mod:`adnanny_serve.fp8_load`) saves disk only; the model then sits
in memory in BF16/FP32. Here each projection linear keeps its ``float8_e4m3fn`` weight ``[N, K]`` and its FP32
``weight_scale_inv`` ``[ceil(N/128), ceil(K/128)]`` exactly as adnanny-ckpt's codec wrote them (the state-dict
names are the checkpoint's), so weight memory is ~1/2 of BF16 (1 byte per weight + 4 bytes per 128x128 block).

How a forward computes, per layer (``FP8Linear.backend``):

* ``"scaled_mm"`` (CUDA, compute capability >= 9.0): DeepSeek-V3's recipe with one blockwise scaled matmul.
  Activations are quantized on the fly to FP8 with one scale per token and 128 channels (``1x128``), weights
  use their ``128x128`` block scales: ``torch.nn.functional.scaled_mm(x_q, W_q.T, [s_x], [BlockWise1x128],
  [s_w], [BlockWise128x128])``. What this torch (2.13) says about it, read from its meta kernel
  (``torch/_meta_registrations.py``) and op tests (``common_methods_invocations.py``): blockwise
  1x128 x 128x128 FP32 scales are supported on sm_90 only (not sm_100+, not ROCm), need cuBLASLt >= 12.9
  (CUDA 12.9+), K and N divisible by 16 and whole 128-blocks in K (the scale grids are ``K // 128``), the weight
  scale laid out ``[round_up(K/128, 4), N/128]`` with strides ``[1, round_up(K/128, 4)]``, the activation
  scale ``[M, K/128]`` with strides ``[1, M]``. CPU has no such kernel. Dimensions that are not whole blocks
  (SmolLM2's 576, DeepSeek's 576-row ``kv_a_proj_with_mqa``) are zero-padded per call to whole blocks (a
  one-layer FP8 temporary; zeros add nothing) and the output is cut back. Older torch without
  ``F.scaled_mm`` falls back to ``torch._scaled_mm`` with scales of the same shapes. The first call of every
  layer is checked against the dequantizing path; any failure or mismatch switches that layer to it, the
  reason kept in ``FP8Linear.fallback_reason`` (and counted by :func:`fp8_backends`).
* ``"dequantize"`` (everywhere else, and the fallback): the layer's weight is expanded by adnanny-ckpt's codec
  (:func:`adnanny_ckpt.fp8.dequantize_blocks`, ragged blocks included) into a temporary of the activation dtype
  for this one matmul and freed: one layer at a time, never a full-precision copy of the model. On CPU this
  gives exactly the dequantized model's outputs, at the cost of re-expanding every weight each step — which is
  why the CPU default stays ``fp8_weights="dequantize"`` (expand once at load).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adnanny_serve.errors import EngineError

__all__ = ["FP8Experts", "FP8Linear", "fp8_backends", "load_fp8_resident", "weight_bytes"]

_FP8 = torch.float8_e4m3fn
_FP8_MAX = 448.0
#: relative Frobenius error allowed between the scaled-mm and the dequantizing result at a layer's first call
#: (activation quantization to e4m3 costs ~2-4% per layer; a wrong scale layout costs ~100%)
_PROBE_TOL = 0.08


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class FP8Linear(nn.Module):
    """A linear layer whose weight stays ``float8_e4m3fn`` with 128x128 block scales (DeepSeek's layout).

    Buffers ``weight`` (FP8 ``[out, in]``) and ``weight_scale_inv`` (FP32 block grid) carry the checkpoint's
    names, so ``state_dict()`` is the checkpoint's. ``backend``: ``"auto"`` (scaled matmul where supported, see
    the module docs), ``"scaled_mm"`` or ``"dequantize"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, block: tuple[int, int] = (128, 128),
                 device: torch.device | str | None = None, backend: str = "auto") -> None:
        super().__init__()
        if backend not in ("auto", "scaled_mm", "dequantize"):
            raise EngineError(f"`backend` must be 'auto', 'scaled_mm' or 'dequantize'; got {backend!r}.")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.block = (int(block[0]), int(block[1]))
        grid = (math.ceil(self.out_features / self.block[0]), math.ceil(self.in_features / self.block[1]))
        self.register_buffer("weight", torch.zeros((self.out_features, self.in_features), dtype=_FP8, device=device))
        self.register_buffer("weight_scale_inv", torch.ones(grid, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=device), requires_grad=False) if bias else None
        self.backend = backend
        self.fallback_reason: str | None = None
        self._checked = False
        self._scale_b: torch.Tensor | None = None  # the weight scale in scaled_mm's layout (tiny, built once)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block={self.block}, backend={self.active_backend}")

    @property
    def active_backend(self) -> str:
        """What the next forward uses: ``scaled_mm`` or ``dequantize``."""
        if self.backend == "dequantize" or self.fallback_reason is not None:
            return "dequantize"
        if self.backend == "scaled_mm":
            return "scaled_mm"
        return "scaled_mm" if _scaled_mm_available(self.weight.device) is None and self.block == (128, 128) \
            else "dequantize"

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_backend == "scaled_mm":
            try:
                y = self._forward_scaled_mm(x)
            except Exception as e:  # a shape/layout this torch or GPU refuses: this layer dequantizes from now on
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                return self._forward_dequantize(x)
            if not self._checked:
                self._checked = True
                ref = self._forward_dequantize(x)
                err = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
                if not math.isfinite(err) or err > _PROBE_TOL:
                    self.fallback_reason = f"scaled_mm differs from the dequantized matmul by {err:.3g} (relative)"
                    return ref
            return y
        return self._forward_dequantize(x)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """This layer's weight expanded to ``dtype`` by adnanny-ckpt's codec (a temporary: not kept)."""
        from adnanny_ckpt.fp8 import dequantize_blocks

        w = dequantize_blocks(self.weight, self.weight_scale_inv, self.block, out_dtype=dtype)
        # adnanny-ckpt's codec allocates its output on the CPU today; on a GPU that costs a round trip per layer
        # (correct, slow) until the codec allocates on the weight's device
        return w if w.device == self.weight.device else w.to(self.weight.device)

    def _forward_dequantize(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _forward_scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        kp, np_ = _round_up(k, 128), _round_up(n, 128)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        m = x2.shape[0]
        # activations: one scale per token and 128 channels (DeepSeek's act_quant), K padded with zeros
        xf = x2.float()
        if kp != k:
            xf = nn.functional.pad(xf, (0, kp - k))
        g = xf.view(m, kp // 128, 128)
        s_x = (g.abs().amax(dim=-1) / _FP8_MAX).clamp_min(1e-12)  # [M, K/128]
        x_q = (g / s_x[..., None]).clamp_(-_FP8_MAX, _FP8_MAX).to(_FP8).view(m, kp)
        w = self.weight
        if (np_, kp) != (n, k):  # ragged layer: a one-layer FP8 temporary padded with zeros
            w = torch.zeros((np_, kp), dtype=_FP8, device=w.device)
            w[:n, :k] = self.weight
        if self._scale_b is None:
            l4 = _round_up(kp // 128, 4)
            sb = torch.zeros((np_ // 128, l4), dtype=torch.float32, device=w.device)
            sb[:, : kp // 128] = self.weight_scale_inv
            self._scale_b = sb
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
        f = getattr(nn.functional, "scaled_mm", None)
        if f is not None:
            st, sw = nn.functional.ScalingType, nn.functional.SwizzleType
            y = f(x_q, w.t(), [s_x.t().contiguous().t()], [st.BlockWise1x128], [self._scale_b.t()],
                  [st.BlockWise128x128], swizzle_a=[sw.NO_SWIZZLE], swizzle_b=[sw.NO_SWIZZLE],
                  output_dtype=out_dtype)
        else:  # torch < 2.10: the recipe is read from the scale shapes
            y = torch._scaled_mm(x_q, w.t(), scale_a=s_x.t().contiguous().t(),
                                 scale_b=self._scale_b[:, : kp // 128].t(), out_dtype=out_dtype)
        y = y[:, :n]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, n)


class _FP8Expert(nn.Module):
    """One routed expert: ``down(act(gate(x)) * up(x))`` with FP8 linears (checkpoint names ``<i>.gate_proj``...)."""

    def __init__(self, hidden: int, inter: int, act: Any, block: tuple[int, int], backend: str) -> None:
        super().__init__()
        self.gate_proj = FP8Linear(hidden, inter, block=block, device="meta", backend=backend)
        self.up_proj = FP8Linear(hidden, inter, block=block, device="meta", backend=backend)
        self.down_proj = FP8Linear(inter, hidden, block=block, device="meta", backend=backend)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class FP8Experts(nn.ModuleList):
    """Routed MoE experts with FP8 weights, in place of transformers 5's fused ``*Experts`` module (which holds
    all experts as two 3-D BF16 parameters, ``gate_up_proj`` and ``down_proj``, so it cannot hold FP8 blocks).

    Same call as the module it replaces, ``(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``,
    and the same arithmetic (per hit expert: its tokens through ``down(act(gate) * up)``, weighted, summed);
    each expert keeps DeepSeek's per-projection names (``experts.<i>.gate_proj.weight`` + ``_scale_inv``), so
    a ragged ``moe_intermediate_size`` keeps its own block grid per projection.
    """

    def __init__(self, num_experts: int, hidden: int, inter: int, act: Any, *, block: tuple[int, int] = (128, 128),
                 backend: str = "auto") -> None:
        super().__init__([_FP8Expert(hidden, inter, act, block, backend) for _ in range(num_experts)])
        self.num_experts = num_experts

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,  # type: ignore[override]
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e in torch.unique(top_k_index).tolist():
            if not 0 <= e < self.num_experts:
                continue  # transformers marks dropped slots with num_experts
            token_idx, pos = torch.where(top_k_index == e)
            y = self[e](hidden_states[token_idx]) * top_k_weights[token_idx, pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def _scaled_mm_available(device: torch.device) -> str | None:
    """None when blockwise 1x128 x 128x128 scaled matmuls may run on ``device``; else why not."""
    if device.type != "cuda":
        return f"no FP8 blockwise matmul on {device.type}"
    if not (hasattr(nn.functional, "scaled_mm") or hasattr(torch, "_scaled_mm")):
        return "this torch has no scaled_mm"
    if torch.version.hip:
        return "blockwise FP8 scales are CUDA sm_90 only in this torch (not ROCm)"
    major, _ = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"blockwise 1x128 x 128x128 scaled_mm needs compute capability 9.x, this GPU is {major}.x"
    return None


def fp8_backends(model: nn.Module) -> dict[str, Any]:
    """``{"layers": n, "scaled_mm": n, "dequantize": n, "fallbacks": {reason: count}}`` over ``model``'s FP8Linears."""
    out: dict[str, Any] = {"layers": 0, "scaled_mm": 0, "dequantize": 0, "fallbacks": {}}
    for mod in model.modules():
        if isinstance(mod, FP8Linear):
            out["layers"] += 1
            out[mod.active_backend] += 1
            if mod.fallback_reason:
                out["fallbacks"][mod.fallback_reason] = out["fallbacks"].get(mod.fallback_reason, 0) + 1
    return out


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of every tensor the model holds (parameters and buffers, shared storage counted once), split into
    ``fp8`` (FP8 weights), ``scales`` (their ``weight_scale_inv``), ``other`` (embeddings, norms, ...) and
    ``total``: the measure of "weight memory" (what sits on the device besides activations and KV cache)."""
    seen: set[tuple[Any, int]] = set()
    out = {"fp8": 0, "scales": 0, "other": 0}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in named:
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        nbytes = t.untyped_storage().nbytes()
        if t.dtype == _FP8:
            out["fp8"] += nbytes
        elif name.endswith("weight_scale_inv"):
            out["scales"] += nbytes
        else:
            out["other"] += nbytes
    out["total"] = out["fp8"] + out["scales"] + out["other"]
    return out


# ------------------------------------------------------------------------------------------ loading
def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, path: Path) -> None:
    mod_name, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        mod = None
    if mod is None or (attr not in mod._parameters and attr not in mod._buffers):
        raise EngineError(f"`model` {str(path)!r}: checkpoint tensor `{name}` has no place in the model transformers "
                          f"builds for this config (renamed or fused weights?); load it with `--fp8-weights "
                          "dequantize`.")
    if attr in mod._parameters:
        old = mod._parameters[attr]
        if old is not None and tuple(old.shape) != tuple(value.shape):
            raise EngineError(f"`model` {str(path)!r}: tensor `{name}` has shape {tuple(value.shape)}, the model "
                              f"expects {tuple(old.shape)}.")
        mod._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        old = mod._buffers[attr]
        if old is not None and tuple(old.shape) != tuple(value.shape):
            raise EngineError(f"`model` {str(path)!r}: tensor `{name}` has shape {tuple(value.shape)}, the model "
                              f"expects {tuple(old.shape)}.")
        mod._buffers[attr] = value


_EXPERT = re.compile(r"^(?P<prefix>.+)\.(?P<idx>\d+)\.(?:gate|up|down)_proj\.weight$")


def _replace_fused_experts(model: nn.Module, fp8: list[str], block: tuple[int, int], backend: str, path: Path
                           ) -> None:
    """Swap every fused experts module whose experts the checkpoint stores per projection in FP8
    (``<prefix>.<i>.gate_proj.weight``) for an :class:`FP8Experts` of the same size."""
    prefixes = sorted({m["prefix"] for m in map(_EXPERT.match, fp8) if m})
    for prefix in prefixes:
        try:
            mod = model.get_submodule(prefix)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) or not all(hasattr(mod, a) for a in ("gate_up_proj", "down_proj")):
            continue  # per-expert nn.Linear modules: replaced one by one
        n_exp, two_inter, hidden = (int(d) for d in mod.gate_up_proj.shape)
        if tuple(mod.down_proj.shape) != (n_exp, hidden, two_inter // 2):
            raise EngineError(f"`model` {str(path)!r}: experts at `{prefix}` have an unexpected layout "
                              f"(gate_up_proj {tuple(mod.gate_up_proj.shape)}, down_proj {tuple(mod.down_proj.shape)}); "
                              "load it with `--fp8-weights dequantize`.")
        parent_name, _, child = prefix.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Experts(n_exp, hidden, two_inter // 2, mod.act_fn, block=block, backend=backend))


def load_fp8_resident(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None, backend: str = "auto") -> Any:
    """A transformers causal LM from the FP8 checkpoint at ``path`` whose projection weights stay FP8.

    The model is built with empty (meta) parameters; every FP8 ``<name>.weight`` with its ``_scale_inv``
    replaces the ``nn.Linear`` at ``<name>`` by an :class:`FP8Linear`; tensors are then read one at a time from
    the checkpoint (adnanny-ckpt's reader) straight onto ``device`` — the BF16 ones (embeddings, norms,
    ``lm_head``) in ``dtype`` (default BF16 on CUDA, FP32 on CPU). Nothing full-precision of an FP8 weight is
    ever built. Tied embeddings are re-tied; a parameter the checkpoint does not give is an error naming it.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from adnanny_ckpt.safetensors_io import HFCheckpointReader
    from adnanny_serve._compat import dtype_kwarg
    from adnanny_serve.fp8_load import is_fp8_checkpoint

    p = Path(path)
    if not is_fp8_checkpoint(p):
        raise EngineError(f"`model` {str(p)!r} is not an FP8 checkpoint (no quantization_config with quant_method "
                          "fp8).")
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    block = tuple(json.loads((p / "config.json").read_text()).get("quantization_config", {}).get(
        "weight_block_size") or (128, 128))
    config = AutoConfig.from_pretrained(p)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary inv_freq) real
        model = AutoModelForCausalLM.from_config(config, **{dtype_kwarg(): dtype})
    with HFCheckpointReader(p) as reader:
        names = reader.names()
        fp8 = [n for n in names if reader.is_fp8(n)]
        _replace_fused_experts(model, fp8, block, backend, p)
        for name in fp8:
            mod_name = name.removesuffix(".weight")
            try:
                lin = model.get_submodule(mod_name)
            except AttributeError:
                lin = None
            if isinstance(lin, FP8Linear):
                continue  # an expert projection made by _replace_fused_experts
            if not isinstance(lin, nn.Linear):
                raise EngineError(f"`model` {str(p)!r}: FP8 tensor `{name}` is not the weight of an nn.Linear in the "
                                  f"model transformers builds (found {type(lin).__name__}); load it with "
                                  "`--fp8-weights dequantize`.")
            parent_name, _, child = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FP8Linear(lin.in_features, lin.out_features, lin.bias is not None, block=block,
                                             device="meta", backend=backend))
        # what transformers keeps in FP32 whatever the dtype (DeepSeek's router: `gate.weight`,
        # `e_score_correction_bias`), kept in FP32 here too so both loaders build the same model
        fp32 = {str(k) for k in (getattr(model, "_keep_in_fp32_modules_strict", None) or ())} | \
            {str(k) for k in (getattr(model, "_keep_in_fp32_modules", None) or ())}
        for name in names:
            t = reader.get(name)
            if t.dtype == _FP8 or name.endswith("_scale_inv"):
                t = t.to(device)
            elif dtype in (torch.float16, torch.bfloat16) and any(k in name.split(".") or name.endswith(k)
                                                                  for k in fp32):
                t = t.to(device=device, dtype=torch.float32)
            else:
                t = t.to(device=device, dtype=dtype)
            _set_tensor(model, name, t, p)
    if getattr(model.config, "tie_word_embeddings", False):
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        if out_emb is not None and in_emb is not None and out_emb.weight.device.type == "meta":
            out_emb.weight = in_emb.weight
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        raise EngineError(f"`model` {str(p)!r}: the checkpoint gives no tensor for {missing[:3]} "
                          f"({len(missing)} missing).")
    model.to(device)  # buffers built on the CPU (rotary frequencies); every weight is already there
    model.config._name_or_path = str(p)
    model.fp8_weights = "keep"
    return model.eval()
