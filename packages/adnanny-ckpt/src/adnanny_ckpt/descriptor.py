"""The checkpoint descriptor ``adnanny_ckpt.json``: one schema for every megatron checkpoint this project writes.

Two writers produce it:

* :func:`adnanny_ckpt.hf2mcore.hf_to_mcore` (``saved_by = "adnanny-ckpt"``): next to ``release/`` or
  ``iter_XXXXXXX/``, with the per-rank files and their checksums;
* adnanny-megatron's ``MegatronBackend.save`` (``saved_by = "adnanny-megatron"``), through
  :func:`training_descriptor` / :func:`write_descriptor`: inside the saved directory itself (the iteration folder
  is ``"."``), during or after training, in whatever TP/PP/EP layout it trained with.

What a reader needs and finds here (so nothing is passed by hand to ``mcore-to-hf``): the HF ``config.json`` the
model was built from (-> :class:`~adnanny_ckpt.names.ModelSpec`), the parallel layout, the padded vocabulary
and the padding rule, TE or local naming, whether an MTP module is stored, the folder holding the checkpoint
(``iteration_dir``) and the HF source directory (``source``; ``None`` for a model trained from random
initialisation, then ``mcore-to-hf`` needs ``--tokenizer``) with each source tensor's stored dtype
(``hf_dtypes``: FP8 or BF16/FP32, read from the source's headers when it was converted).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adnanny_ckpt.errors import CheckpointFormatError

__all__ = ["DESCRIPTOR_NAME", "DESCRIPTOR_FORMAT", "find_descriptor", "training_descriptor", "write_descriptor",
           "vocab_rule_for"]

DESCRIPTOR_NAME = "adnanny_ckpt.json"
DESCRIPTOR_FORMAT = "adnanny-ckpt/mcore"


def find_descriptor(path: str | os.PathLike[str]) -> Path | None:
    """``adnanny_ckpt.json`` of a checkpoint: in ``path`` itself or its parent (``path`` = an iteration dir)."""
    p = Path(path)
    for cand in (p / DESCRIPTOR_NAME, p.parent / DESCRIPTOR_NAME):
        if cand.is_file():
            return cand
    return None


def vocab_rule_for(vocab: int, padded: int, tp: int, preferred: int | None = None) -> int:
    """The ``make_vocab_size_divisible_by`` that pads ``vocab`` to ``padded`` at ``tp`` (preferred one first).

    Why: a model built by adnanny-megatron only knows its padded size; recording the rule lets the next loader
    (``provider.checkpoint_vocab_rule``) rebuild the same padding.
    """
    from adnanny_ckpt.names import VOCAB_DIVISIBLE_BY, padded_vocab_size

    for rule in [r for r in (preferred, VOCAB_DIVISIBLE_BY, 64, 32, 16, 8, 4, 2, 1) if r]:
        if padded_vocab_size(vocab, rule, tp) == padded:
            return rule
    raise CheckpointFormatError(
        f"no `make_vocab_size_divisible_by` pads vocabulary {vocab} to {padded} rows at tp={tp}")


def source_facts(weights_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Source facts carried over from the descriptor of the checkpoint a model was loaded from.

    ``weights_dir``: what the backend loaded (an hf_to_mcore iteration dir, or an earlier training save);
    returns ``source``, ``hf_dtypes``, ``hf_block``, ``make_vocab_size_divisible_by`` (empty for random init).
    """
    if weights_dir is None:
        return {}
    d = find_descriptor(weights_dir)
    if d is None:
        return {}
    m = json.loads(d.read_text())
    return {"source": m.get("source"), "hf_dtypes": m.get("hf_dtypes"), "hf_block": m.get("hf_block"),
            "make_vocab_size_divisible_by": (m.get("options") or {}).get("make_vocab_size_divisible_by")}


def training_descriptor(
    *,
    hf_config: dict[str, Any],
    layout: dict[str, Any],
    padded_vocab_size: int,
    te_names: bool,
    mtp: bool,
    param_dtypes: dict[str, str],
    step: int,
    loaded_from: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The descriptor a training save writes (schema of the module docstring; ``iteration_dir`` = ``"."``).

    ``layout``: :meth:`ParallelLayout.to_dict` of the layout trained with; ``loaded_from``: the checkpoint the
    weights were loaded from (its descriptor gives the HF source), ``None`` for random initialisation.
    """
    from adnanny_ckpt.layout import ParallelLayout
    from adnanny_ckpt.names import model_spec_from_hf_config

    spec = model_spec_from_hf_config(hf_config)
    lay = ParallelLayout.from_dict(layout)  # validates
    src = source_facts(loaded_from)
    rule = vocab_rule_for(spec.vocab_size, padded_vocab_size, lay.tp, src.get("make_vocab_size_divisible_by"))
    source = src.get("source")
    return {
        "format": DESCRIPTOR_FORMAT, "format_version": 1, "saved_by": "adnanny-megatron", "complete": True,
        "fingerprint": f"adnanny-megatron-step-{step}", "step": step, "iteration_dir": ".",
        "source": source, "hf_dtypes": src.get("hf_dtypes"), "hf_block": src.get("hf_block"),
        "loaded_from": None if loaded_from is None else str(Path(loaded_from).resolve()),
        "options": {"ckpt_format": "torch_dist", "te_names": te_names, "make_vocab_size_divisible_by": rule,
                    "iteration": step, "pp": lay.pp, "ep": lay.ep, "tp": lay.tp, "dp": lay.dp},
        "layout": lay.to_dict(), "hf_config": hf_config, "padded_vocab_size": padded_vocab_size,
        "mtp_copied": mtp, "param_dtypes": param_dtypes, "shared_hf_tensors": _shared(spec) if mtp else [],
        "ranks": {},
    }


def _shared(spec: Any) -> list[list[str]]:
    from adnanny_ckpt.names import mtp_shared_hf_names

    return [list(x) for x in mtp_shared_hf_names(spec)]


def write_descriptor(directory: str | os.PathLike[str], descriptor: dict[str, Any]) -> Path:
    """Write ``directory/adnanny_ckpt.json`` atomically (temp file, fsync, rename)."""
    from adnanny_ckpt.safetensors_io import atomic_write_json

    path = Path(directory) / DESCRIPTOR_NAME
    atomic_write_json(path, descriptor)
    return path
