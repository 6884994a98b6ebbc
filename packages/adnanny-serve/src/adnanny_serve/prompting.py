"""Prompts for batch labeling: few-shot examples from the user's own rows, and truncation to a token budget.

Few-shot (``--few-shot K --few-shot-from FILE``). The task's one fixed worked example (``--example``) biases a
small model: on a real relevance file SmolLM2 copied the example's label on 95% of the rows it parsed. Instead
we draw K examples from the user's own labeled rows, *balanced* across the values of the task's primary field
(the first label field with defect values; the first label field for other labeling tasks; one stratum for
generation tasks), with a seeded random sample per value (reservoir sampling while streaming the file, so a
large training file is never held in memory). The same K examples go into every prompt — in a shuffled, seeded
order — as chat turns (user: the example's input, assistant: its answer in the tag format), so every prompt
shares one long prefix and the engine's prefix cache computes it once. A row whose id is one of the examples
never sees its own answer: that example is swapped for a spare of the same value (or dropped when none is left).

Truncation (``--max-input-tokens N``): N bounds the *whole* prompt as the engine sees it (system prompt,
examples and the row's input after the chat template). The instructions are never cut: when a row is over
budget, the longest input fields are shortened first ("water filling": every field longer than a cap ``c`` is
cut to ``c`` tokens, with ``c`` the largest cap that fits), so a 9k-character description shrinks while the
query stays whole. Few-shot examples are cut the same way so that instructions + examples take at most half
of N, leaving the other half to the row. A row that cannot fit even with every input field empty is an error.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adnanny_serve.errors import ConfigError, LabelError

__all__ = ["FewShot", "PromptBuilder", "fit_fields", "primary_field", "stratum_field"]


def primary_field(task: Any) -> str | None:
    """The task's primary field: the first label field with defect values (None for generation tasks)."""
    pf = getattr(task, "primary_field", None)
    if pf is not None or hasattr(type(task), "primary_field"):
        return pf
    for f in task.field_order:
        if task.label_fields.get(f) and task.defect_values.get(f):
            return f
    return None


def stratum_field(task: Any) -> str | None:
    """The field whose values few-shot examples are balanced over (None: one stratum)."""
    pf = primary_field(task)
    if pf is not None:
        return pf
    for f in task.field_order:
        if task.label_fields.get(f):
            return f
    return None


def map_label(task: Any, field_name: str, value: Any) -> Any:
    """A user's label value -> the canonical value (cook's ``label_map`` + canonicalisation)."""
    fn = getattr(task, "map_label", None)
    if fn is not None:
        return fn(field_name, value)
    return task.check_value(field_name, value)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


# ------------------------------------------------------------------------------------------ truncation
def fit_fields(row: Mapping[str, Any], fields: list[str], count: Callable[[dict[str, Any]], int], budget: int,
               tokenizer: Any, *, strict: bool = True) -> tuple[dict[str, Any], bool]:
    """Shorten the longest of ``fields`` in ``row`` until ``count(row) <= budget``; returns (row, truncated).

    ``count`` renders the whole prompt of a row and returns its token count, so chat-template tokens and
    field titles are accounted for exactly. A field keeps at least one token (a required field never becomes
    empty). When even that is over budget: ``strict`` raises :class:`ConfigError` (the instructions alone are
    too long for the budget), otherwise the shortest version is returned.
    """
    cur = dict(row)
    n = count(cur)
    if n <= budget:
        return cur, False
    ids = {f: tokenizer(cur[f], add_special_tokens=False)["input_ids"] for f in fields
           if isinstance(cur.get(f), str) and cur[f]}
    lens = {f: len(v) for f, v in ids.items()}
    removed = 0
    cap = max(lens.values(), default=1)
    while cap > 1:
        need = removed + (n - budget)  # tokens to remove in total, measured against the original lengths
        lo, hi = 1, cap - 1  # the largest cap below the current one whose cut removes at least `need`
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(max(0, L - mid) for L in lens.values()) >= need:
                lo = mid
            else:
                hi = mid - 1
        cap = lo
        for f, v in ids.items():
            cur[f] = tokenizer.decode(v[:cap], skip_special_tokens=True).rstrip("\ufffd") if len(v) > cap else row[f]
            if not cur[f].strip():  # a cut inside a multi-byte character: keep one more token
                cur[f] = tokenizer.decode(v[:cap + 1], skip_special_tokens=True)
        removed = sum(max(0, L - cap) for L in lens.values())
        n = count(cur)
        if n <= budget:
            return cur, True
    if strict:
        raise ConfigError(f"`max_input_tokens` {budget} is smaller than the prompt with every input field cut to "
                          f"one token ({n} tokens): the instructions alone do not fit; raise it.")
    return cur, True


# ------------------------------------------------------------------------------------------ few-shot
@dataclass
class FewShot:
    """K examples drawn from labeled rows, balanced over :func:`stratum_field`'s values, plus one spare per value.

    ``examples``: (id, inputs, labels, reasoning, stratum) in prompt order. ``spares``: stratum -> a spare.
    """

    k: int
    seed: int
    source: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    spares: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # rows seen per stratum value

    @classmethod
    def from_rows(cls, task: Any, rows: Iterator[dict[str, Any]], *, k: int, seed: int = 0, source: str = "",
                  need_reasoning: bool = False) -> FewShot:
        """Stream ``rows`` (already renamed to task fields) and draw the balanced sample."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"`few_shot` must be an integer >= 1; got {k!r}.")
        sfield = stratum_field(task)
        label_fields = list(task.field_order)
        rng = random.Random(seed)
        keep = k + 1
        reservoirs: dict[str, list[dict[str, Any]]] = {}
        seen: dict[str, int] = {}
        n_rows = 0
        for n, r in enumerate(rows):
            n_rows += 1
            if any(_blank(r.get(f)) for f in label_fields):
                continue  # a training row without every label cannot show a complete answer
            labels = {}
            for f in label_fields:
                try:
                    labels[f] = map_label(task, f, r[f]) if task.label_fields.get(f) else str(r[f]).strip()
                except Exception as e:
                    raise ConfigError(f"`few_shot_from` {source!r} row {n} (id {r.get('id')!r}): field `{f}` "
                                      f"value {r[f]!r} is not a label of task `{task.name}`: {e}") from e
            reasoning = r.get("reasoning")
            if need_reasoning and _blank(reasoning):
                raise ConfigError(f"`few_shot_from` {source!r} row {n} (id {r.get('id')!r}) has no `reasoning`; "
                                  "few-shot examples in reasoning mode need a `reasoning` column (or use "
                                  "`--mode label`).")
            missing = task.missing_inputs(r)
            if missing:
                continue
            key = str(labels[sfield]) if sfield is not None else "*"
            ex = {"id": None if _blank(r.get("id")) else str(r["id"]),
                  "inputs": {f: (None if _blank(r.get(f)) else r.get(f)) for f in task.input_fields},
                  "labels": labels, "reasoning": None if _blank(reasoning) else str(reasoning), "stratum": key}
            c = seen.get(key, 0)
            seen[key] = c + 1
            res = reservoirs.setdefault(key, [])
            if c < keep:
                res.append(ex)
            else:  # reservoir sampling (Algorithm R): every row of this value is kept with equal probability
                j = rng.randrange(c + 1)
                if j < keep:
                    res[j] = ex
        if not reservoirs:
            raise ConfigError(f"`few_shot_from` {source!r} has no row with every label field "
                              f"{label_fields} and the required inputs of task `{task.name}` ({n_rows} rows read).")
        for key in sorted(reservoirs):
            rng.shuffle(reservoirs[key])
        # balanced quotas: K // S per value, the remainder to values drawn at random; a value with too few rows
        # gives its share to the others
        keys = sorted(reservoirs)
        quota = {key: 0 for key in keys}
        avail = {key: len(reservoirs[key]) for key in keys}
        left = k
        while left > 0:
            open_keys = [key for key in keys if quota[key] < avail[key]]
            if not open_keys:
                break
            share, rem = divmod(left, len(open_keys))
            extra = set(rng.sample(open_keys, rem)) if rem else set()
            for key in open_keys:
                take = min(share + (key in extra), avail[key] - quota[key])
                quota[key] += take
                left -= take
        examples = [ex for key in keys for ex in reservoirs[key][:quota[key]]]
        rng.shuffle(examples)
        spares = {key: reservoirs[key][quota[key]] for key in keys if len(reservoirs[key]) > quota[key]}
        return cls(k=k, seed=seed, source=source, examples=examples, spares=spares, counts=dict(sorted(seen.items())))

    def for_row(self, row_id: str | None) -> list[dict[str, Any]]:
        """The examples shown to row ``row_id`` (its own row swapped for a spare of the same value)."""
        if row_id is None or all(ex["id"] != row_id for ex in self.examples):
            return self.examples
        out = []
        for ex in self.examples:
            if ex["id"] == row_id:
                sp = self.spares.get(ex["stratum"])
                if sp is not None and sp["id"] != row_id:
                    out.append(sp)
                continue
            out.append(ex)
        return out

    def summary(self) -> dict[str, Any]:
        """What goes into the manifest and the resume state."""
        dist: dict[str, int] = {}
        for ex in self.examples:
            dist[ex["stratum"]] = dist.get(ex["stratum"], 0) + 1
        return {"k": self.k, "seed": self.seed, "from": self.source, "ids": [ex["id"] for ex in self.examples],
                "per_value": dist, "rows_per_value": self.counts}


# ------------------------------------------------------------------------------------------ prompt builder
class PromptBuilder:
    """Renders a row's prompt: task messages (+ few-shot turns), truncated to ``max_input_tokens``."""

    def __init__(self, engine: Any, task: Any, *, mode: str, example: bool = False,
                 few_shot: FewShot | None = None, max_input_tokens: int | None = None):
        self.engine = engine
        self.task = task
        self.mode = mode
        self.example = example
        self.few_shot = few_shot
        self.max_input_tokens = max_input_tokens
        self.tokenizer = getattr(engine, "tokenizer", None)
        if max_input_tokens is not None and self.tokenizer is None:
            raise ConfigError("`max_input_tokens` needs an engine with a `tokenizer` to count tokens.")
        self._add_special = bool(getattr(engine, "add_special_tokens", False))
        self._examples_cache: dict[tuple[str | None, ...], list[dict[str, Any]]] = {}

    def count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=self._add_special)["input_ids"])

    def _example_turns(self, examples: list[dict[str, Any]]) -> list[dict[str, str]]:
        turns = []
        for ex in examples:
            user = self.task.render_messages(ex["inputs"], mode=self.mode)[-1]["content"]
            answer = self.task.format_target(ex["labels"], ex["reasoning"] if self.mode == "reasoning" else None)
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return turns

    def messages(self, row: Mapping[str, Any], examples: list[dict[str, Any]] | None = None
                 ) -> list[dict[str, str]]:
        """System + few-shot turns + the row's input (no truncation)."""
        msgs = self.task.render_messages(row, mode=self.mode, example=self.example)
        if examples:
            msgs = [msgs[0], *self._example_turns(examples), *msgs[1:]]
        return msgs

    def _fitted_examples(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Examples cut so that instructions + examples take at most half of the budget (cached per set)."""
        key = tuple(ex["id"] for ex in examples)
        hit = self._examples_cache.get(key)
        if hit is not None:
            return hit
        assert self.max_input_tokens is not None
        system = self.task.render_messages(examples[0]["inputs"], mode=self.mode, example=self.example)[0]
        base = self.count(self.engine.apply_chat_template([system]))
        per = max((self.max_input_tokens // 2 - base) // len(examples), 1)
        out = []
        for ex in examples:
            def count_ex(inputs: dict[str, Any], ex: dict[str, Any] = ex) -> int:
                return self.count(self.engine.apply_chat_template(self._example_turns([{**ex, "inputs": inputs}])))

            inputs, _ = fit_fields(ex["inputs"], list(self.task.input_fields), count_ex, per, self.tokenizer,
                                   strict=False)
            out.append({**ex, "inputs": inputs})
        self._examples_cache[key] = out
        return out

    def answer_prefix(self, prompt: str) -> str:
        """The part of the assistant's answer that the prompt already holds: ``"<think>\\n"`` when the chat template
        pre-opens the think block (DeepSeek-R1's generation prompt ends with ``<think>\\n``), else ``""``.

        WHY: the model then writes only the reasoning and ``</think>``; its output alone has no open tag, and
        the strict parser would call every row a parse error. The prompt's open tag counts: the parser reads
        ``answer_prefix(prompt) + output``. (In label mode :meth:`render` closes a pre-opened block instead, so
        nothing is carried over.)
        """
        from adnanny_cook.tasks.spec import THINK_CLOSE, THINK_OPEN

        head = prompt.rstrip()
        if self.mode != "reasoning" or not head.endswith(THINK_OPEN):
            return ""
        cut = head.rfind(THINK_OPEN)
        return prompt[cut:] if THINK_CLOSE not in prompt[cut:] else ""

    def _finish(self, prompt: str) -> str:
        """Label mode on a template that pre-opens ``<think>``: close the block empty (R1's "no thinking" form), so
        the model answers with the tags at once and its output has no think block, as label mode requires."""
        from adnanny_cook.tasks.spec import THINK_CLOSE, THINK_OPEN

        if self.mode == "label" and prompt.rstrip().endswith(THINK_OPEN):
            return prompt.rstrip() + "\n\n" + THINK_CLOSE + "\n\n"
        return prompt

    def render(self, row: Mapping[str, Any]) -> tuple[str, bool]:
        """(prompt string, whether the row's input was truncated)."""
        prompt, truncated = self._render(row)
        return self._finish(prompt), truncated

    def _render(self, row: Mapping[str, Any]) -> tuple[str, bool]:
        examples = self.few_shot.for_row(row.get("id")) if self.few_shot is not None else None
        if self.max_input_tokens is None:
            return self.engine.apply_chat_template(self.messages(row, examples)), False
        if examples:
            examples = self._fitted_examples(examples)

        def count_row(r: dict[str, Any]) -> int:
            return self.count(self.engine.apply_chat_template(self.messages(r, examples)))

        fitted, truncated = fit_fields(row, list(self.task.input_fields), count_row, self.max_input_tokens,
                                       self.tokenizer)
        return self.engine.apply_chat_template(self.messages(fitted, examples)), truncated


def read_few_shot(task: Any, path: str, *, k: int, seed: int, columns: Mapping[str, str] | None, chunk_rows: int,
                  need_reasoning: bool) -> FewShot:
    """Draw the few-shot sample from a labeled CSV/JSONL/Parquet file through cook's streaming reader."""
    from adnanny_cook.inputs import iter_rows

    p = Path(path)
    if not p.is_file():
        raise LabelError(f"`few_shot_from` file {path!r} does not exist.")

    def rows() -> Iterator[dict[str, Any]]:
        for item in iter_rows(p, columns=dict(columns) if columns else None, chunk_rows=chunk_rows):
            if isinstance(item, Mapping):
                yield dict(item)
            else:
                for r in item:
                    yield dict(r)

    try:
        return FewShot.from_rows(task, rows(), k=k, seed=seed, source=str(path), need_reasoning=need_reasoning)
    except (ConfigError, LabelError):
        raise
    except Exception as e:  # cook's reader errors (bad file, unknown column) name the file already
        raise LabelError(f"`few_shot_from` {path!r}: {e}") from e


def _json_inputs(rec: Mapping[str, Any], n: int, path: str) -> dict[str, Any]:
    try:
        v = json.loads(rec["input"]) if isinstance(rec["input"], str) else rec["input"]
    except (TypeError, ValueError) as e:
        raise LabelError(f"`input` {path!r} row {n} (id {rec.get('id')!r}): `input` is not JSON: {e}") from e
    if not isinstance(v, Mapping):
        raise LabelError(f"`input` {path!r} row {n} (id {rec.get('id')!r}): `input` must hold a JSON object.")
    return dict(v)
