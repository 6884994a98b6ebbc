"""Shared fixtures: the cook sample world, a tiny DeepSeek-V3 (BF16 and our FP8 export), SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_cook.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_bf16(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_serve.tiny import build_tiny_deepseek

    return build_tiny_deepseek(tmp_path_factory.mktemp("m") / "tiny-bf16", sample_dir / "tokenizer", seed=0)


@pytest.fixture(scope="session")
def tiny_fp8(tiny_bf16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_serve.quantize import quantize_checkpoint

    out = tmp_path_factory.mktemp("m") / "tiny-fp8"
    quantize_checkpoint(tiny_bf16, out)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_fp8: Path):
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(tiny_fp8, batch_size=4)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from adnanny_ckpt.gguf import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def smol_engine(smol_dir: Path):
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(smol_dir, batch_size=8)


@pytest.fixture(scope="session")
def query_ad_rows(sample_dir: Path):
    import polars as pl

    return pl.read_parquet(sample_dir / "query_ad.parquet")


class ScriptedEngine:
    """An engine whose answers a test scripts (`answer(prompt) -> text`, `probs(prompt) -> {field: {value: p}}`).

    It tokenizes with a real tokenizer and returns token ids and top-k log-probabilities laid out as the
    transformers engine's are, so scoring, thresholds and token budgets run on the real code path. Every prompt
    it was given is kept in `.prompts`.
    """

    add_special_tokens = False

    def __init__(self, tokenizer, task, answer, probs=None):
        self.tokenizer = tokenizer
        self.task = task
        self.answer = answer
        self.probs = probs or (lambda prompt: {})
        self.prompts: list[str] = []

    def apply_chat_template(self, messages):
        from adnanny_cook.tasks import render_chat

        return render_chat(messages) + "<|im_start|>assistant\n"

    def token_strings(self, token_ids):
        return [self.tokenizer.decode([t]) for t in token_ids]

    def generate(self, prompts, params):
        import math

        from adnanny_serve.engines.base import Generation

        out = []
        for prompt in prompts:
            self.prompts.append(prompt)
            text = self.answer(prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            top = [{t: 0.0} for t in ids]
            for f, dist in self.probs(prompt).items():
                # the step where the field's value starts: where the token ids of the text with each value differ
                open_tag, close_tag = self.task.open_tag(f), self.task.close_tag(f)
                start = text.index(open_tag) + len(open_tag)
                end = text.index(close_tag, start)
                alts = {v: self.tokenizer(text[:start] + self.task.render_value(f, v) + text[end:],
                                          add_special_tokens=False)["input_ids"] for v in dist}
                seqs = list(alts.values())
                c = 0
                while all(c < len(s) for s in seqs) and len({s[c] for s in seqs}) == 1:
                    c += 1
                top[c] = {alts[v][c]: math.log(p) for v, p in dist.items() if p > 0}
            out.append(Generation(text=text, prompt_tokens=len(self.tokenizer(prompt, add_special_tokens=False)
                                                               ["input_ids"]),
                                  completion_tokens=len(ids), finish_reason="stop", token_ids=ids,
                                  logprobs=[0.0] * len(ids), top_logprobs=top if params.logprobs else None))
        return out


@pytest.fixture(scope="session")
def sample_tokenizer(sample_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sample_dir / "tokenizer")


@pytest.fixture(scope="session")
def scripted(sample_tokenizer):
    """`scripted(task, answer, probs=None)` -> a :class:`ScriptedEngine` on the sample tokenizer."""
    def make(task, answer, probs=None):
        return ScriptedEngine(sample_tokenizer, task, answer, probs)

    return make
