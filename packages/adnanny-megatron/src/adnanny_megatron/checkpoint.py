"""torch_dist checkpoint helpers: atomic multi-rank directories and weight-only loads.

A dist_checkpointing save is written by every rank into one directory. To keep a previous checkpoint
intact if a save dies half-way, all ranks write into ``.<name>.tmp-<step>`` next to the target and rank 0
renames it into place after a barrier (the old directory is removed only after the rename succeeded).
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

__all__ = ["atomic_dist_dir", "load_model_weights", "module_sharded_state_dict", "save_model_weights"]


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
