"""Validation metrics M_t ∈ [0, 1] for the task weights of eq. (6)–(7), and the learning checks, pluggable.

An evaluator is any callable ``evaluator(backend, step=...) -> {task: M_t}``. The built-in one
(:class:`TaskMetricEvaluator`) scores each task of a held-out set:

* **labeling tasks** — greedy generation on the task's prompt (label-only form by default: short, and the
  form adnanny-serve's cheap mode uses), parsed with the task's strict parser (adnanny_cook.tasks), then
  BACC from adnanny_eval (a fraction) on the task's own defect view: its ``primary_field`` with its
  ``defect_values`` (query_ad: bad vs fair/good; ad_user: 0 vs 1–3), read from the task definition, never
  from a table here. An output that does not parse is never given a label: it counts as the wrong side of its
  gold label. If the held-out set has a single gold class BACC is undefined and the accuracy is used (logged
  as ``metric = "acc"``); a task without defect values uses exact-match accuracy of all label fields.

  Beside M_t each evaluation records what tells whether the model *learned* anything: the predicted-class
  distribution of the primary field (a printed and logged warning when one class takes more than
  ``collapse_limit`` of the rows — the "one class for every row" failure), the parse-error rate, and
  the forward-only score P(non-defect) (``adnanny_sft.scoring``) with its AUC and the BACC at a threshold
  calibrated on these rows (``adnanny_sft.calibration``): a model whose greedy labels collapse can still rank
  rows, and the threshold is what the exported model applies.
* **generation tasks** (and public data) — exp(−mean target NLL) of the reference target, i.e. 1 / perplexity,
  which only needs ``per_sample_nll`` and therefore works with any backend.

Generation needs the HF backend's model (``backend.model``); another backend plugs its own evaluator via
``task_evaluator = "package.module:factory"`` (the factory gets ``tokenizer`` and ``rows`` keywords).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from adnanny_sft.errors import ConfigError, DataError

__all__ = ["TaskEvaluator", "TaskMetricEvaluator", "defect_view_of", "generate_texts", "load_evaluator"]


class TaskEvaluator(Protocol):
    def __call__(self, backend: Any, *, step: int) -> dict[str, float]: ...


def defect_view_of(spec: Any) -> Any:
    """adnanny-eval's generic defect view of a task's primary field (None when the task has none)."""
    from adnanny_eval.views import get_view

    field = getattr(spec, "primary_field", None)
    if field is None:
        return None
    return get_view("defect", defect=list(spec.defect_values[field]), field=field,
                    values=list(spec.label_fields[field]))


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


def _obj(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


class TaskMetricEvaluator:
    """The built-in evaluator (module docstring). ``rows`` are corpus rows (``task``, ``input``, ``labels``,
    ``messages``, ``target``); at most ``max_rows_per_task`` of each task are used (the first ones, so every
    evaluation scores the same rows). ``specs`` are the task definitions (default: the registered tasks);
    ``score`` adds the forward-only score, its AUC and the calibrated-threshold BACC to the details."""

    def __init__(self, tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, mode: str = "label",
                 max_new_tokens: int = 48, batch_size: int = 16, max_rows_per_task: int | None = 64,
                 specs: Mapping[str, Any] | None = None, score: bool = True, collapse_limit: float = 0.9,
                 threshold_method: str = "max_bacc", verbose: bool = False) -> None:
        from adnanny_cook.tasks import get_task

        if mode not in ("label", "reasoning"):
            raise ConfigError(f"`eval_mode` must be 'label' or 'reasoning'; got {mode!r}.")
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.score = score
        self.collapse_limit = collapse_limit
        self.threshold_method = threshold_method
        self.verbose = verbose
        self.specs: dict[str, Any] = dict(specs or {})
        self.label_rows: dict[str, list[dict[str, Any]]] = {}
        self.score_rows: dict[str, list[dict[str, Any]]] = {}
        seen_inputs: dict[str, set[str]] = {}
        for row in rows:
            task = str(row["task"])
            if task not in self.specs:
                try:
                    self.specs[task] = get_task(task)
                except Exception:
                    self.specs[task] = None
            spec = self.specs[task]
            kind = spec.kind if spec is not None else "generation"
            bucket = self.label_rows if kind == "label" else self.score_rows
            lst = bucket.setdefault(task, [])
            if kind == "label":  # one row per input: the corpus holds each input in both target forms
                key = row["input"] if isinstance(row["input"], str) else json.dumps(row["input"], sort_keys=True)
                if key in seen_inputs.setdefault(task, set()):
                    continue
                seen_inputs[task].add(key)
            if max_rows_per_task is None or len(lst) < max_rows_per_task:
                lst.append(dict(row))
        if not self.label_rows and not self.score_rows:
            raise DataError("the evaluator got no held-out rows; set `eval_corpus` or keep an eval split.")
        self.last_details: dict[str, dict[str, Any]] = {}

    def predict(self, model: Any, task: str) -> list[dict[str, Any]]:
        """Per held-out row of a labeling task: gold labels, parsed labels (or None) and the raw text."""
        spec = self.specs[task]
        rows = self.label_rows[task]
        prompts = [spec.render_messages(_obj(r["input"]), self.mode) for r in rows]
        texts = generate_texts(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                               batch_size=self.batch_size)
        preds = []
        for r, text in zip(rows, texts, strict=True):
            gold = spec.validate_labels({k: v for k, v in _obj(r["labels"]).items() if k in spec.label_fields})
            try:
                parsed: dict[str, Any] | None = spec.parse(text, mode=self.mode).labels
            except Exception:  # ParseError family: no label is invented
                parsed = None
            preds.append({"id": r["id"], "gold": gold, "pred": parsed, "raw": text})
        return preds

    def label_metric(self, task: str, preds: Sequence[Mapping[str, Any]]) -> tuple[float, str, float]:
        """(M_t, metric name, parse-error rate) for one labeling task's predictions."""
        import numpy as np

        from adnanny_eval.metrics import balanced_accuracy
        from adnanny_eval.views import to_positive

        n = len(preds)
        errors = sum(p["pred"] is None for p in preds) / max(1, n)
        view = defect_view_of(self.specs[task])
        if view is not None:
            gold = to_positive([str(p["gold"][view.field]) for p in preds], view)
            pred = np.array([(not g) if p["pred"] is None else bool(to_positive([str(p["pred"][view.field])], view)[0])
                             for p, g in zip(preds, gold, strict=True)], dtype=bool)
            if gold.all() or not gold.any():
                return float((gold == pred).mean()), "acc", errors
            value = balanced_accuracy(gold, pred, warn=False)
            return float(value), "bacc", errors
        hits = sum(p["pred"] is not None and p["pred"] == p["gold"] for p in preds)
        return hits / max(1, n), "exact_match", errors

    def score_details(self, model: Any, task: str) -> dict[str, Any]:
        """Forward-only scores of the task's rows: AUC and the BACC at a threshold calibrated on them."""
        from adnanny_eval.metrics import roc_auc

        from adnanny_sft.calibration import bacc_at, calibrate_threshold
        from adnanny_sft.scoring import score_rows

        spec = self.specs[task]
        field = spec.primary_field
        rows = self.label_rows[task]
        _, scores = score_rows(model, self.tokenizer, spec, [_obj(r["input"]) for r in rows], mode=self.mode
                               if self.mode == "label" else "label", batch_size=self.batch_size)
        defect = set(spec.defect_values[field])
        is_defect = [spec.map_label(field, _obj(r["labels"])[field]) in defect for r in rows]
        if all(is_defect) or not any(is_defect):
            return {"score_mean": sum(scores) / len(scores)}
        thr = calibrate_threshold(scores, is_defect, self.threshold_method)
        return {"auc": float(roc_auc([not d for d in is_defect], scores, warn=False)),
                "threshold": thr.value, "score_bacc": thr.bacc, "bacc_at_half": bacc_at(scores, is_defect, 0.5),
                "score_pred_defect_rate": thr.pred_defect_rate, "gold_defect_rate": thr.gold_defect_rate}

    def __call__(self, backend: Any, *, step: int) -> dict[str, float]:
        from adnanny_sft.calibration import class_distribution, collapse_message
        from adnanny_sft.formatting import collate, format_rows, pad_token_id

        metrics: dict[str, float] = {}
        self.last_details = {}
        model = getattr(backend, "model", None)
        if self.label_rows and model is None:
            raise ConfigError("the built-in evaluator generates text and needs `backend.model` (an HF model); "
                              "plug a backend-specific evaluator via `task_evaluator`.")
        for task in sorted(self.label_rows):
            spec = self.specs[task]
            preds = self.predict(model, task)
            value, name, err = self.label_metric(task, preds)
            metrics[task] = value
            d: dict[str, Any] = {"metric": name, "value": value, "parse_error_rate": err, "n": len(preds)}
            field = spec.primary_field or spec.field_order[0]
            pred_vals = [None if p["pred"] is None else p["pred"].get(field) for p in preds]
            d["pred_distribution"] = class_distribution(pred_vals)
            d["collapse_warning"] = collapse_message(pred_vals, limit=self.collapse_limit,
                                                     what=f"step {step}, task `{task}` field `{field}`")
            if d["collapse_warning"]:  # printed, not warnings.warn: short test runs collapse by design
                print(f"adnanny-sft: warning: {d['collapse_warning']}", file=sys.stderr, flush=True)
            if self.score and spec.primary_field is not None:
                d.update(self.score_details(model, task))
            self.last_details[task] = d
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
        if self.verbose:
            print(self.summary(step), file=sys.stderr, flush=True)
        return metrics

    def summary(self, step: int) -> str:
        """One line per task of the last evaluation (what ``adnanny-sft train`` prints)."""
        lines = []
        for task, d in sorted(self.last_details.items()):
            if d["metric"] == "inv_ppl":
                lines.append(f"[eval step {step}] {task}: 1/ppl {d['value']:.3f} (n={d['n']})")
                continue
            dist = ", ".join(f"{k} {v:.0%}" for k, v in d.get("pred_distribution", {}).items())
            extra = ""
            if "auc" in d:
                extra = (f"; score AUC {d['auc']:.3f}, BACC {d['score_bacc']:.1%} at calibrated threshold "
                         f"{d['threshold']:.3f}")
            lines.append(f"[eval step {step}] {task}: {d['metric'].upper()} {d['value']:.1%} (n={d['n']}, parse "
                         f"errors {d['parse_error_rate']:.0%}); predicted {dist}{extra}")
        return "\n".join(lines)


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
