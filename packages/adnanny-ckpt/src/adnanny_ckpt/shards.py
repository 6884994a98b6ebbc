"""Fusing HF tensors into megatron parameters and cutting them into per-rank pieces.

A megatron parameter (:class:`~adnanny_ckpt.names.ParamSpec`) is built from its HF sources by :func:`fuse`
(identity, ``cat([gate, up])`` or Llama's per-group ``[q_g; k_g; v_g]`` interleave) and, for the vocabulary
matrices, zero-padded to ``padded_vocab`` rows as megatron does. :func:`rank_chunks` then says which rectangular
pieces of which parameters a rank (pp, ep, tp) holds, each as a :class:`Chunk` in *dist_checkpointing
coordinates*: the sharded key, its global shape (with the prepended layer / expert axes) and the piece's offset.
TP cuts: ``col`` splits dim 0, ``row`` dim 1, ``glu`` splits gate and up separately (rank r holds
``[gate_r; up_r]``, stored as two chunks at rows ``r·F/tp`` and ``F + r·F/tp`` of the global ``[gate; up]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adnanny_ckpt.errors import LayoutError
from adnanny_ckpt.layout import ParallelLayout
from adnanny_ckpt.names import ModelSpec, ParamSpec, local_module_name, padded_vocab_size, sharded_key

if TYPE_CHECKING:
    import torch

__all__ = ["Chunk", "fuse", "unfuse", "padded_vocab_size", "rank_chunks", "mcore_shape", "rank_name",
           "global_rank", "check_tp"]


def mcore_shape(p: ParamSpec, padded_vocab: int) -> tuple[int, ...]:
    return (padded_vocab, *p.shape[1:]) if p.vocab else p.shape


def fuse(spec: ModelSpec, p: ParamSpec, tensors: list["torch.Tensor"], padded_vocab: int | None = None) -> "torch.Tensor":
    """HF tensors -> the full megatron tensor of ``p`` (padded vocab rows are zeros)."""
    import torch

    if len(tensors) == 1:
        t = tensors[0]
    elif len(tensors) == 2:  # linear_fc1 = [gate; up]
        t = torch.cat(tensors, dim=0)
    else:  # Llama q, k, v -> megatron's [q_g; k_g; v_g] per query group
        q, k, v = tensors
        ng, hd = spec.num_query_groups, spec.head_dim
        h = q.shape[-1]
        t = torch.cat([q.view(ng, -1, h), k.view(ng, hd, h), v.view(ng, hd, h)], dim=1).reshape(-1, h)
    if p.vocab and padded_vocab is not None and padded_vocab > t.shape[0]:
        t = torch.cat([t, t.new_zeros(padded_vocab - t.shape[0], *t.shape[1:])])
    if tuple(t.shape) != mcore_shape(p, t.shape[0] if p.vocab else 0):
        raise LayoutError(f"`{p.name}`: fused shape {tuple(t.shape)} != expected {p.shape}.")
    return t


def unfuse(spec: ModelSpec, p: ParamSpec, t: "torch.Tensor") -> list["torch.Tensor"]:
    """Inverse of :func:`fuse` (padding rows dropped)."""
    if p.vocab:
        t = t[: p.shape[0]]
    if len(p.hf) == 1:
        return [t]
    if len(p.hf) == 2:
        f = t.shape[0] // 2
        return [t[:f], t[f:]]
    ng, hd, nh = spec.num_query_groups, spec.head_dim, spec.num_heads
    h = t.shape[-1]
    g = t.view(ng, (nh // ng + 2) * hd, h)
    q = g[:, : nh // ng * hd].reshape(-1, h)
    k = g[:, nh // ng * hd : nh // ng * hd + hd].reshape(-1, h)
    v = g[:, nh // ng * hd + hd :].reshape(-1, h)
    return [q, k, v]


@dataclass(frozen=True)
class Chunk:
    """One rectangular piece of one parameter held by one rank."""

    param: ParamSpec
    key: str  # dist_checkpointing key
    global_shape: tuple[int, ...]  # of the key: prepended axes + padded param shape
    offsets: tuple[int, ...]  # of this piece in the key's coordinates
    sizes: tuple[int, ...]
    rows: tuple[int, int]  # slice of the full (fused, padded) parameter, dim 0
    cols: tuple[int, int] | None  # slice along dim 1 (row-parallel), None = all
    local_name: str  # module path in the rank's own state dict (legacy files)
    part: int = 0  # glu: 0 = gate piece, 1 = up piece

    def take(self, full: "torch.Tensor") -> "torch.Tensor":
        """This chunk's piece of the full parameter (without the prepended axes)."""
        t = full[self.rows[0] : self.rows[1]]
        if self.cols is not None:
            t = t[:, self.cols[0] : self.cols[1]]
        return t


def check_tp(spec: ModelSpec, tp: int) -> None:
    """Raise a clear error when TP does not divide what it must cut."""
    if tp == 1:
        return
    need = {"num_attention_heads": spec.num_heads}
    if spec.family == "llama":
        need["num_key_value_heads"] = spec.num_query_groups
    if spec.intermediate_size:
        need["intermediate_size"] = spec.intermediate_size
    if spec.is_moe:
        need["moe_intermediate_size"] = spec.moe_intermediate_size
    if spec.mla:
        need["kv_lora_rank + qk_rope_head_dim"] = spec.kv_lora_rank + spec.qk_rope_head_dim
        if spec.q_lora_rank:
            need["q_lora_rank"] = spec.q_lora_rank
    for key, val in need.items():
        if val % tp:
            raise LayoutError(f"`tp` = {tp} does not divide `{key}` = {val}; choose a TP size that divides it.")


def _tp_pieces(p: ParamSpec, shape: tuple[int, ...], tp: int, r: int) -> list[tuple[int, tuple[int, int], tuple[int, int] | None]]:
    """(part, rows, cols) pieces of rank r."""
    rows = shape[0]
    if p.split == "none" or tp == 1:
        return [(0, (0, rows), None)]
    if p.split == "col":
        k = rows // tp
        return [(0, (r * k, (r + 1) * k), None)]
    if p.split == "row":
        k = shape[1] // tp
        return [(0, (0, rows), (r * k, (r + 1) * k))]
    f = rows // 2  # glu
    k = f // tp
    return [(0, (r * k, (r + 1) * k), None), (1, (f + r * k, f + (r + 1) * k), None)]


def rank_chunks(
    spec: ModelSpec,
    params: list[ParamSpec],
    layout: ParallelLayout,
    pp_rank: int,
    ep_rank: int,
    tp_rank: int,
    *,
    te_names: bool,
    padded_vocab: int,
    owner_only: bool,
) -> list[Chunk]:
    """The chunks rank (pp, ep, tp) holds. ``owner_only``: skip replicas (only EP rank 0 writes dense params)."""
    out: list[Chunk] = []
    lo, hi = layout.expert_range(ep_rank) if layout.num_experts else (0, -1)
    layer_offset = layout.layer_offset(pp_rank)
    for p in params:
        if layout.stage_of_param(p) != pp_rank:
            continue
        if p.expert is not None:
            if not lo <= p.expert <= hi:
                continue
        elif owner_only and ep_rank != 0:
            continue  # dense parameters are replicas on EP ranks > 0 (the DP replica with id 0 writes them)
        if owner_only and p.split == "none" and tp_rank != 0:
            continue  # replicated across TP: TP rank 0 writes it
        shape = mcore_shape(p, padded_vocab)
        key, axes = sharded_key(spec, p, te_names=te_names)
        pre_shape: tuple[int, ...] = ()
        pre_off: tuple[int, ...] = ()
        if axes == 2 or (axes == 1 and p.expert is None):
            pre_shape, pre_off = (spec.num_layers,), (int(p.layer),)  # type: ignore[arg-type]
        if p.expert is not None:
            pre_shape, pre_off = (*pre_shape, spec.num_experts), (*pre_off, p.expert)
        local = local_module_name(spec, p, te_names=te_names, layer_offset=layer_offset,
                                  expert_offset=lo if p.expert is not None else 0)
        for part, rows, cols in _tp_pieces(p, shape, layout.tp, tp_rank):
            sizes = (rows[1] - rows[0], *((cols[1] - cols[0],) if cols else shape[1:]))
            offs = (rows[0], *((cols[0],) if cols else (0,) * (len(shape) - 1)))
            out.append(Chunk(
                param=p, key=key, global_shape=(*pre_shape, *shape), offsets=(*pre_off, *offs),
                sizes=(*(1,) * len(pre_shape), *sizes), rows=rows, cols=cols, local_name=local, part=part))
    return out


def global_rank(layout: ParallelLayout, pp_rank: int, ep_rank: int, tp_rank: int) -> int:
    """Megatron's default rank order (tp fastest, then dp — EP lives inside DP — then pp)."""
    return tp_rank + layout.tp * ep_rank + layout.tp * int(layout.dp or 1) * pp_rank


def rank_name(layout: ParallelLayout, pp_rank: int, ep_rank: int, tp_rank: int) -> str:
    """Megatron-LM's legacy per-rank directory name ``mp_rank_TT[_PPP][_EEE]``."""
    name = f"mp_rank_{tp_rank:02d}"
    if layout.pp > 1:
        name += f"_{pp_rank:03d}"
    if layout.ep > 1:
        name += f"_{ep_rank:03d}"
    return name
