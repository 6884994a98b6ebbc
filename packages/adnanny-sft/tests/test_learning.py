"""The real learning test: a tiny random-init DeepSeek-V3 trained on cook's sample corpus (label-only targets,
the rows cook wrote from its golden labeling rules) learns labels it could not produce before, measured as
BACC (adnanny-eval) of parsed greedy generations on held-out rows: the corpus's eval split plus cook's golden
set, none of which was trained on.

What this CPU budget (hidden 64, 600 steps of 16 label-only rows) teaches a 4-layer model from scratch: the
output format (no parse errors) and the ad-quality label (defects such as "!!!", "{KeyWord…}", a truncated
"..." or a typo are lexical cues) -> asserted >= 0.7 (chance 0.5; the untrained model parses nothing, BACC 0).
Relevance (bad vs fair/good) is printed, not asserted (the shared fixture's test asserts it: test_fixture.py).

Why `input_loss_weight = 0.3` (an LM loss on the task input, never the system prompt): with the sample world's
word-level tokenizer a word is one id wherever it stands, so an ad is ~25 ordinary word ids, and the only
supervised token that says "defect" is one `<AdQuality>` value per row, "bad" on ~15% of rows: 400 steps of
that sparse, imbalanced signal left greedy quality at the majority class (BACC 0.497 at steps 200 and 300, 0.5
at 400). The earlier phrase-merging tokenizer passed (0.90-0.995) for a reason that was not the lexical cues:
it merged an ad's title/description into a few ad-specific ids ("ELDANIO!!!"), and 120 of the 149 held-out
eval rows show an ad that also occurs in training (the split groups by query, not ad), so the label was
memorised per ad id. The input loss makes the model model the ad's words, defect tokens included; measured
with it: quality 0.497 (step 200) / 0.497 (300) / 0.791 (400), parse errors 0. Since the sample tokenizer
lowercases (session 4) an all-caps title is seen only through its "!!!": 400 steps gave 0.692, 600 give 0.896.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from adnanny_sft.config import SFTConfig
from adnanny_sft.data import read_rows
from adnanny_sft.evaluation import TaskMetricEvaluator
from adnanny_sft.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*did not match any targeted module:RuntimeWarning")


def _view_bacc(preds: list[dict], view_name: str) -> float:
    from adnanny_eval.metrics import balanced_accuracy
    from adnanny_eval.views import get_view, to_positive

    view = get_view(view_name)
    gold = to_positive([str(p["gold"][view.field]) for p in preds], view)
    pred = np.array([(not g) if p["pred"] is None else bool(to_positive([str(p["pred"][view.field])], view)[0])
                     for p, g in zip(preds, gold, strict=True)])
    return float(balanced_accuracy(gold, pred, warn=False))


def test_label_bacc_rises_well_above_chance_on_held_out_rows(sample_dir, tokenizer, tmp_path) -> None:
    held = [r for r in read_rows(sample_dir / "corpus", split="eval") if r["task"] == "query_ad" and r["mode"] == "label"]
    held += [dict(r, id=f"golden-{r['id']}") for r in
             (json.loads(x) for x in (sample_dir / "golden" / "query_ad.jsonl").read_text().splitlines())]
    trained_inputs = {r["input"] for r in read_rows(sample_dir / "corpus", split="train")}
    assert not any(json.dumps(r["input"], sort_keys=True, ensure_ascii=False) in trained_inputs
                   if isinstance(r["input"], dict) else r["input"] in trained_inputs for r in held)
    ev = TaskMetricEvaluator(tokenizer, held, max_rows_per_task=None, max_new_tokens=20, batch_size=64)

    cfg = SFTConfig(corpus=str(sample_dir / "corpus"), tokenizer=str(sample_dir / "tokenizer"),
                    model="tiny-deepseek-v3", tiny_hidden_size=64, tasks=["query_ad"], target_forms=["label"],
                    max_steps=600, batch_size=16, lr=5e-3, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.3,
                    task_weighting=False, output_dir=str(tmp_path / "run"), progress=False, tensorboard=False,
                    export=False, save_every=10**6, seed=0, threads=1,
                    # natural class mix, plain batches, no extra passes; the input LM loss: see the docstring
                    class_balance="none", share_prefix=False, evaluate=False, threshold_method="none",
                    input_loss_weight=0.3)
    before: dict[str, float] = {}

    def measure_start(step: int, backend) -> None:
        if step == 1:  # after one step the model still emits no parseable label
            few = TaskMetricEvaluator(tokenizer, held[:64], max_rows_per_task=None, max_new_tokens=20, batch_size=64)
            before["quality"] = _view_bacc(few.predict(backend.model, "query_ad"), "quality")

    result = train(cfg, on_step=measure_start)
    from adnanny_sft.checkpoint import latest_checkpoint
    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.models import resolve_model

    spec, _ = resolve_model("tiny-deepseek-v3", str(sample_dir / "tokenizer"), tiny_hidden_size=64)
    backend = build_hf_backend(spec)
    backend.load(latest_checkpoint(result.output_dir))
    preds = ev.predict(backend.model, "query_ad")
    parse_errors = sum(p["pred"] is None for p in preds) / len(preds)
    quality = _view_bacc(preds, "quality")
    print(f"held-out rows {len(preds)}, parse errors {parse_errors:.2f}, quality BACC {before['quality']:.3f} -> "
          f"{quality:.3f}, relevance BACC {_view_bacc(preds, 'bad'):.3f}")
    assert before["quality"] <= 0.5
    assert parse_errors <= 0.05
    assert quality >= 0.7
