"""Optimizer for hybrid dense–MoE models, with the stub MoE optimizer of §4.1.3.

The problem (paper §4.1.3). Megatron keeps two optimizers: one for dense/shared parameters and one for
expert-parallel parameters. Gradient statistics (grad norm for clipping, inf checks, zero counts) are
all-reduced per optimizer over that optimizer's group; with the (non-distributed) optimizer the expert
one reduces over the expert TP x PP group, which spans *all* pipeline stages. If a stage that holds only
dense layers (the embedding + ``first_k_dense_replace`` layers on stage 0, the paper's Node 0) has no
expert optimizer, it never enters those collectives and the MoE stages block in them forever.

What megatron-core 0.16.1 does. Its ``_get_param_groups`` all-gathers the parameter-group keys over the
world, so a dense-only rank gets *empty* expert parameter groups and builds a real (Adam) expert
optimizer with zero parameters — which already keeps the collectives aligned. Older releases (and any
code that skips the expert optimizer when a rank has no expert parameters) hang. The policy
``"drop"`` reproduces exactly that failure mode (used by the hang test:
``tests/test_stub_optimizer.py``, PP2 x EP2 with a dense-only first stage, killed by a timeout).

The fix (policy ``"stub"``, the default). On a rank without expert-parallel parameters we put a real
*stub* in the expert slot of the chain: megatron's own ``is_stub_optimizer`` object, built through its
constructor with an empty parameter list and bound to the same expert group as on the MoE stages. It owns
no torch optimizer and no state, skips the inner step and the param copies, but joins
``all_reduce(found_inf)`` and ``get_grad_norm_fp32`` with empty (zero) contributions, in the same order as
the real expert optimizers. If megatron built no expert optimizer on that rank (older versions), the stub
is appended; if it built an empty one (0.16.1), the stub replaces it. Megatron's stub lacks the small
surface a chained optimizer touches when checkpointing (``optimizer.param_groups``, ``state_dict``,
``sharded_state_dict``); :func:`_harden_stub` gives it an empty one.

Which ranks need a stub is decided collectively (``all_reduce(MAX)`` of "has expert-parallel params"
over the world), so it does not depend on guessing the layout from the config.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["MOE_OPTIMIZER_POLICIES", "OptimSettings", "build_optimizer", "has_stub_moe_optimizer"]

MOE_OPTIMIZER_POLICIES = ("stub", "megatron", "drop")


@dataclass(frozen=True)
class OptimSettings:
    """Adam settings plus the two switches that matter for §4.1.3."""

    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = False
    #: "stub" (§4.1.3 fix), "megatron" (leave megatron's choice), "drop" (reproduces the hang).
    moe_optimizer: str = "stub"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise AdNannyMegatronError(f"`lr` must be > 0, got {self.lr!r}")
        if self.clip_grad < 0:
            raise AdNannyMegatronError(f"`clip_grad` must be >= 0 (0 disables clipping), got {self.clip_grad!r}")
        if self.moe_optimizer not in MOE_OPTIMIZER_POLICIES:
            raise AdNannyMegatronError(
                f"`moe_optimizer` must be one of {MOE_OPTIMIZER_POLICIES}, got {self.moe_optimizer!r}"
            )
        for key in ("adam_beta1", "adam_beta2"):
            v = getattr(self, key)
            if not 0 <= v < 1:
                raise AdNannyMegatronError(f"`{key}` must be in [0, 1), got {v!r}")


class _EmptyInnerOptimizer:
    """What a chained optimizer reads from ``stub.optimizer``: no groups, no state."""

    param_groups: list[dict[str, Any]] = []

    def __init__(self) -> None:
        self.param_groups = []
        self.state: dict[Any, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": []}

    def load_state_dict(self, state_dict: Any) -> None:
        return None


def _harden_stub(stub: Any, template_groups: list[dict[str, Any]], step_fn: Any) -> Any:
    """Give megatron's ``is_stub_optimizer`` object an empty but *checkpoint-compatible* surface.

    dist_checkpointing stores non-sharded ("common") state from rank 0 only. On the paper's layout rank 0
    is a dense-only stage, so whatever its expert-optimizer slot emits is what every MoE rank loads back:
    the stub must emit the expert groups' hyperparameters and the shared Adam step count, exactly like a
    real expert optimizer would (its own ``params`` lists are rank-local and never persisted).
    """
    import copy

    import torch
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject

    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    distributed = isinstance(stub, DistributedOptimizer)
    stub.optimizer = _EmptyInnerOptimizer()
    stub.is_stub_optimizer = True
    stub.adnanny_stub_moe = True

    def sharded_state_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if distributed:
            # A distributed optimizer stores its groups and step as per-DP-group sharded objects; the
            # only common (rank-0) entry the MoE ranks read back is the sharding type.
            metadata = kwargs.get("metadata") or {}
            return {"param_state_sharding_type": metadata.get("distrib_optim_sharding_type",
                                                              "fully_sharded_model_space")}
        groups = copy.deepcopy(template_groups)
        for g in groups:
            g["params"] = LocalNonpersistentObject([])
        state: dict[str, Any] = {}
        step = int(step_fn()) if step_fn is not None else 0
        if step:
            state["common_step"] = torch.tensor(float(step))
        return {"param_groups": groups, "state": state}

    stub.sharded_state_dict = sharded_state_dict
    stub.state_dict = lambda: {"param_groups": copy.deepcopy(template_groups), "state": {}}
    stub.load_state_dict = lambda state_dict: None
    stub.reload_model_params = lambda state_dict=None: None
    return stub


def _world_has_expert_params(local: bool) -> bool:
    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() else "cpu"
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def build_optimizer(model_chunks: list[Any], settings: OptimSettings, *, bf16: bool, step_fn: Any = None) -> Any:
    """Megatron's optimizer for ``model_chunks`` (DDP-wrapped), plus a stub expert optimizer where needed.

    Returns a ``ChainedOptimizer``; on a rank that received a stub, ``has_stub_moe_optimizer`` is True.
    ``step_fn`` returns the number of optimizer steps taken (the stub writes it into checkpoints).
    """
    from adnanny_megatron import compat

    compat.apply()
    from megatron.core import parallel_state as ps
    from megatron.core.optimizer import (
        ChainedOptimizer,
        OptimizerConfig,
        _get_megatron_optimizer_based_on_param_groups,
        get_megatron_optimizer,
    )

    config = OptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=bf16,
        params_dtype=model_chunks[0].config.params_dtype,
        use_distributed_optimizer=settings.use_distributed_optimizer,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = get_megatron_optimizer(config, model_chunks)
    local_expert = any(
        not getattr(p, "allreduce", True) for chunk in model_chunks for p in chunk.parameters()
    )
    policy = settings.moe_optimizer
    world_expert = _world_has_expert_params(local_expert)  # collective: every rank calls it
    if policy == "megatron" or local_expert or not world_expert:
        return optimizer
    chain = list(optimizer.chained_optimizers)
    dense = [o for o in chain if not _is_expert_optimizer(o)]
    empty_expert = [o for o in chain if _is_expert_optimizer(o)]
    template = (
        [{k: v for k, v in g.items() if k != "params"} for g in empty_expert[0].optimizer.param_groups]
        if empty_expert
        else []
    )
    if policy == "drop":  # the failure mode of §4.1.3: this rank never enters the expert collectives
        return ChainedOptimizer(dense)
    # This rank holds no expert-parallel parameters but others do: put the stub in the expert slot,
    # bound to the expert groups exactly as the real expert optimizer is on the MoE stages.
    expt_tp_pp = ps.get_expert_tensor_model_pipeline_parallel_group()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stub = _get_megatron_optimizer_based_on_param_groups(
            config=config,
            model_chunks=model_chunks,
            param_groups=[],
            per_model_buffers={},
            model_parallel_group=expt_tp_pp,
            data_parallel_group=ps.get_expert_data_parallel_group(partial_expert_data_parallel=True),
            data_parallel_group_gloo=None,
            data_parallel_group_idx=expt_tp_pp.rank(),
            intra_dist_opt_group=ps.get_intra_distributed_optimizer_instance_group(),
            distributed_optimizer_instance_id=0,
        )
    if not getattr(stub, "is_stub_optimizer", False):
        raise AdNannyMegatronError("megatron did not return a stub optimizer for an empty parameter list")
    _harden_stub(stub, template, step_fn)
    return ChainedOptimizer([*dense, stub])


def _is_expert_optimizer(opt: Any) -> bool:
    inner = getattr(opt, "optimizer", None)
    groups = getattr(inner, "param_groups", None) or []
    return any(g.get("is_expert_parallel", False) for g in groups)


def has_stub_moe_optimizer(optimizer: Any) -> bool:
    """True when ``optimizer`` (a ChainedOptimizer) carries our stub expert optimizer."""
    return any(getattr(o, "adnanny_stub_moe", False) for o in getattr(optimizer, "chained_optimizers", []))
