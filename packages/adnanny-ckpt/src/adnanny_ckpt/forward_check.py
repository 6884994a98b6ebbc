"""An independent check of a conversion: run each converted layer's forward against the source's, layer by layer.

Why: comparing tensors through the converter's own name map and fuse functions (``verify(values=True)``)
compares the converter with itself — a wrong source in the name map (``input_layernorm`` fed from
``post_attention_layernorm``, ``enorm`` from ``hnorm``: equal shapes) or a wrong concatenation order (the MTP
``eh_proj`` columns) survives the round trip and every bit-for-bit check. Here each side is *interpreted by its
own format's semantics*, written separately in this module:

* an **HF side** reads tensors by their HF names (DeepSeek-V3 / Llama modelling semantics: ``q_a_proj`` →
  ``q_a_layernorm`` → ``q_b_proj``, ``gate_proj``/``up_proj``, ``post_attention_layernorm`` before the MLP,
  ``eh_proj(cat[enorm(emb), hnorm(hidden)])``) with its own small FP8 dequantizer and its own safetensors
  index reading (:class:`HFTensors`) — no code shared with :mod:`adnanny_ckpt.names`, ``shards.fuse`` /
  ``unfuse``, :mod:`adnanny_ckpt.fp8` or ``HFCheckpointReader``;
* a **megatron side** reads tensors by megatron-core's module names (``linear_fc1`` = ``[gate; up]``,
  ``linear_kv_up_proj`` rows per head = ``[k_nope; v]``, ``pre_mlp_layernorm``, Llama's ``linear_qkv`` =
  ``[q_g; k_g; v_g]`` per query group, ``mtp.layers.k.eh_proj``) from the stored checkpoint.

Both run the same elementwise primitives (RMSNorm, rotary embedding, causal softmax attention, SwiGLU,
DeepSeek's group-limited sigmoid routing) on the same random inputs in FP32: those primitives are not what is
being checked — the meaning given to each stored tensor is. Units: the embedding (rows of random ids), each
decoder layer, each MTP layer, the final norm + head (padded vocabulary rows beyond the real vocabulary are not
compared). One unit's tensors are in memory at a time, so a 690 GB model needs about one layer of RAM.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import VerifyError

if TYPE_CHECKING:
    import torch

__all__ = ["HFTensors", "McoreTensors", "forward_check"]

Getter = Callable[[str], "torch.Tensor"]


# ------------------------------------------------------------------------------------------- tensor sources
class HFTensors:
    """HF tensors by name in FP32, from the directory's own index (or its single/only shards).

    FP8 weights are dequantized here, independently of :mod:`adnanny_ckpt.fp8`: each ``[bm, bn]`` block of the
    ``float8_e4m3fn`` payload times its ``weight_scale_inv`` entry (ragged edge blocks use their block's entry),
    rounded to BF16 as a release's loader does.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        cfg = json.loads((self.path / "config.json").read_text())
        self.config = cfg
        blk = (cfg.get("quantization_config") or {}).get("weight_block_size") or [128, 128]
        self.block = (int(blk[0]), int(blk[1]))
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            self.where = dict(json.loads(index.read_text())["weight_map"])
        else:
            from safetensors import safe_open

            self.where = {}
            for f in sorted(self.path.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                        self.where[k] = f.name

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _raw(self, name: str) -> "torch.Tensor":
        from safetensors import safe_open

        if name not in self.where:
            raise VerifyError(f"tensor `{name}` is not in `{self.path}` (its index names no shard for it)")
        with safe_open(str(self.path / self.where[name]), framework="pt") as fh:
            return fh.get_tensor(name)

    def __call__(self, name: str) -> "torch.Tensor":
        import torch

        t = self._raw(name)
        if t.dtype == torch.float8_e4m3fn:
            s = self._raw(name + "_scale_inv").to(torch.float32)
            bm, bn = self.block
            m, n = t.shape
            full = s.repeat_interleave(bm, dim=0)[:m].repeat_interleave(bn, dim=1)[:, :n]
            return (t.to(torch.float32) * full).to(torch.bfloat16).to(torch.float32)
        return t.to(torch.float32)


class McoreTensors:
    """megatron-core parameters by module name in FP32, from a megatron checkpoint (any layout, any writer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from adnanny_ckpt.mcore2hf import McoreCheckpoint

        self.ck = McoreCheckpoint(path)
        self.config = self.ck.hf_config
        self._by = {p.name: p for p in self.ck.params}

    def __contains__(self, name: str) -> bool:
        return name in self._by

    def __call__(self, name: str) -> "torch.Tensor":
        import torch

        if name not in self._by:
            raise VerifyError(f"megatron parameter `{name}` is not in checkpoint `{self.ck.path}`")
        p = self._by[name]
        t = self.ck.full(p).to(torch.float32)
        return t[: p.shape[0]] if p.vocab else t

    def close(self) -> None:
        self.ck.close()


# ------------------------------------------------------------------------------------------ shared primitives
def _rms(x: "torch.Tensor", w: "torch.Tensor", eps: float) -> "torch.Tensor":
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: "torch.Tensor", theta: float) -> "torch.Tensor":
    """Rotate-half rotary embedding of ``x`` [T, H, D] at positions 0..T-1 (the same on both sides)."""
    import torch

    t, _, d = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attend(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", scale: float) -> "torch.Tensor":
    """Causal attention, q/k [T, H, Dk], v [T, H, Dv] -> [T, H*Dv]."""
    import torch

    t = q.shape[0]
    s = torch.einsum("thd,shd->hts", q, k) * scale
    s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hts,shd->thd", s.softmax(-1), v).reshape(t, -1)


def _swiglu(x: "torch.Tensor", gate: "torch.Tensor", up: "torch.Tensor", down: "torch.Tensor") -> "torch.Tensor":
    import torch

    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def _route(cfg: dict[str, Any], x: "torch.Tensor", w: "torch.Tensor", bias: "torch.Tensor") -> tuple[Any, Any]:
    """DeepSeek-V3 routing: sigmoid scores, bias-corrected group-limited top-k; (expert ids, weights) [T, k]."""
    import torch

    e, g = w.shape[0], int(cfg.get("n_group") or 1)
    k, kg = int(cfg["num_experts_per_tok"]), int(cfg.get("topk_group") or 1)
    scores = torch.sigmoid(x @ w.T)
    choice = scores + bias
    grp = choice.view(-1, g, e // g).topk(min(2, e // g), dim=-1).values.sum(-1)
    keep = torch.zeros_like(grp).scatter_(1, grp.topk(kg, dim=-1).indices, 1.0)
    choice = choice.masked_fill(~keep.bool().repeat_interleave(e // g, dim=1), float("-inf"))
    ids = choice.topk(k, dim=-1).indices
    wts = scores.gather(1, ids)
    if cfg.get("norm_topk_prob", True):
        wts = wts / wts.sum(-1, keepdim=True)
    return ids, wts * float(cfg.get("routed_scaling_factor") or 1.0)


def _moe(cfg: dict[str, Any], x: "torch.Tensor", ids: Any, wts: Any, expert: Callable[[int, Any], Any]) -> Any:
    import torch

    out = torch.zeros_like(x)
    for j in ids.unique().tolist():
        rows, slot = (ids == j).nonzero(as_tuple=True)
        out[rows] += wts[rows, slot, None] * expert(j, x[rows])
    return out


def _mla_scale(cfg: dict[str, Any]) -> float:
    qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    scale = qk ** -0.5
    rs = cfg.get("rope_scaling") or {}
    if rs.get("type", rs.get("rope_type")) == "yarn" and rs.get("mscale_all_dim"):
        f = float(rs.get("factor", 1.0))
        m = 0.1 * float(rs["mscale_all_dim"]) * math.log(f) + 1.0 if f > 1 else 1.0
        scale *= m * m
    return scale


# ----------------------------------------------------------------------------------------------- HF semantics
def _hf_layer(cfg: dict[str, Any], get: Getter, i: int, x: "torch.Tensor") -> "torch.Tensor":
    """One HF decoder layer ``model.layers.{i}`` (DeepSeek-V3 or Llama) on x [T, h]."""
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    p = f"model.layers.{i}."
    h = _rms(x, get(p + "input_layernorm.weight"), eps)
    a = p + "self_attn."
    nh = cfg["num_attention_heads"]
    t = x.shape[0]
    theta = float(cfg.get("rope_theta") or 10000.0)
    if cfg.get("kv_lora_rank"):
        dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        if cfg.get("q_lora_rank"):
            q = _rms(h @ get(a + "q_a_proj.weight").T, get(a + "q_a_layernorm.weight"), eps) @ get(a + "q_b_proj.weight").T
        else:
            q = h @ get(a + "q_proj.weight").T
        q = q.view(t, nh, dn + dr)
        ckv = h @ get(a + "kv_a_proj_with_mqa.weight").T
        c, k_pe = ckv[:, : cfg["kv_lora_rank"]], ckv[:, cfg["kv_lora_rank"] :]
        kv = (_rms(c, get(a + "kv_a_layernorm.weight"), eps) @ get(a + "kv_b_proj.weight").T).view(t, nh, dn + dv)
        k_pe = _rope(k_pe[:, None, :], theta).expand(t, nh, dr)
        import torch

        qq = torch.cat([q[..., :dn], _rope(q[..., dn:], theta)], -1)
        kk = torch.cat([kv[..., :dn], k_pe], -1)
        o = _attend(qq, kk, kv[..., dn:], _mla_scale(cfg))
    else:
        ng = int(cfg.get("num_key_value_heads") or nh)
        hd = int(cfg.get("head_dim") or cfg["hidden_size"] // nh)
        q = _rope((h @ get(a + "q_proj.weight").T).view(t, nh, hd), theta)
        k = _rope((h @ get(a + "k_proj.weight").T).view(t, ng, hd), theta).repeat_interleave(nh // ng, dim=1)
        v = (h @ get(a + "v_proj.weight").T).view(t, ng, hd).repeat_interleave(nh // ng, dim=1)
        o = _attend(q, k, v, hd ** -0.5)
    x = x + o @ get(a + "o_proj.weight").T
    h = _rms(x, get(p + "post_attention_layernorm.weight"), eps)
    m = p + "mlp."
    moe = bool(cfg.get("n_routed_experts")) and i >= int(cfg.get("first_k_dense_replace") or 0)
    if not moe:
        return x + _swiglu(h, get(m + "gate_proj.weight"), get(m + "up_proj.weight"), get(m + "down_proj.weight"))
    ids, wts = _route(cfg, h, get(m + "gate.weight"), get(m + "gate.e_score_correction_bias"))

    def expert(j: int, rows: Any) -> Any:
        e = f"{m}experts.{j}."
        return _swiglu(rows, get(e + "gate_proj.weight"), get(e + "up_proj.weight"), get(e + "down_proj.weight"))

    y = _moe(cfg, h, ids, wts, expert)
    if cfg.get("n_shared_experts"):
        s = m + "shared_experts."
        y = y + _swiglu(h, get(s + "gate_proj.weight"), get(s + "up_proj.weight"), get(s + "down_proj.weight"))
    return x + y


def _hf_mtp(cfg: dict[str, Any], get: Getter, k: int, emb: Any, hid: Any) -> Any:
    import torch

    eps = float(cfg.get("rms_norm_eps", 1e-6))
    li = cfg["num_hidden_layers"] + k
    p = f"model.layers.{li}."
    x = torch.cat([_rms(emb, get(p + "enorm.weight"), eps), _rms(hid, get(p + "hnorm.weight"), eps)], -1)
    x = _hf_layer(cfg, get, li, x @ get(p + "eh_proj.weight").T)
    return _rms(x, get(p + "shared_head.norm.weight"), eps)


def _hf_head(cfg: dict[str, Any], get: Getter, x: Any) -> Any:
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    w = get("model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight")
    return _rms(x, get("model.norm.weight"), eps) @ w.T


# ----------------------------------------------------------------------------------------- megatron semantics
def _mc_layer(cfg: dict[str, Any], get: Getter, prefix: str, i: int, x: "torch.Tensor") -> "torch.Tensor":
    """One megatron-core TransformerLayer at module path ``prefix`` (local spec names) on x [T, h]."""
    import torch

    eps = float(cfg.get("rms_norm_eps", 1e-6))
    h = _rms(x, get(prefix + "input_layernorm.weight"), eps)
    a = prefix + "self_attention."
    nh = cfg["num_attention_heads"]
    t = x.shape[0]
    theta = float(cfg.get("rope_theta") or 10000.0)
    if cfg.get("kv_lora_rank"):
        dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        if cfg.get("q_lora_rank"):
            q = _rms(h @ get(a + "linear_q_down_proj.weight").T, get(a + "q_layernorm.weight"), eps)
            q = q @ get(a + "linear_q_up_proj.weight").T
        else:
            q = h @ get(a + "linear_q_proj.weight").T
        q = q.view(t, nh, dn + dr)
        down = h @ get(a + "linear_kv_down_proj.weight").T  # [compressed kv | shared rope key]
        c, k_pe = torch.split(down, [cfg["kv_lora_rank"], dr], dim=-1)
        up = (_rms(c, get(a + "kv_layernorm.weight"), eps) @ get(a + "linear_kv_up_proj.weight").T).view(t, nh, dn + dv)
        k_nope, v = torch.split(up, [dn, dv], dim=-1)
        q_nope, q_pe = torch.split(q, [dn, dr], dim=-1)
        qq = torch.cat([q_nope, _rope(q_pe, theta)], -1)
        kk = torch.cat([k_nope, _rope(k_pe.unsqueeze(1), theta).expand(t, nh, dr)], -1)
        o = _attend(qq, kk, v, _mla_scale(cfg))
    else:
        ng = int(cfg.get("num_key_value_heads") or nh)
        hd = int(cfg.get("head_dim") or cfg["hidden_size"] // nh)
        qkv = (h @ get(a + "linear_qkv.weight").T).view(t, ng, (nh // ng + 2) * hd)  # per group [q_g; k_g; v_g]
        q, k, v = torch.split(qkv, [nh // ng * hd, hd, hd], dim=-1)
        q = _rope(q.reshape(t, nh, hd), theta)
        k = _rope(k, theta).repeat_interleave(nh // ng, dim=1)
        o = _attend(q, k, v.repeat_interleave(nh // ng, dim=1), hd ** -0.5)
    x = x + o @ get(a + "linear_proj.weight").T
    h = _rms(x, get(prefix + "pre_mlp_layernorm.weight"), eps)
    m = prefix + "mlp."

    def glu(rows: Any, fc1: Any, fc2: Any) -> Any:
        gate, up = fc1.chunk(2, dim=0)  # megatron's swiglu linear_fc1 = [gate; up]
        return _swiglu(rows, gate, up, fc2)

    moe = bool(cfg.get("n_routed_experts")) and i >= int(cfg.get("first_k_dense_replace") or 0)
    if not moe:
        return x + glu(h, get(m + "linear_fc1.weight"), get(m + "linear_fc2.weight"))
    ids, wts = _route(cfg, h, get(m + "router.weight"), get(m + "router.expert_bias"))

    def expert(j: int, rows: Any) -> Any:
        e = f"{m}experts.local_experts.{j}."
        return glu(rows, get(e + "linear_fc1.weight"), get(e + "linear_fc2.weight"))

    y = _moe(cfg, h, ids, wts, expert)
    if cfg.get("n_shared_experts"):
        y = y + glu(h, get(m + "shared_experts.linear_fc1.weight"), get(m + "shared_experts.linear_fc2.weight"))
    return x + y


def _mc_mtp(cfg: dict[str, Any], get: Getter, k: int, emb: Any, hid: Any) -> Any:
    import torch

    eps = float(cfg.get("rms_norm_eps", 1e-6))
    p = f"mtp.layers.{k}."
    # megatron's MultiTokenPredictionLayer: eh_proj(cat[enorm(decoder input), hnorm(hidden states)])
    x = torch.cat([_rms(emb, get(p + "enorm.weight"), eps), _rms(hid, get(p + "hnorm.weight"), eps)], -1)
    x = _mc_layer(cfg, get, p + "transformer_layer.", cfg["num_hidden_layers"] + k, x @ get(p + "eh_proj.weight").T)
    return _rms(x, get(p + "final_layernorm.weight"), eps)


def _mc_head(cfg: dict[str, Any], get: Getter, x: Any) -> Any:
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    w = get("embedding.word_embeddings.weight" if cfg.get("tie_word_embeddings") else "output_layer.weight")
    return _rms(x, get("decoder.final_layernorm.weight"), eps) @ w.T


# ----------------------------------------------------------------------------------------------------- driver
class _Side:
    """One checkpoint interpreted by its own format's semantics, with a per-unit tensor cache."""

    def __init__(self, path: Path) -> None:
        from adnanny_ckpt.descriptor import DESCRIPTOR_FORMAT

        self.path = path
        desc = path / "adnanny_ckpt.json"
        m = json.loads(desc.read_text()) if desc.is_file() else {}
        self.kind = "mcore" if m.get("format") == DESCRIPTOR_FORMAT else "hf"
        self.src: Any = McoreTensors(path) if self.kind == "mcore" else HFTensors(path)
        self.config = dict(self.src.config)
        self.has_mtp = (self.kind == "hf" and f"model.layers.{self.config['num_hidden_layers']}.eh_proj.weight" in self.src) \
            or (self.kind == "mcore" and "mtp.layers.0.eh_proj.weight" in self.src)
        self._cache: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self.src(name)
        return self._cache[name]

    def clear(self) -> None:
        self._cache.clear()

    def embed(self, ids: Any) -> Any:
        return self.get("model.embed_tokens.weight" if self.kind == "hf" else "embedding.word_embeddings.weight")[ids]

    def layer(self, i: int, x: Any) -> Any:
        if self.kind == "hf":
            return _hf_layer(self.config, self.get, i, x)
        return _mc_layer(self.config, self.get, f"decoder.layers.{i}.", i, x)

    def mtp(self, k: int, emb: Any, hid: Any) -> Any:
        return (_hf_mtp if self.kind == "hf" else _mc_mtp)(self.config, self.get, k, emb, hid)

    def head(self, x: Any) -> Any:
        return (_hf_head if self.kind == "hf" else _mc_head)(self.config, self.get, x)

    def close(self) -> None:
        self.clear()
        if isinstance(self.src, McoreTensors):
            self.src.close()


def forward_check(path: str | os.PathLike[str], reference: str | os.PathLike[str], *, tokens: int = 6,
                  seed: int = 0, tolerance: float = 1e-3, progress: bool = False) -> dict[str, Any]:
    """Run every unit of ``path`` and of ``reference`` (each an HF dir or a megatron checkpoint) on the same
    random inputs and compare; return ``{"units": {name: relative max difference}, "problems": [...]}``.

    A unit fails when ``max|Δ| > tolerance · max(1, max|reference output|)``. The default tolerance fits
    BF16-exact conversions (FP32 arithmetic on identical weights differs by rounding only); an FP8 re-quantized
    output against a BF16 reference needs about 0.1.
    """
    import torch
    from tqdm.auto import tqdm

    a, b = _Side(Path(path)), _Side(Path(reference))
    units: dict[str, float] = {}
    problems: list[str] = []
    try:
        cfg = b.config
        for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
            if a.config.get(key) != cfg.get(key):
                raise VerifyError(f"`{path}` and `{reference}` describe different models: `{key}` "
                                  f"{a.config.get(key)} vs {cfg.get(key)}")
        g = torch.Generator().manual_seed(seed)
        h, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]

        def compare(unit: str, fa: Callable[[], Any], fb: Callable[[], Any]) -> None:
            with torch.no_grad():
                ya, yb = fa(), fb()
            a.clear()
            b.clear()
            diff = float((ya - yb).abs().max())
            scale = max(1.0, float(yb.abs().max()))
            units[unit] = diff / scale
            if not diff <= tolerance * scale:
                problems.append(f"{unit}: forward differs from the reference's (max |Δ| {diff:.3g}, scale "
                                f"{scale:.3g}, tolerance {tolerance:g}); the tensors of this unit are mapped "
                                "to the wrong roles or fused in the wrong order")

        ids = torch.randint(0, v, (tokens,), generator=g)
        compare("embedding", lambda: a.embed(ids), lambda: b.embed(ids))
        n_mtp = int(cfg.get("num_nextn_predict_layers") or 0) if (a.has_mtp and b.has_mtp) else 0
        for i in tqdm(range(n), desc="verify forward", disable=not progress):
            x = torch.randn(tokens, h, generator=g) * 0.5
            compare(f"layer {i}", lambda x=x, i=i: a.layer(i, x), lambda x=x, i=i: b.layer(i, x))
        for k in range(n_mtp):
            emb, hid = torch.randn(tokens, h, generator=g) * 0.5, torch.randn(tokens, h, generator=g) * 0.5
            compare(f"mtp {k}", lambda k=k, e=emb, d=hid: a.mtp(k, e, d), lambda k=k, e=emb, d=hid: b.mtp(k, e, d))
        x = torch.randn(tokens, h, generator=g) * 0.5
        compare("head", lambda: a.head(x), lambda: b.head(x))
    finally:
        a.close()
        b.close()
    return {"units": units, "problems": problems, "mtp_checked": n_mtp}
