"""The benchmark tasks: reading the data files as they are, and the prompts lm-evaluation-harness uses.

Followed task definitions (EleutherAI/lm-evaluation-harness; read, not copied):

- ``lm_eval/tasks/arc/arc_easy.yaml`` (``arc_challenge.yaml`` includes it with the Challenge subset):
  ``doc_to_text: "Question: {{question}}\\nAnswer:"``, the choices are the option texts, the target is the
  index of ``answerKey``; metrics ``acc`` and ``acc_norm``.
- ``lm_eval/tasks/hellaswag/hellaswag.yaml`` with ``lm_eval/tasks/hellaswag/utils.py`` (``process_docs``):
  the query is ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``, the choices are
  ``preprocess(ending)``, where ``preprocess`` strips, turns " [title]" into ". ", drops any other
  ``[...]`` (WikiHow markup) and collapses double spaces; metrics ``acc`` and ``acc_norm``.
- ``lm_eval/api/task.py`` (``ConfigurableTask``, ``output_type: multiple_choice``): each choice is scored
  as the continuation ``target_delimiter + choice`` with the default delimiter ``" "``; ``acc`` is the argmax
  of the summed log-likelihoods, ``acc_norm`` the argmax of log-likelihood divided by the length of the
  choice text (``len(choice)``, the delimiter not counted: Python characters, as the harness' code does;
  its separate ``acc_bytes`` uses UTF-8 bytes, the same on these almost-ASCII sets).
- ``lm_eval/tasks/gsm8k/gsm8k.yaml`` (version 3.0): ``"Question: {{question}}\\nAnswer:"`` with target
  ``" {{answer}}"`` (the reference solution, chain of thought ending in ``#### N``), exemplars joined by
  ``"\\n\\n"``, greedy decoding until ``"Question:"``, ``"</s>"`` or ``"<|im_end|>"``; the "strict-match" filter
  takes the first ``#### N``, the "flexible-extract" filter the last number in the completion; exact match
  ignores case, commas, ``$``, everything up to ``#### `` and a trailing full stop.

Only GSM8K's test split is available here, so its exemplars are the file's first ``k`` items, which are then
not scored (the harness draws them from the train split instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_eval.errors import AdNannyEvalError

__all__ = [
    "GSM8K_STOP",
    "MC_TASKS",
    "TARGET_DELIMITER",
    "TASK_NAMES",
    "BenchError",
    "GenItem",
    "MCItem",
    "file_sha256",
    "find_data_file",
    "gsm8k_prompt",
    "hellaswag_preprocess",
    "load_items",
    "mc_requests",
]

TASK_NAMES = ("arc_challenge", "hellaswag", "gsm8k")
MC_TASKS = ("arc_challenge", "hellaswag")
TARGET_DELIMITER = " "
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


class BenchError(AdNannyEvalError):
    """A benchmark input problem: unknown task, missing or malformed data file, conflicting resume folder."""


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item: ``context`` is scored against each ``TARGET_DELIMITER + choice``."""

    index: int  # position in the file (0-based); resume keys on it
    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class GenItem:
    """One GSM8K item: the question, its reference solution and the normalised final number."""

    index: int
    id: str
    question: str
    answer: str


def find_data_file(data_dir: str | os.PathLike[str], task: str) -> Path:
    """The task's JSONL under ``data_dir/<task>/`` (the one ``*.jsonl`` there; ``test.jsonl`` if several)."""
    if task not in TASK_NAMES:
        raise BenchError(f"unknown task `{task}`; choose from {', '.join(TASK_NAMES)}")
    folder = Path(data_dir) / task
    if not folder.is_dir():
        raise BenchError(f"no folder `{folder}` for task `{task}`; `--data-dir` must hold "
                         f"{', '.join(t + '/' for t in TASK_NAMES)} as ../shared/data does")
    files = sorted(folder.glob("*.jsonl"))
    if len(files) > 1 and (folder / "test.jsonl").is_file():
        files = [folder / "test.jsonl"]
    if len(files) != 1:
        raise BenchError(f"`{folder}` must hold exactly one .jsonl file for `{task}`; found "
                         f"{[f.name for f in files] or 'none'}")
    return files[0]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"`{path}` line {n} is not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise BenchError(f"`{path}` line {n} is not a JSON object")
            out.append((n, row))
    return out


def _need(path: Path, n: int, row: dict[str, Any], key: str, kind: type) -> Any:
    if key not in row:
        raise BenchError(f"`{path}` line {n} has no `{key}` (keys: {', '.join(row)})")
    v = row[key]
    if kind is str and not isinstance(v, str):
        raise BenchError(f"`{path}` line {n}: `{key}` must be text; got {v!r}")
    return v


def hellaswag_preprocess(text: str) -> str:
    """HellaSwag's cleanup of WikiHow markup (as the harness' ``utils.preprocess``)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _load_arc(path: Path) -> list[MCItem]:
    """The reformatted ARC file: ``question``, ``options`` [{label, text}], ``answer`` (a label)."""
    items = []
    for k, (n, row) in enumerate(_rows(path)):
        q = _need(path, n, row, "question", str)
        opts = _need(path, n, row, "options", list)
        ans = str(_need(path, n, row, "answer", object))
        if not opts or not all(isinstance(o, dict) and "label" in o and "text" in o for o in opts):
            raise BenchError(f"`{path}` line {n}: `options` must be a list of {{label, text}} objects")
        labels = [str(o["label"]) for o in opts]
        if ans not in labels:
            raise BenchError(f"`{path}` line {n}: `answer` {ans!r} is none of the option labels {labels}")
        items.append(MCItem(index=k, id=str(row.get("id", k)), context=f"Question: {q}\nAnswer:",
                            choices=tuple(str(o["text"]) for o in opts), gold=labels.index(ans)))
    return items


def _load_hellaswag(path: Path) -> list[MCItem]:
    items = []
    for k, (n, row) in enumerate(_rows(path)):
        ctx = _need(path, n, row, "ctx_a", str) + " " + _need(path, n, row, "ctx_b", str).capitalize()
        query = hellaswag_preprocess(_need(path, n, row, "activity_label", str) + ": " + ctx)
        endings = _need(path, n, row, "endings", list)
        try:
            gold = int(_need(path, n, row, "label", object))
        except (TypeError, ValueError) as exc:
            raise BenchError(f"`{path}` line {n}: `label` must be an integer index; got {row['label']!r}") from exc
        if not 0 <= gold < len(endings):
            raise BenchError(f"`{path}` line {n}: `label` {gold} is outside the {len(endings)} endings")
        items.append(MCItem(index=k, id=str(row.get("ind", k)), context=query,
                            choices=tuple(hellaswag_preprocess(str(e)) for e in endings), gold=gold))
    return items


def _load_gsm8k(path: Path) -> list[GenItem]:
    items = []
    for k, (n, row) in enumerate(_rows(path)):
        answer = _need(path, n, row, "answer", str)
        if "#### " not in answer:
            raise BenchError(f"`{path}` line {n}: `answer` has no final `#### N` line")
        items.append(GenItem(index=k, id=str(row.get("id", k)), question=_need(path, n, row, "question", str),
                             answer=answer))
    return items


def load_items(path: str | os.PathLike[str], task: str) -> list[MCItem] | list[GenItem]:
    """All items of ``task``'s file, in file order."""
    p = Path(path)
    loaders = {"arc_challenge": _load_arc, "hellaswag": _load_hellaswag, "gsm8k": _load_gsm8k}
    if task not in loaders:
        raise BenchError(f"unknown task `{task}`; choose from {', '.join(TASK_NAMES)}")
    items = loaders[task](p)
    if not items:
        raise BenchError(f"`{p}` holds no items for `{task}`")
    return items  # type: ignore[return-value]


def mc_requests(item: MCItem) -> list[tuple[str, str]]:
    """The (context, continuation) pairs the engine scores, one per choice."""
    return [(item.context, TARGET_DELIMITER + c) for c in item.choices]


def gsm8k_prompt(exemplars: list[GenItem], item: GenItem) -> str:
    """Few-shot chain-of-thought prompt: worked exemplars, then the question with an open answer."""
    shots = "".join(f"Question: {e.question}\nAnswer: {e.answer}\n\n" for e in exemplars)
    return f"{shots}Question: {item.question}\nAnswer:"
