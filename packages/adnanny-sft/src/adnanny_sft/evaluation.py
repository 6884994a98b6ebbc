"""Validation metrics M_t ∈ [0, 1] for the task weights of eq. (6)–(7): a pluggable evaluator.

An evaluator is any callable ``evaluator(backend, step=...) -> {task: M_t}``. The built-in one
(:class:`TaskMetricEvaluator`) scores each task of a held-out set:

* **labeling tasks** — greedy generation on the task's prompt (label-only form by default: short, and the
  form adnanny-serve's cheap mode uses), parsed with the task's strict parser (adnanny_cook.tasks), then
  BACC from adnanny_eval (a fraction) on the paper's defect view: ``query_ad`` -> view ``bad`` (bad vs
  fair/good), ``ad_user`` -> view ``ad-user`` (0 vs 1–3). Other labeling tasks: exact-match accuracy of all
  label fields. An output that does not parse is never given a label: it counts as the wrong side of its gold
  label (BACC) or as a miss (accuracy). If the held-out set has a single gold class BACC is undefined and the
  accuracy is used (logged as ``metric = "acc"``).
* **generation tasks** (and public data) — exp(−mean target NLL) of the reference target, i.e. 1 / perplexity,
  which only needs ``per_sample_nll`` and therefore works with any backend.

Generation needs the HF backend's model (``backend.model``); another backend plugs its own evaluator via
``task_evaluator = "package.module:factory"`` (the factory gets ``tokenizer`` and ``rows`` keywords).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from adnanny_sft.errors import ConfigError, DataError

__all__ = ["TASK_VIEWS", "TaskEvaluator", "TaskMetricEvaluator", "generate_texts", "load_evaluator"]

TASK_VIEWS = {"query_ad": "bad", "ad_user": "ad-user"}


class TaskEvaluator(Protocol):
    def __call__(self, backend: Any, *, step: int) -> dict[str, float]: ...


def generate_texts(model: Any, tokenizer: Any, messages: Sequence[Sequence[Mapping[str, str]]], *,
                   max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions of chat prompts with an HF causal LM (left-padded batches, stops at end of turn)."""
    import torch

    from adnanny_sft.formatting import pad_token_id, prompt_ids

    pad = pad_token_id(tokenizer)
    stops = {t for t in (getattr(tokenizer, "eos_token_id", None),) if isinstance(t, int)}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if isinstance(im_end, int):
        stops.add(im_end)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for k in range(0, len(messages), batch_size):
            chunk = [prompt_ids(tokenizer, m) for m in messages[k:k + batch_size]]
            t = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), t), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), t), dtype=torch.long)
            for i, c in enumerate(chunk):
                ids[i, t - len(c):] = torch.tensor(c)
                attn[i, t - len(c):] = 1
            with torch.no_grad():
                gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=sorted(stops) or None, pad_token_id=pad)
            for row in gen[:, t:].tolist():
                cut = next((j for j, tok in enumerate(row) if tok in stops), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=False))
    finally:
        model.train(was_training)
    return out


class TaskMetricEvaluator:
    """The built-in evaluator (module docstring). ``rows`` are corpus rows (``task``, ``input``, ``labels``,
    ``messages``, ``target``); at most ``max_rows_per_task`` of each task are used (the first ones, so every
    evaluation scores the same rows)."""

    def __init__(self, tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, mode: str = "label",
                 max_new_tokens: int = 48, batch_size: int = 16, max_rows_per_task: int | None = 64) -> None:
        from adnanny_cook.tasks import get_task

        if mode not in ("label", "reasoning"):
            raise ConfigError(f"`eval_mode` must be 'label' or 'reasoning'; got {mode!r}.")
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.label_rows: dict[str, list[dict[str, Any]]] = {}
        self.score_rows: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            task = str(row["task"])
            try:
                kind = get_task(task).kind
            except Exception:
                kind = "generation"
            bucket = self.label_rows if kind == "label" else self.score_rows
            lst = bucket.setdefault(task, [])
            if max_rows_per_task is None or len(lst) < max_rows_per_task:
                lst.append(dict(row))
        if not self.label_rows and not self.score_rows:
            raise DataError("the evaluator got no held-out rows; set `eval_corpus` or keep an eval split.")
        self.last_details: dict[str, dict[str, Any]] = {}

    def predict(self, model: Any, task: str) -> list[dict[str, Any]]:
        """Per held-out row of a labeling task: gold labels, parsed labels (or None) and the raw text."""
        from adnanny_cook.tasks import get_task

        spec = get_task(task)
        rows = self.label_rows[task]
        prompts = [spec.render_messages(json.loads(r["input"]) if isinstance(r["input"], str) else r["input"],
                                        self.mode) for r in rows]
        texts = generate_texts(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                               batch_size=self.batch_size)
        preds = []
        for r, text in zip(rows, texts, strict=True):
            gold = spec.validate_labels(json.loads(r["labels"]) if isinstance(r["labels"], str) else r["labels"])
            try:
                parsed: dict[str, Any] | None = spec.parse(text).labels
            except Exception:  # ParseError family: no label is invented
                parsed = None
            preds.append({"id": r["id"], "gold": gold, "pred": parsed, "raw": text})
        return preds

    @staticmethod
    def label_metric(task: str, preds: Sequence[Mapping[str, Any]]) -> tuple[float, str, float]:
        """(M_t, metric name, parse-error rate) for one labeling task's predictions."""
        import numpy as np

        from adnanny_eval.metrics import balanced_accuracy
        from adnanny_eval.views import get_view, to_positive

        n = len(preds)
        errors = sum(p["pred"] is None for p in preds) / max(1, n)
        view_name = TASK_VIEWS.get(task)
        if view_name is not None:
            view = get_view(view_name)
            gold = to_positive([str(p["gold"][view.field]) for p in preds], view)
            pred = np.array([(not g) if p["pred"] is None else bool(to_positive([str(p["pred"][view.field])], view)[0])
                             for p, g in zip(preds, gold, strict=True)], dtype=bool)
            if gold.all() or not gold.any():
                return float((gold == pred).mean()), "acc", errors
            value = balanced_accuracy(gold, pred, warn=False)
            return float(value), "bacc", errors
        hits = sum(p["pred"] is not None and p["pred"] == p["gold"] for p in preds)
        return hits / max(1, n), "exact_match", errors

    def __call__(self, backend: Any, *, step: int) -> dict[str, float]:
        from adnanny_sft.formatting import collate, format_rows, pad_token_id

        metrics: dict[str, float] = {}
        self.last_details = {}
        model = getattr(backend, "model", None)
        if self.label_rows and model is None:
            raise ConfigError("the built-in evaluator generates text and needs `backend.model` (an HF model); "
                              "plug a backend-specific evaluator via `task_evaluator`.")
        for task in sorted(self.label_rows):
            preds = self.predict(model, task)
            value, name, err = self.label_metric(task, preds)
            metrics[task] = value
            self.last_details[task] = {"metric": name, "value": value, "parse_error_rate": err, "n": len(preds)}
        for task in sorted(self.score_rows):
            examples, _ = format_rows(self.tokenizer, self.score_rows[task], max_seq_len=1 << 20)
            nll: list[float] = []
            for k in range(0, len(examples), self.batch_size):
                chunk = examples[k:k + self.batch_size]
                batch = collate(chunk, pad_id=pad_token_id(self.tokenizer), sample_weights=[0.0] * len(chunk))
                nll.extend(float(x) for x in backend.per_sample_nll(batch))
            finite = [x for x in nll if math.isfinite(x)]
            value = math.exp(-sum(finite) / len(finite)) if finite else 0.0
            metrics[task] = value
            self.last_details[task] = {"metric": "inv_ppl", "value": value, "n": len(finite)}
        return metrics


def load_evaluator(spec: str, *, tokenizer: Any, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> Callable[..., Any]:
    """``"builtin"`` -> :class:`TaskMetricEvaluator`; ``"pkg.module:factory"`` -> ``factory(tokenizer=, rows=, **kw)``."""
    if spec == "builtin":
        return TaskMetricEvaluator(tokenizer, rows, **kwargs)
    if ":" not in spec:
        raise ConfigError(f"`task_evaluator` must be 'builtin' or 'package.module:factory'; got {spec!r}.")
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"`task_evaluator` = {spec!r} cannot be imported: {e}.") from e
    return factory(tokenizer=tokenizer, rows=rows, **kwargs)
