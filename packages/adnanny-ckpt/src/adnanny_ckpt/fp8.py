"""DeepSeek's FP8 block codec: ``float8_e4m3fn`` weights with one FP32 ``scale_inv`` per 128x128 block.

What the format is (DeepSeek-V3/R1 HF checkpoints, ``quantization_config = {"quant_method": "fp8",
"fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}``):

* a linear weight ``W`` of shape ``[M, N]`` is stored as ``W_q`` (``float8_e4m3fn``, ``[M, N]``) plus
  ``<name>_scale_inv`` (``float32``, ``[ceil(M/128), ceil(N/128)]``);
* ``W ≈ W_q.float() * scale_inv[i // 128, j // 128]``. Edge blocks are *ragged* (e.g. ``kv_a_proj_with_mqa``
  is ``[576, 7168]``: the last row block has 64 rows) and simply use the scale of the block they fall into.

Numerics. :func:`dequantize_blocks` multiplies in FP32 and rounds once to the output dtype — the same order as
DeepSeek's reference ``weight_dequant`` kernel and transformers' ``Fp8Dequantize`` — so the result is bit-identical
to theirs (the tests check it against transformers). :func:`quantize_blocks` follows DeepSeek's ``weight_quant``:
``scale_inv = amax(|block|) / 448`` and ``W_q = fp8(W / scale_inv)``; an all-zero block gets ``scale_inv = 1`` so
that it stays zero and never divides by zero. Re-quantizing a dequantized checkpoint is therefore not always
bit-exact (the BF16 rounding of ``W_q * s`` may move the block's amax), but the error is bounded by FP8's own
step: ``|W - deq(q(W))| <= |W| / 16 + scale_inv * 2**-9`` per element.

Which tensors DeepSeek keeps in BF16: everything that is not the ``weight`` of a ``*_proj`` linear — embeddings,
``lm_head``, all norms, the router ``mlp.gate.weight``, ``e_score_correction_bias`` (FP32 in the release), the MTP
``shared_head``. :func:`keeps_bf16` encodes that list.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from adnanny_ckpt.errors import CheckpointFormatError

if TYPE_CHECKING:  # torch stays a lazy import
    import torch

__all__ = ["FP8_QUANTIZATION_CONFIG", "FP8_MAX", "BLOCK", "dequantize_blocks", "quantize_blocks", "keeps_bf16", "scale_inv_name", "scale_shape"]

#: DeepSeek's ``quantization_config`` (written into config.json of FP8 outputs that have none)
FP8_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}

FP8_MAX = 448.0
"""Largest finite ``float8_e4m3fn`` value."""

BLOCK = (128, 128)
"""DeepSeek's ``weight_block_size``."""

_QUANTIZED = re.compile(r"_proj(_with_mqa)?\.weight$")


def keeps_bf16(name: str) -> bool:
    """True when DeepSeek's release stores tensor ``name`` in BF16/FP32 instead of FP8.

    Only the ``weight`` of projection linears (``q_a_proj``, ``q_b_proj``, ``kv_a_proj_with_mqa``, ``kv_b_proj``,
    ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` and the MTP ``eh_proj``) is quantized; embeddings,
    ``lm_head``, norms, the router gate, biases and ``shared_head.head`` are not.
    """
    if name.endswith("_scale_inv"):
        return False
    if "shared_head" in name or "embed_tokens" in name or name.startswith("lm_head"):
        return True
    return _QUANTIZED.search(name) is None


def scale_inv_name(name: str) -> str:
    """HF name of the scale of FP8 tensor ``name`` (``...weight`` -> ``...weight_scale_inv``)."""
    return name + "_scale_inv"


def scale_shape(shape: tuple[int, ...], block: tuple[int, int] = BLOCK) -> tuple[int, int]:
    """Shape of the ``scale_inv`` grid for a weight of ``shape``: ``[ceil(M/bm), ceil(N/bn)]``."""
    m, n = int(shape[-2]), int(shape[-1])
    return (math.ceil(m / block[0]), math.ceil(n / block[1]))


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2 or any(int(b) <= 0 for b in block):
        raise CheckpointFormatError(
            f"`block` must be two positive ints (DeepSeek uses [128, 128]); got {block!r}. "
            "Fix `quantization_config.weight_block_size` in config.json."
        )
    return int(block[0]), int(block[1])


def dequantize_blocks(
    weight_fp8: "torch.Tensor",
    scale_inv: "torch.Tensor",
    block: tuple[int, int] = BLOCK,
    *,
    out_dtype: "torch.dtype | None" = None,
    name: str = "<tensor>",
) -> "torch.Tensor":
    """Dequantize a block-scaled FP8 matrix to ``out_dtype`` (default BF16), ragged edge blocks included.

    ``weight_fp8``: ``[M, N]`` ``float8_e4m3fn``; ``scale_inv``: ``[ceil(M/bm), ceil(N/bn)]`` FP32.
    Multiplies in FP32 and rounds once, so the result equals DeepSeek's/transformers' dequantization bit for bit.
    ``name`` only labels error messages.
    """
    import torch

    bm, bn = _check_block(block)
    out_dtype = torch.bfloat16 if out_dtype is None else out_dtype
    if weight_fp8.dim() != 2:
        raise CheckpointFormatError(
            f"tensor `{name}`: FP8 weight must be 2-D [M, N]; got shape {tuple(weight_fp8.shape)}."
        )
    if weight_fp8.dtype != torch.float8_e4m3fn:
        raise CheckpointFormatError(
            f"tensor `{name}`: expected dtype float8_e4m3fn next to its `_scale_inv`; got {weight_fp8.dtype}. "
            "A BF16 tensor must not have a `_scale_inv` companion."
        )
    m, n = weight_fp8.shape
    want = scale_shape((m, n), (bm, bn))
    if tuple(scale_inv.shape) != want:
        raise CheckpointFormatError(
            f"tensor `{name}`: `scale_inv` has shape {tuple(scale_inv.shape)} but a [{m}, {n}] weight with "
            f"{bm}x{bn} blocks needs {list(want)}; the scale belongs to another tensor or the block size is wrong."
        )
    out = torch.empty((m, n), dtype=out_dtype, device=weight_fp8.device)  # no CPU round trip on GPU
    full, rem = divmod(n, bn)
    # work in bands of whole row blocks so the FP32 temporary stays small (o_proj is [7168, 16384])
    band = bm * max(1, (16 << 20) // max(1, n * 4 * bm))
    for r0 in range(0, m, band):
        r1 = min(m, r0 + band)
        w = weight_fp8[r0:r1].to(torch.float32)  # [b, N]
        s = scale_inv[r0 // bm : -(-r1 // bm)].to(torch.float32).repeat_interleave(bm, dim=0)[: r1 - r0]
        if full:
            w[:, : full * bn].view(r1 - r0, full, bn).mul_(s[:, :full, None])
        if rem:
            w[:, full * bn :].mul_(s[:, full:])
        out[r0:r1] = w  # one rounding FP32 -> out_dtype, as the reference kernels do
    return out


def quantize_blocks(
    weight: "torch.Tensor", block: tuple[int, int] = BLOCK, *, name: str = "<tensor>"
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Quantize a 2-D weight to ``(float8_e4m3fn [M, N], scale_inv float32 [ceil(M/bm), ceil(N/bn)])``.

    Per block: ``scale_inv = amax / 448`` (1 for an all-zero block), ``q = clamp(W / scale_inv, ±448)``.
    Ragged edge blocks are scaled by their own (smaller) amax.
    """
    import torch

    bm, bn = _check_block(block)
    if weight.dim() != 2:
        raise CheckpointFormatError(f"tensor `{name}`: only 2-D weights are quantized; got {tuple(weight.shape)}.")
    m, n = weight.shape
    gm, gn = scale_shape((m, n), (bm, bn))
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn)
    scale = torch.empty((gm, gn), dtype=torch.float32)
    for g in range(gm):  # one row block at a time: the FP32 temporary is [128, N]
        r0, r1 = g * bm, min(m, (g + 1) * bm)
        w = weight[r0:r1].to(torch.float32)
        if gn * bn != n:  # zero padding never raises a block's amax
            w = torch.nn.functional.pad(w, (0, gn * bn - n))
        blocks = w.view(r1 - r0, gn, bn)
        amax = blocks.abs().amax(dim=(0, 2))  # [gn]
        if not torch.isfinite(amax).all():
            raise CheckpointFormatError(f"tensor `{name}`: contains inf/nan; it cannot be FP8-quantized.")
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        scale[g] = s
        q[r0:r1] = (blocks / s[None, :, None]).clamp_(-FP8_MAX, FP8_MAX).view(r1 - r0, gn * bn)[:, :n].to(
            torch.float8_e4m3fn)
    return q, scale
