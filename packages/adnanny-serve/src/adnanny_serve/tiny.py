"""Tiny models for tests, benchmarks and demos, built from the real formats (no weights downloaded).

``build_tiny_deepseek``: a random-weight DeepSeek-V3 (MLA, 1 dense + 3 MoE layers; adnanny-ckpt's
``tiny_deepseek_v3_config`` at ``hidden_size``) written as a real HF checkpoint next to adnanny-cook's sample
byte-level BPE tokenizer (ChatML template, task tags as single tokens). Random weights do not follow the
tag format — labeling with it exercises the pipeline and the parse-error path; SmolLM2-135M-Instruct
(``adnanny_ckpt.gguf.smollm2_hf_dir``) is the model that answers in tags (given worked examples: ``--few-shot``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["build_tiny_deepseek"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_tiny_deepseek(out_dir: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str], *,
                        hidden_size: int = 128, seed: int = 0, dtype: str = "bf16", num_hidden_layers: int = 4
                        ) -> Path:
    """Write a tiny DeepSeek-V3 checkpoint (``dtype`` "bf16" or "fp8") with the tokenizer at ``tokenizer_dir``."""
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_deepseek_v3_config(hidden_size=hidden_size, vocab_size=len(tok), fp8=(dtype == "fp8"),
                                  num_hidden_layers=num_hidden_layers)
    out = Path(out_dir)
    write_synthetic_checkpoint(out, cfg, dtype=dtype, seed=seed)
    for name in _TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copy2(src, out / name)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    for fname in ("config.json", "generation_config.json"):
        p = out / fname
        data = json.loads(p.read_text())
        data.update(ids)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, p)
    return out
