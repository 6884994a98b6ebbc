"""Dataset card of a cooked corpus: counts per task, split, mode and label value, and what each filter dropped.

Written next to the Parquet file as `card.json` (machine-readable) and `README.md` (for people).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adnanny_cook.corpus import atomic_write_bytes

__all__ = ["corpus_stats", "task_records", "write_card"]


def corpus_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    per_task: Counter[str] = Counter()
    per_split: Counter[str] = Counter()
    per_mode: Counter[str] = Counter()
    per_label: dict[str, Counter[str]] = defaultdict(Counter)
    n = 0
    for r in rows:
        n += 1
        per_task[r["task"]] += 1
        per_split[f"{r['task']}/{r['split']}"] += 1
        per_mode[f"{r['task']}/{r['mode']}"] += 1
        labels = json.loads(r["labels"]) if isinstance(r["labels"], str) else r["labels"]
        for k, v in labels.items():
            if isinstance(v, str) and len(v) > 20:
                continue  # free text (generated queries): not a label distribution
            per_label[f"{r['task']}.{k}"][str(v)] += 1
    return {"rows": n, "per_task": dict(per_task), "per_split": dict(per_split), "per_mode": dict(per_mode),
            "per_label": {k: dict(v) for k, v in per_label.items()}}


def task_records(specs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What a card or manifest records of each task definition: its hash, label fields and file."""
    return {n: {"hash": s.hash, "labels": list(s.label_fields), "primary_field": s.primary_field,
                "defect": {f: list(v) for f, v in s.defect_values.items()}, "file": f"tasks/{n}.toml"}
            for n, s in sorted(specs.items())}


def write_card(rows: list[Mapping[str, Any]], out_dir: str | Path, *, title: str,
               filters: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
               tasks: Iterable[Any] | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write `card.json` and `README.md`; the card records each task definition's hash (`task_records`)."""
    from adnanny_cook.corpus import corpus_tasks

    stats = corpus_stats(rows)
    specs = corpus_tasks(rows, tasks)
    card = {"title": title, **stats, "filters": dict(filters or {}), **dict(extra or {}),
            "tasks": task_records(specs)}
    out = Path(out_dir)
    atomic_write_bytes(out / "card.json", json.dumps(card, indent=2, sort_keys=True).encode())
    lines = [f"# {title}", "", f"{stats['rows']} rows. Schema: `adnanny_cook.corpus.CORPUS_COLUMNS`.", "",
             "| task | rows |", "|---|---|"]
    lines += [f"| {t} | {c} |" for t, c in sorted(stats["per_task"].items())]
    lines += ["", "| task/split | rows |", "|---|---|"]
    lines += [f"| {t} | {c} |" for t, c in sorted(stats["per_split"].items())]
    lines += ["", "| task/mode | rows |", "|---|---|"]
    lines += [f"| {t} | {c} |" for t, c in sorted(stats["per_mode"].items())]
    lines += ["", "| label field | distribution |", "|---|---|"]
    lines += [f"| {k} | {', '.join(f'{a}: {b}' for a, b in sorted(v.items()))} |"
              for k, v in sorted(stats["per_label"].items())]
    lines += ["", "| task definition | label fields | sha256 |", "|---|---|---|"]
    lines += [f"| `tasks/{n}.toml` | {', '.join(t['labels'])} | `{t['hash'][:16]}` |"
              for n, t in card["tasks"].items()]
    if filters:
        lines += ["", "## Filters", "", "```json", json.dumps(filters, indent=2, sort_keys=True), "```"]
    atomic_write_bytes(out / "README.md", ("\n".join(lines) + "\n").encode())
    return card
