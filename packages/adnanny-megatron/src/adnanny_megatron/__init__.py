"""adnanny-megatron: the Megatron-core trainer of AdNanny (paper §4.1).

Light on import (no torch, no megatron): the names below import their machinery when called.

- :func:`transformer_config_from_hf` / :func:`build_model` — DeepSeek-V3 (MLA + hybrid dense/MoE) and
  Llama-family megatron models from an HF ``config.json`` (:mod:`adnanny_megatron.provider`);
- :class:`Sizes`, :data:`PAPER_PRESET` (PP31 x EP8 x DP8), :func:`initialize` — process groups;
- :func:`build_optimizer` — megatron's optimizer plus the §4.1.3 stub MoE optimizer;
- :class:`MegatronBackend` — adnanny-sft's ``TrainingBackend`` protocol on megatron-core;
- :func:`run_parity` / :func:`run_behaviour_check` — the §4.1.4 checks against HF transformers.
"""

from __future__ import annotations

from typing import Any

from adnanny_megatron.__about__ import __version__
from adnanny_megatron.errors import AdNannyMegatronError, HangDetected

__all__ = [
    "PAPER_PRESET",
    "AdNannyMegatronError",
    "HangDetected",
    "MegatronBackend",
    "OptimSettings",
    "Sizes",
    "TrainSettings",
    "__version__",
    "build_model",
    "build_optimizer",
    "initialize",
    "run_behaviour_check",
    "run_parity",
    "transformer_config_from_hf",
]

_LAZY = {
    "PAPER_PRESET": "adnanny_megatron.parallel",
    "Sizes": "adnanny_megatron.parallel",
    "initialize": "adnanny_megatron.parallel",
    "MegatronBackend": "adnanny_megatron.backend",
    "TrainSettings": "adnanny_megatron.backend",
    "OptimSettings": "adnanny_megatron.optim",
    "build_optimizer": "adnanny_megatron.optim",
    "build_model": "adnanny_megatron.provider",
    "transformer_config_from_hf": "adnanny_megatron.provider",
    "run_parity": "adnanny_megatron.parity",
    "run_behaviour_check": "adnanny_megatron.behaviour",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adnanny_megatron' has no attribute {name!r}")
