"""Uneven pipeline stages: adnanny-ckpt's ``ParallelLayout`` as megatron-core's ``pipeline_model_parallel_layout``.

What the paper asks (§4.1.1): 31 PP stages — stage 0 = the embedding and the 3 dense layers, the 58 MoE layers
over stages 1–30 at 1–2 each, the head on the last stage. megatron-core 0.16.1's ``num_layers_in_first/last_
pipeline_stage`` cannot say that (the middle stages must be equal: 58 layers do not split over 29 or 30 stages
evenly), but its ``pipeline_model_parallel_layout`` (``TransformerConfig`` field, parsed into
``PipelineParallelLayerLayout``) takes one list of layer types per stage: ``"embedding"``, ``"decoder"``,
``"mtp"``, ``"loss"``. Decoder layers are numbered in stage order, so a contiguous stage map (the only kind
``ParallelLayout`` allows) translates one to one.

The layer -> stage plan is adnanny-ckpt's (:func:`adnanny_ckpt.layout.plan_layout`, imported, never recomputed
here), so the checkpoint converter and the trainer cannot disagree about who holds which layer.
:func:`check_layout` builds megatron's config with the layout — its own validation runs, no ranks are launched —
and cross-checks that megatron assigns every stage exactly the ckpt plan's layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["StageView", "check_layout", "layout_from_stage_sizes", "megatron_layout"]


def megatron_layout(layout: Any, *, mtp_layers: int = 0) -> list[list[str]]:
    """Per stage megatron layer types: embedding on stage 0, ``len(stage)`` decoders, MTP + loss on the last."""
    rows: list[list[str]] = []
    for s, stage in enumerate(layout.stages):
        row = (["embedding"] if s == 0 else []) + ["decoder"] * len(stage)
        if s == layout.pp - 1:
            row += ["mtp"] * mtp_layers + ["loss"]
        rows.append(row)
    return rows


def layout_from_stage_sizes(sizes: list[int] | str, *, ep: int = 1, tp: int = 1, dp: int | None = None,
                            num_experts: int = 0, num_layers: int | None = None) -> Any:
    """A ckpt ``ParallelLayout`` from decoder layers per stage (``[2, 3, 2]`` or ``"2,3,2"``): contiguous runs."""
    from adnanny_ckpt.errors import LayoutError
    from adnanny_ckpt.layout import ParallelLayout

    if isinstance(sizes, str):
        try:
            sizes = [int(x) for x in sizes.replace(" ", "").split(",") if x]
        except ValueError as exc:
            raise AdNannyMegatronError(f"`stage_layers` {sizes!r} must be comma-separated integers, e.g. '2,3,2'") \
                from exc
    if any(n < 0 for n in sizes) or not sizes:
        raise AdNannyMegatronError(f"`stage_layers` {sizes!r} must be non-negative layer counts, one per stage")
    if num_layers is not None and sum(sizes) != num_layers:
        raise AdNannyMegatronError(
            f"`stage_layers` {sizes} places {sum(sizes)} decoder layers but the model has {num_layers}")
    stages, start = [], 0
    for n in sizes:
        stages.append(list(range(start, start + n)))
        start += n
    try:
        return ParallelLayout(pp=len(sizes), stages=stages, ep=ep, tp=tp, dp=dp, num_experts=num_experts)
    except LayoutError as exc:
        raise AdNannyMegatronError(str(exc)) from exc


@dataclass
class StageView:
    """What one PP stage holds (the CLI prints one per stage)."""

    stage: int
    layers: list[int]
    embedding: bool
    dense: list[int]
    moe: list[int]
    mtp: int
    head: bool
    megatron: list[str]
    params_per_gpu: int | None = None
    bytes_per_gpu: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        parts = (["embedding"] if self.embedding else []) + \
            ([f"dense {_span(self.dense)}"] if self.dense else []) + ([f"MoE {_span(self.moe)}"] if self.moe else []) + \
            ([f"MTP x{self.mtp}"] if self.mtp else []) + (["head"] if self.head else [])
        mem = f"  {self.bytes_per_gpu / 2**30:8.1f} GiB/GPU" if self.bytes_per_gpu is not None else ""
        return f"stage {self.stage:>3}: {', '.join(parts) or '(empty)'}{mem}"


def _span(layers: list[int]) -> str:
    return f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]} ({len(layers)})"


def check_layout(hf_config: dict[str, Any], layout: Any, *, mtp_layers: int = 0, plan: Any = None) -> list[StageView]:
    """Build megatron-core's config with ``layout`` (no ranks) and return what each stage holds.

    Raises :class:`AdNannyMegatronError` when megatron-core refuses the layout, or when megatron would place
    different layers on a stage than the ckpt plan (a translation bug, checked rather than assumed).
    """
    from adnanny_megatron import compat
    from adnanny_megatron.provider import arch_spec, transformer_config_from_hf

    arch = arch_spec(hf_config)
    if mtp_layers > arch.num_mtp_layers:
        raise AdNannyMegatronError(
            f"{mtp_layers} MTP layer(s) requested but config.json has num_nextn_predict_layers="
            f"{arch.num_mtp_layers}")
    rows = megatron_layout(layout, mtp_layers=mtp_layers)
    spec = transformer_config_from_hf(hf_config, bf16=False, tp=layout.tp, pp=layout.pp, ep=layout.ep,
                                      use_te=False, pipeline_layout=rows, mtp=bool(mtp_layers))
    compat.import_megatron()
    from megatron.core.transformer.enums import LayerType

    ml = spec.config.pipeline_model_parallel_layout  # megatron's PipelineParallelLayerLayout
    views = []
    for s, stage in enumerate(layout.stages):
        got = ml.get_layer_id_list(layer_type=LayerType.decoder, vp_stage=0, pp_rank=s)
        if got != list(stage):
            raise AdNannyMegatronError(f"megatron places decoder layers {got} on stage {s}, the plan {stage}")
        sp = plan.stages[s] if plan is not None else None
        views.append(StageView(
            stage=s, layers=list(stage), embedding=s == 0,
            dense=[i for i in stage if not arch.is_moe_layer(i)], moe=[i for i in stage if arch.is_moe_layer(i)],
            mtp=ml.get_num_layers_to_build(layer_type=LayerType.mtp, vp_stage=0, pp_rank=s),
            head=LayerType.loss in ml.layout[s][0], megatron=rows[s],
            params_per_gpu=sp.params_per_gpu if sp else None, bytes_per_gpu=sp.bytes_per_gpu if sp else None))
    return views
