"""The parallel layout (PP stages, EP expert ranges, TP, DP) and ``plan_layout`` — paper §4.1.1.

What the paper asks: 248 GPUs = 31 PP stages × 8 GPUs; the 8-way EP groups sit inside the 8-way DP groups (one
node); stage 0 holds the embedding and the dense first layers only, stages 1–30 the 58 MoE layers (1–2 each), the
last stage the final norm and the head; EP rank ``r`` holds the contiguous experts ``r·E/EP … (r+1)·E/EP − 1``.

How we balance: stage 0 is pinned to the dense layers when the model has any and ``dense_first_stage`` (default
for MoE models with PP > 1, as §4.1.3 describes); the remaining layers are split into contiguous runs, one per
stage, minimizing the largest per-GPU cost (exact dynamic programme). Cost is either per-GPU parameter bytes
(``balance="params"``) or activated parameters per token ≈ FLOPs (``balance="flops"``); the last stage also pays
for the final norm, the head and — if ``include_mtp`` — the MTP layer, which megatron places there.

Memory per GPU (``bytes_per_gpu``), with BF16 training under megatron's distributed optimizer:

    bytes_per_gpu = 6 · (P_dense + P_expert) + 12 · (P_dense / DP + P_expert / (DP / EP))

``P_dense`` / ``P_expert``: parameters this GPU holds (after TP and EP splits; replicated ones counted in full).
6 bytes = BF16 weight (2) + FP32 gradient buffer (4); 12 bytes = FP32 main weight + Adam m + v, sharded by the
distributed optimizer over the data-parallel group of the parameter — DP for dense parameters, the expert
data-parallel group DP/EP for routed experts (EP groups inside DP groups). Activations are not counted.

Deviation: the paper does not say where the MTP module lives; the plan leaves it out unless ``include_mtp``
(the paper's 58-layer split has no room for it), while conversion copies it onto the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adnanny_ckpt.errors import LayoutError
from adnanny_ckpt.names import ModelSpec, ParamSpec, mcore_params, model_spec_from_hf_config

__all__ = ["ParallelLayout", "LayoutPlan", "StagePlan", "plan_layout", "BYTES_PER_PARAM_FORMULA"]

BYTES_PER_PARAM_FORMULA = "6*(P_dense+P_expert) + 12*(P_dense/DP + P_expert/(DP/EP))"


@dataclass
class ParallelLayout:
    """Which GPU holds what: ``stages[s]`` = the global decoder layers of PP stage ``s``.

    Embedding on stage 0, final norm + head (+ MTP) on the last stage. EP rank ``r`` holds experts
    ``expert_range(r)``. Validated on construction (errors name the parameter).
    """

    pp: int
    stages: list[list[int]]
    ep: int = 1
    tp: int = 1
    dp: int | None = None
    num_experts: int = 0
    num_layers: int = field(default=-1)

    def __post_init__(self) -> None:
        for key in ("pp", "ep", "tp"):
            val = getattr(self, key)
            if not isinstance(val, int) or val < 1:
                raise LayoutError(f"`{key}` must be a positive integer; got {val!r}.")
        if self.dp is None:
            self.dp = self.ep
        if self.dp < 1 or self.dp % self.ep:
            raise LayoutError(
                f"`dp` ({self.dp}) must be a multiple of `ep` ({self.ep}): the EP groups sit inside the DP groups."
            )
        if self.num_experts and self.num_experts % self.ep:
            raise LayoutError(
                f"`ep` = {self.ep} does not divide the model's {self.num_experts} routed experts; choose an EP size "
                f"that divides {self.num_experts} (e.g. {', '.join(str(d) for d in _divisors(self.num_experts)[:6])})."
            )
        if not self.num_experts and self.ep != 1:
            raise LayoutError(f"`ep` = {self.ep} but the model has no routed experts; use `ep` = 1.")
        if len(self.stages) != self.pp:
            raise LayoutError(f"layer map has {len(self.stages)} stages but `pp` = {self.pp}.")
        flat = [layer for st in self.stages for layer in st]
        n = len(flat) if self.num_layers < 0 else self.num_layers
        if sorted(flat) != list(range(n)) or flat != sorted(flat):
            raise LayoutError(
                f"layer map {self.stages} must assign layers 0..{n - 1} to stages in order, each exactly once."
            )
        self.num_layers = n

    @property
    def world_size(self) -> int:
        return self.pp * self.tp * int(self.dp or 1)

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep if self.num_experts else 0

    def expert_range(self, ep_rank: int) -> tuple[int, int]:
        """Inclusive ``(first, last)`` global expert ids of EP rank ``ep_rank``."""
        k = self.experts_per_rank
        return ep_rank * k, (ep_rank + 1) * k - 1

    def stage_of(self, layer: int) -> int:
        """PP stage of a global layer; MTP layers (>= num_layers) live on the last stage."""
        if layer >= self.num_layers:
            return self.pp - 1
        lookup = self.__dict__.get("_stage_lookup")
        if lookup is None:
            lookup = {layer_: s for s, st in enumerate(self.stages) for layer_ in st}
            self.__dict__["_stage_lookup"] = lookup
        if layer not in lookup:
            raise LayoutError(f"layer {layer} is not in the layer map.")
        return lookup[layer]

    def stage_of_param(self, p: ParamSpec) -> int:
        if p.group == "embedding":
            return 0
        if p.group in ("final", "head", "mtp"):
            return self.pp - 1
        assert p.layer is not None
        return self.stage_of(p.layer)

    def ep_rank_of(self, expert: int) -> int:
        return expert // self.experts_per_rank

    def layer_offset(self, stage: int) -> int:
        return self.stages[stage][0] if self.stages[stage] else sum(len(s) for s in self.stages[:stage])

    def to_dict(self) -> dict[str, Any]:
        return {"pp": self.pp, "ep": self.ep, "tp": self.tp, "dp": self.dp, "num_experts": self.num_experts,
                "num_layers": self.num_layers, "stages": self.stages}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParallelLayout":
        return cls(pp=d["pp"], stages=[list(s) for s in d["stages"]], ep=d["ep"], tp=d["tp"], dp=d["dp"],
                   num_experts=d["num_experts"], num_layers=d["num_layers"])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class StagePlan:
    stage: int
    layers: list[int]
    has_embedding: bool
    has_head: bool
    params: int  # parameters of the stage, unsharded (all experts)
    params_per_gpu: int
    bytes_per_gpu: int
    has_mtp: bool = False


@dataclass
class LayoutPlan:
    layout: ParallelLayout
    total_params: int
    stages: list[StagePlan]

    def to_json(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "pp": lay.pp, "ep": lay.ep, "dp": lay.dp, "tp": lay.tp, "world_size": lay.world_size,
            "total_params": self.total_params,
            "stages": [
                {"stage": s.stage, "layers": s.layers, "has_embedding": s.has_embedding, "has_head": s.has_head,
                 "has_mtp": s.has_mtp, "params": s.params, "params_per_gpu": s.params_per_gpu,
                 "bytes_per_gpu": s.bytes_per_gpu}
                for s in self.stages
            ],
            "expert_ranges": [list(lay.expert_range(r)) for r in range(lay.ep)] if lay.num_experts else [],
            "bytes_per_gpu_formula": BYTES_PER_PARAM_FORMULA,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _gpu_numel(p: ParamSpec, tp: int, ep: int) -> tuple[int, int]:
    """(dense, expert) parameters one GPU holds of ``p``."""
    n = _numel(p.shape)
    if p.split != "none":
        n = -(-n // tp)
    if p.expert is not None:
        return 0, n  # caller counts only the experts of one EP rank
    return n, 0


def _bytes(dense: float, expert: float, dp: int, ep: int) -> int:
    return int(6 * (dense + expert) + 12 * (dense / dp + expert / (dp // ep)))


def plan_layout(
    config: dict[str, Any] | ModelSpec,
    pp: int,
    ep: int = 1,
    tp: int = 1,
    dp: int | None = None,
    *,
    layer_map: list[list[int]] | None = None,
    balance: str = "params",
    include_mtp: bool = False,
    dense_first_stage: bool | None = None,
) -> LayoutPlan:
    """Plan a layout from the config alone (no weights): layer→stage map, expert ranges, bytes per GPU."""
    spec = config if isinstance(config, ModelSpec) else model_spec_from_hf_config(config)
    if balance not in ("params", "flops"):
        raise LayoutError(f"`balance` must be 'params' or 'flops'; got {balance!r}.")
    if not isinstance(pp, int) or pp < 1:
        raise LayoutError(f"`pp` must be a positive integer; got {pp!r}.")
    if spec.num_experts and spec.num_experts % max(ep, 1):
        ParallelLayout(pp=1, stages=[list(range(spec.num_layers))], ep=ep, num_experts=spec.num_experts)  # raises
    params = mcore_params(spec, mtp=include_mtp)
    topk = int(spec.raw.get("num_experts_per_tok") or 0)
    L = spec.num_layers
    per_layer = [0.0] * L
    extra_first = 0.0
    extra_last = 0.0
    dp_ = dp if dp is not None else ep
    for p in params:
        d, e = _gpu_numel(p, tp, ep)
        if balance == "params":  # per-GPU bytes; a GPU holds 1/EP of the routed experts
            cost = _bytes(d, 0, dp_, ep) if p.expert is None else _bytes(0, e, dp_, ep) / ep
        else:
            n = _numel(p.shape) / tp
            if p.group == "embedding":
                n = 0.0
            elif p.expert is not None:
                n = n * topk / spec.num_experts
            cost = n
        if p.group == "embedding":
            extra_first += cost
        elif p.group in ("final", "head", "mtp"):
            extra_last += cost
        else:
            assert p.layer is not None
            per_layer[p.layer] += cost
    if pp > 1 and spec.tie_word_embeddings:
        extra_last += _numel((spec.vocab_size, spec.hidden_size)) / tp * (6 + 12 / dp_ if balance == "params" else 1)

    if layer_map is None:
        if dense_first_stage is None:
            dense_first_stage = spec.is_moe and spec.first_k_dense > 0 and pp > 1
        if dense_first_stage:
            if pp < 2:
                raise LayoutError("`dense_first_stage` needs `pp` >= 2.")
            rest = _minmax_partition(per_layer[spec.first_k_dense:], pp - 1, 0.0, extra_last)
            layer_map = [list(range(spec.first_k_dense))] + [
                [spec.first_k_dense + i for i in st] for st in rest]
        else:
            layer_map = _minmax_partition(per_layer, pp, extra_first, extra_last)
    layout = ParallelLayout(pp=pp, stages=layer_map, ep=ep, tp=tp, dp=dp, num_experts=spec.num_experts,
                            num_layers=L)

    acc = [[0, 0, 0] for _ in range(pp)]  # full, dense per GPU, expert per GPU
    for p in params:
        s = layout.stage_of_param(p)
        acc[s][0] += _numel(p.shape)
        d, e = _gpu_numel(p, tp, ep)
        if p.expert is not None:
            if layout.ep_rank_of(p.expert) == 0:
                acc[s][2] += e
        else:
            acc[s][1] += d
    stages = []
    for s in range(pp):
        full, dense, expert = acc[s]
        if s == pp - 1 and pp > 1 and spec.tie_word_embeddings:
            dense += -(-spec.vocab_size * spec.hidden_size // tp)  # the head's copy of the tied embedding
        stages.append(StagePlan(
            stage=s, layers=layout.stages[s], has_embedding=s == 0, has_head=s == pp - 1,
            has_mtp=include_mtp and spec.num_mtp_layers > 0 and s == pp - 1, params=full,
            params_per_gpu=dense + expert, bytes_per_gpu=_bytes(dense, expert, int(layout.dp or 1), ep)))
    total = sum(_numel(p.shape) for p in params)
    return LayoutPlan(layout=layout, total_params=total, stages=stages)


def _minmax_partition(costs: list[float], k: int, first: float, last: float) -> list[list[int]]:
    """Split ``costs`` into ``k`` contiguous non-empty runs minimizing the max run cost (+ first/last extras)."""
    n = len(costs)
    if k > n:
        raise LayoutError(
            f"cannot give each of {k} pipeline stages at least one of {n} layers; use `pp` <= {n} "
            "(plus one stage for the dense layers when they get their own)."
        )
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)
    inf = float("inf")
    # best[s][i]: minimal max cost placing the first i layers on stages 0..s-1
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        extra = (first if s == 1 else 0.0) + (last if s == k else 0.0)
        for i in range(s, n - (k - s) + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], pre[i] - pre[j] + extra)
                if v < best[s][i] - 1e-9 * max(1.0, v):
                    best[s][i], cut[s][i] = v, j
    out: list[list[int]] = []
    i = n
    for s in range(k, 0, -1):
        j = cut[s][i]
        out.append(list(range(j, i)))
        i = j
    return out[::-1]
