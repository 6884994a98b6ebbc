"""torch_dist checkpoint helpers: atomic multi-rank directories and weight-only loads.

A dist_checkpointing save is written by every rank into one directory. To keep a previous checkpoint
intact if a save dies half-way, all ranks write into ``.<name>.tmp-<step>`` next to the target and rank 0
renames it into place after a barrier (the old directory is removed only after the rename succeeded).

Every :meth:`MegatronBackend.save` also writes adnanny-ckpt's descriptor ``adnanny_ckpt.json`` into the
directory (:func:`write_save_descriptor`): the layout trained with, the architecture, the padded vocabulary and
the HF source the weights came from, so ``adnanny-ckpt mcore-to-hf --mcore DIR`` converts a training checkpoint
back to HF without being told how it was sharded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["atomic_dist_dir", "load_model_weights", "module_sharded_state_dict", "save_model_weights",
           "save_layout", "write_save_descriptor"]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def atomic_dist_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a temp dir that every rank writes into; rank 0 renames it to ``directory`` at the end."""
    target = Path(directory).resolve()
    tmp = target.parent / f".{target.name}.tmp"
    if _rank() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    yield tmp
    _barrier()
    if _rank() == 0:
        old = target.parent / f".{target.name}.old"
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if old.exists():
            shutil.rmtree(old)
    _barrier()


def module_sharded_state_dict(module: Any) -> dict[str, Any]:
    """``module.sharded_state_dict()`` with the metadata megatron-core 0.16.1 forgets to default.

    ``GPTModel.sharded_state_dict`` reads ``metadata['dp_cp_group']`` for the embedding copy an MTP stage keeps
    when it is not the first pipeline stage, but only its parent fills that key in its own copy; called with the
    default ``metadata=None`` it raises ``TypeError``. Passing megatron's own default dict avoids that.
    """
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

    return module.sharded_state_dict(metadata=ensure_metadata_has_dp_cp_group(None))


def save_model_weights(module: Any, directory: str | Path) -> None:
    """Save a (non-DDP) megatron module's weights as a torch_dist checkpoint, atomically."""
    from megatron.core import dist_checkpointing

    with atomic_dist_dir(directory) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dist_checkpointing.save(module_sharded_state_dict(module), str(tmp))


def load_model_weights(module: Any, directory: str | Path) -> None:
    """Load weights from a torch_dist dir into ``module`` (any saved layout; resharded on load).

    Raises :class:`AdNannyMegatronError` naming the tensor when the checkpoint lacks one the model needs.
    """
    from megatron.core import dist_checkpointing

    path = Path(directory)
    if not (path / "metadata.json").is_file():
        raise AdNannyMegatronError(f"`{path}` is not a megatron dist_checkpointing directory (no metadata.json)")
    # TE/fp8 ``_extra_state`` entries carry no weights; HF-converted checkpoints do not have them.
    sd = {k: v for k, v in module_sharded_state_dict(module).items() if not k.endswith("_extra_state")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = dist_checkpointing.load(sd, str(path))
    except Exception as exc:  # dist_checkpointing raises CheckpointingException/KeyError with the key
        raise AdNannyMegatronError(f"cannot load model weights from `{path}`: {exc}") from exc
    result = module.load_state_dict(loaded, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing:
        raise AdNannyMegatronError(f"checkpoint `{path}` lacks tensors {missing[:5]} ({len(missing)} in all)")


def save_layout(module: Any) -> dict[str, Any]:
    """adnanny-ckpt's ``ParallelLayout.to_dict()`` of the running model, gathered from every rank (collective).

    Each pipeline stage reports the global decoder layers it holds (megatron numbers them from 1), so uneven
    stages and megatron's own pipeline layouts are recorded as they are, not recomputed.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    gpt = getattr(module, "module", module)
    cfg = gpt.config
    layers = [int(layer.layer_number) - 1 for layer in gpt.decoder.layers]
    mine = (ps.get_pipeline_model_parallel_rank(), layers)
    if dist.is_initialized():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
    else:
        parts = [mine]
    pp = ps.get_pipeline_model_parallel_world_size()
    stages: list[list[int]] = [[] for _ in range(pp)]
    for rank, held in parts:
        stages[rank] = sorted(set(stages[rank]) | set(held))
    return {"pp": pp, "ep": ps.get_expert_model_parallel_world_size(), "tp": ps.get_tensor_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "num_experts": int(cfg.num_moe_experts or 0),
            "num_layers": int(cfg.num_layers), "stages": stages}


def write_save_descriptor(directory: str | Path, *, spec: Any, module: Any, step: int,
                          loaded_from: str | Path | None) -> None:
    """Write adnanny-ckpt's descriptor into a save directory (every rank calls it: the layout is a collective;
    rank 0 writes). ``loaded_from``: the checkpoint the weights were loaded from (gives the HF source)."""
    from adnanny_ckpt.descriptor import training_descriptor, write_descriptor

    layout = save_layout(module)
    if _rank() != 0:
        return
    gpt = getattr(module, "module", module)
    desc = training_descriptor(
        hf_config=dict(spec.arch.raw), layout=layout, padded_vocab_size=int(spec.padded_vocab_size),
        te_names=bool(spec.use_te), mtp=bool(getattr(gpt.config, "mtp_num_layers", None)), param_dtypes={},
        step=step, loaded_from=loaded_from)
    write_descriptor(directory, desc)
