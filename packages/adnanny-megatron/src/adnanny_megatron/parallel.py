"""Process groups (TP/PP/EP/DP) from a parallel layout, over gloo on CPU and NCCL on GPU.

The paper's layout (§4.1.1) is 31-way PP x 8-way EP x 8-way DP on 248 GPUs: every node is one PP stage,
its 8 GPUs form one EP group (32 of the 256 routed experts each), and dense/shared parameters are
replicated over 8-way DP. In megatron terms that is ``world = TP*PP*DP = 1*31*8`` with ``EP = 8`` carved
out of the DP dimension (expert-DP = DP/EP = 1), which :data:`PAPER_PRESET` records.

The layout object is adnanny-ckpt's :class:`adnanny_ckpt.layout.ParallelLayout` when given one (we read
its ``tp``/``pp``/``ep``/``dp`` sizes); :class:`Sizes` is the small local record the CLI builds from
flags. Nothing here is copied from adnanny-ckpt: only the sizes are read.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["DEFAULT_TIMEOUT_MINUTES", "PAPER_PRESET", "Sizes", "destroy", "initialize", "parse_sizes",
           "sizes_from_layout"]

#: Process-group timeout (minutes) for every collective, NCCL and gloo alike. Generous on purpose: rank 0 may
#: sit in a barrier while another rank reads its slice of a multi-TB checkpoint (§4.1.2). A genuine hang (the
#: §4.1.3 MoE deadlock) is caught sooner by :mod:`adnanny_megatron.launch`'s watchdog, not by this timeout.
DEFAULT_TIMEOUT_MINUTES = 30.0


@dataclass(frozen=True)
class Sizes:
    """Parallel sizes. ``dp`` is derived: world = tp * pp * dp; ``ep`` must divide ``dp * tp``."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        for key in ("tp", "pp", "ep", "dp"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise AdNannyMegatronError(f"parallel size `{key}` must be a positive int, got {value!r}")
        if (self.dp * self.tp) % self.ep:
            raise AdNannyMegatronError(
                f"`ep`={self.ep} must divide dp*tp={self.dp * self.tp} (experts are sharded inside the "
                "data-parallel dimension)"
            )

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


#: §4.1.1: 31 nodes x 8 GPUs; PP31 (one stage per node), EP8 within a node, DP8 for dense/shared params.
PAPER_PRESET = Sizes(tp=1, pp=31, ep=8, dp=8)


def sizes_from_layout(layout: Any, world_size: int | None = None) -> Sizes:
    """Read ``tp``/``pp``/``ep``/``dp`` from an adnanny-ckpt ``ParallelLayout``, a :class:`Sizes` or a
    layout string; a string without ``dp`` gets ``dp = world_size / (tp*pp)``."""
    if isinstance(layout, Sizes):
        return layout
    if isinstance(layout, str):
        return parse_sizes(layout, world_size)
    got = {}
    for key in ("tp", "pp", "ep", "dp"):
        value = getattr(layout, key, None)
        if value is None:
            value = getattr(layout, key + "_size", None)
        got[key] = 1 if value is None else int(value)
    return Sizes(**got)


def parse_sizes(text: str, world_size: int | None = None) -> Sizes:
    """Parse ``"pp2,ep2"`` / ``"tp2 pp2 dp1"`` / ``"paper"`` into :class:`Sizes`.

    Without ``dp`` the data-parallel size is ``world_size / (tp*pp)`` (or ``ep`` when no world size is
    known, the smallest DP that holds the EP group)."""
    if text.strip() == "paper":
        return PAPER_PRESET
    got: dict[str, int] = {}
    for part in text.replace(",", " ").replace("x", " ").split():
        key = part.rstrip("0123456789").lower()
        num = part[len(key):]
        if key not in ("tp", "pp", "ep", "dp") or not num.isdigit():
            raise AdNannyMegatronError(
                f"bad `--layout` part {part!r} in {text!r}: use e.g. 'pp2,ep2' or 'tp2,dp2' or 'paper'"
            )
        got[key] = int(num)
    if "dp" not in got:
        tp, pp = got.get("tp", 1), got.get("pp", 1)
        if world_size is not None:
            if world_size % (tp * pp):
                raise AdNannyMegatronError(
                    f"world size {world_size} is not a multiple of tp*pp={tp * pp} for `--layout` {text!r}"
                )
            got["dp"] = world_size // (tp * pp)
        else:
            got["dp"] = max(1, got.get("ep", 1) // tp)
    return Sizes(**got)


def initialize(sizes: Sizes, *, seed: int = 1234, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> None:
    """Start torch.distributed (env:// as torchrun sets it) and megatron's process groups.

    ``timeout_minutes`` reaches the default group (``init_process_group(timeout=...)``) and every group megatron
    creates (``distributed_timeout_minutes``); fractions of a minute are kept for the default group.

    A single process without torchrun variables gets a one-rank gloo group on a free local port, so the
    backend, the parity harness and benchmarks run the same code path as multi-process training.
    """
    import torch
    import torch.distributed as dist

    from adnanny_megatron import compat

    compat.apply()
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if not timeout_minutes > 0:
        raise AdNannyMegatronError(f"`timeout_minutes` must be > 0, got {timeout_minutes!r}")
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    world = dist.get_world_size()
    if world != sizes.world_size:
        raise AdNannyMegatronError(
            f"layout tp={sizes.tp} pp={sizes.pp} dp={sizes.dp} needs {sizes.world_size} processes, "
            f"but the world size is {world}: launch with `torchrun --nproc-per-node {sizes.world_size}`"
        )
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=sizes.tp,
        pipeline_model_parallel_size=sizes.pp,
        expert_model_parallel_size=sizes.ep,
        expert_tensor_parallel_size=1,
        distributed_timeout_minutes=max(1, round(timeout_minutes)),
    )
    model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not torch.cuda.is_available())
    torch.manual_seed(seed)


def destroy() -> None:
    """Tear down megatron's groups and the default group (tests call this between layouts)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
