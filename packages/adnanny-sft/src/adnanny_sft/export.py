"""What an exported model directory says about itself: ``adnanny_model.json`` and ``tasks/<name>.toml``.

``adnanny_model.json`` (read by adnanny-serve's ``label`` and by anyone who picks the model up)::

    {"tasks": {"query_ad": {"hash": "<sha256 of the task definition>", "field": "label", "defect": ["bad"],
                            "threshold": 0.62, "threshold_method": "max_bacc", "val_bacc": 0.81, ...}},
     "base_model": "tiny-deepseek-v3", "corpus": "sample/corpus", ...}

A prediction of a task's primary ``field`` is a defect iff ``score = P(non-defect) < threshold``. The threshold
is fitted on the validation split (``calibrate_tasks``) from forward-only scores (``adnanny_sft.scoring``), so
the model ships with the decision rule it was validated under. ``tasks/<name>.toml`` are the exact (selected)
task definitions the model was trained on — its prompts and tags — written by cook's ``save_task``, so a model
trained on relevance-only ``query_ad`` is served with the relevance-only prompt, and the ``hash`` lets a reader
refuse a threshold calibrated under another definition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MODEL_MANIFEST", "calibrate_tasks", "read_model_manifest", "write_model_manifest"]

MODEL_MANIFEST = "adnanny_model.json"


def _obj(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def calibrate_tasks(model: Any, tokenizer: Any, specs: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *,
                    method: str = "max_bacc", max_rows: int = 0, batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """Per labeling task with a primary field: the threshold fitted on its validation ``rows`` (one per input).

    Tasks whose validation rows hold a single gold class get no threshold (nothing to fit); ``max_rows`` caps
    the rows per task (0 = all).
    """
    from adnanny_eval.metrics import roc_auc

    from adnanny_sft.calibration import calibrate_threshold, collapse_message
    from adnanny_sft.scoring import score_rows

    if model is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(specs):
        spec = specs[task]
        field = getattr(spec, "primary_field", None)
        if spec is None or spec.kind != "label" or field is None:
            continue
        seen: set[str] = set()
        picked: list[Mapping[str, Any]] = []
        for r in rows:
            if r["task"] != task:
                continue
            key = r["input"] if isinstance(r["input"], str) else json.dumps(r["input"], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            picked.append(r)
            if max_rows and len(picked) >= max_rows:
                break
        if not picked:
            continue
        defect = set(spec.defect_values[field])
        gold = [spec.map_label(field, _obj(r["labels"])[field]) for r in picked]
        is_defect = [g in defect for g in gold]
        if all(is_defect) or not any(is_defect):
            continue
        _, scores = score_rows(model, tokenizer, spec, [_obj(r["input"]) for r in picked], field=field,
                               batch_size=batch_size)
        th = calibrate_threshold(scores, is_defect, method)
        pred = ["defect" if s < th.value else "non-defect" for s in scores]
        out[task] = {"hash": spec.hash, "field": field, "defect": sorted(map(str, defect)) if not all(
                         isinstance(d, int) for d in defect) else sorted(defect),
                     "threshold": th.value, "threshold_method": method, "val_bacc": th.bacc,
                     "val_auc": float(roc_auc([not d for d in is_defect], scores, warn=False)), "n": th.n,
                     "gold_defect_rate": th.gold_defect_rate, "pred_defect_rate": th.pred_defect_rate,
                     "warning": collapse_message(pred, what=f"task `{task}` at its threshold")}
    return out


def write_model_manifest(model_dir: str | Path, specs: Mapping[str, Any], thresholds: Mapping[str, Mapping[str, Any]],
                         *, base_model: str, corpus: str, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``tasks/<name>.toml`` for every task and ``adnanny_model.json`` (atomic); returns the JSON path."""
    from adnanny_cook.corpus import atomic_write_bytes
    from adnanny_cook.tasks import save_task

    d = Path(model_dir)
    tasks: dict[str, Any] = {}
    for name in sorted(specs):
        spec = specs[name]
        if spec is None:
            continue
        save_task(spec, d)
        field = getattr(spec, "primary_field", None)
        entry: dict[str, Any] = {"hash": spec.hash, "field": field, "labels": list(spec.label_fields),
                                 "defect": list(spec.defect_values.get(field, ())) if field else []}
        entry.update({k: v for k, v in thresholds.get(name, {}).items() if k not in ("warning",)})
        tasks[name] = entry
    manifest = {"tasks": tasks, "base_model": base_model, "corpus": corpus, **dict(extra or {})}
    path = d / MODEL_MANIFEST
    atomic_write_bytes(path, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return path


def read_model_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The model's ``adnanny_model.json`` as a dict, or None when the directory has none."""
    p = Path(model_dir) / MODEL_MANIFEST
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
