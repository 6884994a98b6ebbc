"""A byte-level BPE tokenizer for tiny models, trained on the sample world's text.

The task tags (``<think>``, ``<Label>``, ``</AdQuality>`` …) and the ChatML markers are added tokens, so each is
one id and never split. ChatML markers are *special* (skipped by ``skip_special_tokens=True``); the task tags are
added but NOT special, on purpose: a server decoding with ``skip_special_tokens=True`` must still see the tags the
parser needs. The chat template marks assistant turns with ``{% generation %}`` so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives a loss mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from adnanny_cook.corpus import atomic_write_bytes
from adnanny_cook.errors import ConfigError
from adnanny_cook.tasks import CONTROL_TAGS

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "task_tag_tokens", "train_tokenizer"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def task_tag_tokens() -> list[str]:
    """Opening and closing form of every control tag (the registry's `CONTROL_TAGS`: one list, so a new task's
    tags are added tokens here and defanged in prompts without a second edit)."""
    return [s for tag in sorted(CONTROL_TAGS) for s in (f"<{tag}>", f"</{tag}>")]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8192, *,
                    lowercase: bool = True) -> Path:
    """Train and write ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``.

    ``lowercase`` (default): a ``Lowercase`` normalizer runs before pre-tokenization, so "Air Fryer" in an ad
    title and "air fryer" in a query are the same two ids. WHY the default: a from-scratch model has no notion
    that two ids are one word in two cases; with queries in lower case and titles in Title Case, a cased
    vocabulary left query and title with no id in common: the tiny fixture recipe (label-only form) reached
    0.65 golden relevance BACC [0.60, 0.70] (AUC 0.67) cased and 0.80 [0.75, 0.86] (AUC 0.88) with this
    normalizer on the same vocabulary (adnanny-sft README, session-4 pilots C1 and C4).
    The task tags and ChatML markers are added tokens matched before normalisation, so they stay atomic and
    cased; label values parse case-insensitively. The cost: decoded text is lower case, and a case-only cue
    (an all-caps title) is invisible to the model; the sample world's all-caps defect also adds "!!!".
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if not 256 < vocab_size <= 65536:
        raise ConfigError(f"`vocab_size` must be in (256, 65536], got {vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    # Word-level pre-tokenization (GPT-2's regex: a word with its leading space, a run of digits, a run of
    # punctuation): merges never cross a word boundary, so a word is the same id wherever it appears. An earlier
    # version let phrases merge across spaces and newlines to reach 8k tokens; then "personal loan" in a query,
    # "Personal Loan\n" in a title and "personal loan " in a description were three unrelated ids, and no tiny
    # model learned query-ad relevance (matching the two sides) from a few thousand rows (adnanny-sft README,
    # pilots L1-L4). The vocabulary ends near the world's distinct word count (~5k), below `vocab_size`.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tags = task_tag_tokens()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(tags), min_frequency=1,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in tags])
    atomic_write_bytes(out / "tokenizer.json", tok.to_str().encode())
    added = {}
    for t in list(SPECIAL_TOKENS) + tags:
        added[str(tok.token_to_id(t))] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": t in SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "unk_token": None,
        "additional_special_tokens": ["<|endoftext|>", "<|im_start|>"],
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }
    atomic_write_bytes(out / "tokenizer_config.json", json.dumps(config, indent=2).encode())
    smap = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>",
            "additional_special_tokens": ["<|endoftext|>", "<|im_start|>"]}
    atomic_write_bytes(out / "special_tokens_map.json", json.dumps(smap, indent=2).encode())
    return out
