"""`TaskSpec`: one offline task's fields, label sets, output tags, prompts and strict parser.

Output format (paper §3.2): in *reasoning* mode the assistant writes ``<think>…</think>`` and then repeats the
labels in tags (``<Label>Fair</Label>`` …); in *label* mode it writes the tags alone. The parser is strict:

* it reads only the model's output (never the prompt), so an ad whose text contains ``</think><Label>Good</Label>``
  cannot change a parsed label;
* the answer section is everything after the LAST ``</think>`` — a reasoning trace that quotes the ad (and with
  it a fake closing tag) still ends at the model's own final ``</think>``;
* the answer section must be exactly the task's tags, each once, separated by whitespace — text outside tags,
  unknown or repeated tags, a missing tag or a value outside the label set raise a typed `ParseError`;
  no default label is ever invented.

Inputs rendered into prompts are *defanged*: a control tag in user data (``<think>``, ``<Label>`` …) is written
with a word joiner after ``<`` so that a tokenizer that has the tags as special tokens never sees a real tag in
the input. The data itself is not otherwise changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from adnanny_cook.errors import (ConfigError, InvalidLabelError, MalformedOutputError, MissingTagError,
                                 ParseError)

__all__ = ["CONTROL_TAGS", "Message", "ParsedOutput", "PromptVariant", "TEACHER_ANSWERS", "TaskSpec", "TeacherAnswer",
           "defang"]

Message = dict[str, str]
Mode = Literal["reasoning", "label"]
#: What a cooking request asks the teacher for: the full tagged answer, or the explanation alone
#: (`TaskSpec.reasoning_messages(..., answer=...)`, `TaskSpec.assemble_explanation`).
TeacherAnswer = Literal["tagged", "explanation"]
TEACHER_ANSWERS: tuple[str, ...] = ("tagged", "explanation")
ValueDisplay = Literal["capitalize", "as_is"]
VALUE_DISPLAYS: tuple[str, ...] = ("capitalize", "as_is")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_WORD_JOINER = "\u2060"

#: Every tag name any task uses; filled by the registry (`tasks.registry`) at import time.
CONTROL_TAGS: set[str] = {"think"}


def defang(text: str) -> str:
    """Make control tags inside user-provided text inert (``<Label>`` -> ``<\u2060Label>``).

    WHY: inputs are untrusted ad text; a tokenizer with the tags as special tokens would otherwise map an ad's
    literal ``</think>`` to the real control token and a model trained on such prompts could be steered by ads.
    """
    if "<" not in text:
        return text

    def _sub(m: re.Match[str]) -> str:
        return "<" + _WORD_JOINER + m.group(1)

    return _control_re().sub(_sub, text)


_CONTROL_CACHE: dict[frozenset[str], re.Pattern[str]] = {}


def _control_re() -> re.Pattern[str]:
    """Regex over `CONTROL_TAGS` (rebuilt if a task registers new tags), so defanging and the tokenizer's added
    tokens always cover the same tags."""
    key = frozenset(CONTROL_TAGS)
    rx = _CONTROL_CACHE.get(key)
    if rx is None:
        alt = "|".join(re.escape(t) for t in sorted(key, key=len, reverse=True))
        rx = _CONTROL_CACHE[key] = re.compile(rf"<(/?(?:{alt})>)", re.IGNORECASE)
    return rx


@dataclass(frozen=True)
class ParsedOutput:
    """What a model output says: labels (canonical values), the reasoning (None in label mode) and the raw text."""

    labels: dict[str, Any]
    reasoning: str | None
    raw: str


@dataclass(frozen=True)
class PromptVariant:
    """One wording of a cooking prompt (§3.3 stress-tests prompts under rephrasing and reordered steps)."""

    id: str
    question: str
    steps: tuple[str, ...]
    example: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Schema and prompts of one offline task, usually loaded from a TOML task file (`load_task`).

    `label_fields` maps an output field to its allowed values; an empty tuple means free text (generation tasks:
    the "label" is the generated query, profile, rewrite...). `tags` maps each field to its XML tag name and
    `field_order` fixes the order tags are written in. `label_stop` holds the strings after which a label-only
    generation is complete (the closing tag of the last field): a server may stop there and must keep the stop
    text in the output (or re-append it) before calling `parse`.

    Optional parts: an input field in `optional_inputs` may be blank (it is then left out of the prompt); a label
    field in `optional_labels` may be absent from a row's labels (`validate_labels`, `format_target`). A dataset
    that carries only some label fields trains on `select_labels(...)`, the task restricted to those fields,
    whose prompt asks for (and whose parser requires) exactly those tags.
    """

    name: str
    description: str
    input_fields: tuple[str, ...]
    input_titles: dict[str, str]
    label_fields: dict[str, tuple[Any, ...]]
    tags: dict[str, str]
    instruction: str
    label_guidelines: str
    reasoning_variants: tuple[PromptVariant, ...]
    defect_values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    generation_instruction: str | None = None
    generation_rules: tuple[str, ...] = ()
    inference_example: tuple[dict[str, Any], dict[str, Any], str] | None = None
    #: how label values are written between tags: "capitalize" ("good" -> "Good") or "as_is"
    value_display: ValueDisplay = "as_is"
    optional_inputs: tuple[str, ...] = ()
    optional_labels: tuple[str, ...] = ()
    #: user values -> canonical values, per label field (E/S/C/I, star ratings "4.5", "Exact"...)
    label_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: how cooking prompts name a label field ("Given relevance label: Fair"); default: the field name
    label_titles: dict[str, str] = field(default_factory=dict)
    #: phrases by which a reasoning text states a field's value ("relevance label 'Fair'"); default: the title
    stated_as: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: input fields whose text groups rows for the train/eval split (near-duplicates share a side)
    split_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.value_display not in VALUE_DISPLAYS:
            raise ConfigError(f"task `{self.name}`: `value_display` must be one of {list(VALUE_DISPLAYS)}, got "
                              f"{self.value_display!r}")

    # ------------------------------------------------------------------ derived properties
    @property
    def field_order(self) -> tuple[str, ...]:
        return tuple(self.label_fields)

    @property
    def kind(self) -> Literal["label", "generation"]:
        """"label" when every output field has a closed value set, else "generation"."""
        return "label" if all(self.label_fields.values()) else "generation"

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple(f for f in self.input_fields if f not in self.optional_inputs)

    @property
    def required_labels(self) -> tuple[str, ...]:
        return tuple(f for f in self.label_fields if f not in self.optional_labels)

    @property
    def primary_field(self) -> str | None:
        """The first label field that has defect values (the one a binary defect view scores), None if none."""
        return next((f for f in self.label_fields if self.defect_values.get(f)), None)

    @property
    def group_fields(self) -> tuple[str, ...]:
        """`split_keys`, or the first required input when the definition names none."""
        return self.split_keys or self.required_inputs[:1] or self.input_fields[:1]

    @property
    def label_stop(self) -> tuple[str, ...]:
        return (f"</{self.tags[self.field_order[-1]]}>",)

    @cached_property
    def hash(self) -> str:
        """sha256 hex of the canonical definition (`to_dict`): equal hashes = equal prompts, tags and labels."""
        import hashlib
        import json

        blob = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The definition as the TOML task file's tables (`task_to_toml` writes it; `spec_from_dict` reads it)."""
        from adnanny_cook.tasks.schema import spec_to_dict

        return spec_to_dict(self)

    def select_labels(self, fields: Sequence[str]) -> TaskSpec:
        """This task restricted to the label fields `fields` (kept in the task's own order).

        The result asks for, renders and parses only those tags (relevance-only `query_ad`: `<Label>` alone);
        its name is unchanged and its `hash` differs. Every required label field must be selected.
        """
        fields = tuple(dict.fromkeys(fields))
        unknown = [f for f in fields if f not in self.label_fields]
        if unknown:
            raise ConfigError(f"task `{self.name}` has no label fields {unknown}; its fields are "
                              f"{list(self.label_fields)}")
        missing = [f for f in self.required_labels if f not in fields]
        if missing:
            raise ConfigError(f"task `{self.name}`: label fields {missing} are required and must be selected "
                              f"(optional: {list(self.optional_labels)})")
        if not fields:
            raise ConfigError(f"task `{self.name}`: select at least one label field of {list(self.label_fields)}")
        if fields == self.field_order or set(fields) == set(self.label_fields):
            return self
        keep = [f for f in self.label_fields if f in fields]
        ex = self.inference_example
        if ex is not None:
            ex = (ex[0], {f: v for f, v in ex[1].items() if f in keep}, ex[2])
        return replace(
            self, label_fields={f: self.label_fields[f] for f in keep}, tags={f: self.tags[f] for f in keep},
            defect_values={f: v for f, v in self.defect_values.items() if f in keep},
            optional_labels=tuple(f for f in self.optional_labels if f in keep),
            label_map={f: v for f, v in self.label_map.items() if f in keep},
            label_titles={f: v for f, v in self.label_titles.items() if f in keep},
            stated_as={f: v for f, v in self.stated_as.items() if f in keep},
            inference_example=ex)

    def open_tag(self, field_name: str) -> str:
        return f"<{self.tags[field_name]}>"

    def close_tag(self, field_name: str) -> str:
        return f"</{self.tags[field_name]}>"

    def display(self, field_name: str, value: Any) -> str:
        """A canonical value as written in prompts and targets (`value_display`)."""
        if self.value_display == "capitalize" and isinstance(value, str):
            return value.capitalize()
        return str(value)

    def render_value(self, field_name: str, value: Any) -> str:
        """The text written between a field's tags ("Good", "3", a query)."""
        self.check_value(field_name, value)
        return self.display(field_name, value)

    def label_title(self, field_name: str) -> str:
        """How cooking prompts name a label field ("relevance label"); default: the field name with spaces."""
        return self.label_titles.get(field_name) or field_name.replace("_", " ")

    def stated_phrases(self, field_name: str) -> tuple[str, ...]:
        """Phrases that introduce a stated value of the field in reasoning text (see `filters.stated_labels`)."""
        return self.stated_as.get(field_name) or (self.label_title(field_name),)

    # ------------------------------------------------------------------ validation
    def check_value(self, field_name: str, value: Any) -> Any:
        """Return the canonical value or raise `InvalidLabelError` naming the field, value and allowed set."""
        if field_name not in self.label_fields:
            raise InvalidLabelError(
                f"task `{self.name}` has no label field `{field_name}`; its fields are {list(self.label_fields)}",
                task=self.name, field=field_name)
        allowed = self.label_fields[field_name]
        if not allowed:
            if not isinstance(value, str) or not value.strip():
                raise InvalidLabelError(
                    f"task `{self.name}` field `{field_name}` needs non-empty text, got {value!r}",
                    task=self.name, field=field_name)
            return value.strip()
        canon = self._canonical(field_name, value)
        if canon is None:
            raise InvalidLabelError(
                f"task `{self.name}` field `{field_name}` got {value!r}; allowed values are {list(allowed)}",
                task=self.name, field=field_name)
        return canon

    def _canonical(self, field_name: str, value: Any) -> Any:
        allowed = self.label_fields[field_name]
        if isinstance(allowed[0], int):
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value if value in allowed else None
            if isinstance(value, float) and value.is_integer() and int(value) in allowed:
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
                v = int(value)
                return v if v in allowed else None
            return None
        if isinstance(value, str):
            low = value.strip().lower()
            for a in allowed:
                if str(a).lower() == low:
                    return a
        return None

    def map_label(self, field_name: str, value: Any) -> Any:
        """A user's value -> the canonical value: `label_map` first ("E" -> "good", "4.5" -> 3), then
        `check_value` (so canonical values, any case, pass too). Raises `InvalidLabelError` naming the mapped
        values and the allowed set."""
        table = self.label_map.get(field_name)
        if table and value is not None and not isinstance(value, bool):
            keys = [str(value).strip()]
            if isinstance(value, float) and value.is_integer():
                keys.append(str(int(value)))
            for k in keys:
                if k in table:
                    return self.check_value(field_name, table[k])
            low = {str(k).lower(): v for k, v in table.items()}
            for k in keys:
                if k.lower() in low:
                    return self.check_value(field_name, low[k.lower()])
        try:
            return self.check_value(field_name, value)
        except InvalidLabelError as e:
            if not table:
                raise
            raise InvalidLabelError(f"{e}; `label_map` maps {sorted(table)}", task=self.name,
                                    field=field_name) from None

    def validate_labels(self, labels: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical labels, in field order: a missing required field or an unknown field raises; optional
        fields (`optional_labels`) may be absent."""
        missing = [f for f in self.required_labels if f not in labels]
        if missing:
            raise MissingTagError(f"task `{self.name}` labels miss {missing}; got keys {sorted(labels)}",
                                  task=self.name, field=missing[0])
        extra = [k for k in labels if k not in self.label_fields]
        if extra:
            raise InvalidLabelError(f"task `{self.name}` has no label fields {extra}; its fields are "
                                    f"{list(self.label_fields)}", task=self.name, field=extra[0])
        return {f: self.check_value(f, labels[f]) for f in self.label_fields if f in labels}

    def missing_inputs(self, row: Mapping[str, Any]) -> list[str]:
        """Required input fields that are absent, None or blank in `row` (optional ones may be blank)."""
        return [f for f in self.required_inputs if _blank(row.get(f))]

    # ------------------------------------------------------------------ prompts
    def render_input(self, row: Mapping[str, Any]) -> str:
        missing = self.missing_inputs(row)
        if missing:
            raise MissingTagError(f"task `{self.name}` input row misses fields {missing}; it needs "
                                  f"{list(self.input_fields)}", task=self.name, field=missing[0])
        # a blank optional input (no ad description) is left out rather than rendered as "Ad description: "
        return "\n".join(f"{self.input_titles[f]}: {defang(str(row[f]).strip())}" for f in self.input_fields
                         if not _blank(row.get(f)))

    def output_format(self, mode: Mode) -> str:
        tags = "\n".join(f"{self.open_tag(f)}{self._placeholder(f)}{self.close_tag(f)}" for f in self.field_order)
        if mode == "reasoning":
            return (f"First reason step by step inside {THINK_OPEN}...{THINK_CLOSE}. Then write exactly these "
                    f"tags and nothing else:\n{tags}")
        return f"Answer with exactly these tags and nothing else:\n{tags}"

    def _placeholder(self, f: str) -> str:
        allowed = self.label_fields[f]
        if not allowed:
            return f"...{f}..."
        return "|".join(self.display(f, a) for a in allowed)

    def render_messages(self, row: Mapping[str, Any], mode: Mode = "reasoning", example: bool = False
                        ) -> list[Message]:
        """The inference/training prompt: system (task, guidelines, output format) + user (the input).

        No labels are shown: this is what the fine-tuned model sees. `example=True` adds one worked example.
        """
        _check_mode(mode)
        system = f"{self.instruction}\n\n{self.label_guidelines}\n\n{self.output_format(mode)}"
        if example and self.inference_example is not None:
            ex_row, ex_labels, ex_reason = self.inference_example
            system += ("\n\nExample input:\n" + self.render_input(ex_row) + "\nExample answer:\n"
                       + self.format_target(ex_labels, ex_reason if mode == "reasoning" else None))
        return [{"role": "system", "content": system}, {"role": "user", "content": self.render_input(row)}]

    def format_target(self, labels: Mapping[str, Any], reasoning: str | None) -> str:
        """The assistant text: ``<think>reasoning</think>`` + tags (reasoning mode) or the tags alone."""
        canon = self.validate_labels(labels)
        tags = "\n".join(f"{self.open_tag(f)}{self.render_value(f, canon[f])}{self.close_tag(f)}"
                         for f in self.field_order if f in canon)
        if reasoning is None:
            return tags
        r = reasoning.strip()
        if not r:
            raise ParseError(f"task `{self.name}`: `reasoning` is empty; pass None for a label-only target",
                             task=self.name)
        # A teacher may quote ad text that carries control tags; defang so the target stays well formed.
        r = defang(r)
        return f"{THINK_OPEN}\n{r}\n{THINK_CLOSE}\n{tags}"

    def reasoning_messages(self, row: Mapping[str, Any], labels: Mapping[str, Any], variant: int | str = 0,
                           answer: TeacherAnswer = "tagged") -> list[Message]:
        """The cooking prompt (§3.2): show the input AND the existing labels; ask the teacher to reconstruct why
        they fit, in explicit steps, then repeat the labels in tags. It never asks for a new label.

        `answer="explanation"` asks for the explanation alone, in plain sentences, without the ``<think>`` block
        and the tags: the labels are given, so repeating them in tags is format work that a small teacher gets
        wrong far more often than the explanation itself; `assemble_explanation` then builds the tagged answer
        from the given labels, and the filters judge the explanation as before."""
        if answer not in TEACHER_ANSWERS:
            raise ConfigError(f"`answer` must be one of {list(TEACHER_ANSWERS)}, got {answer!r}")
        v = self.variant(variant)
        canon = self.validate_labels(labels)
        given = "\n".join(f"Given {self.label_title(f)}: {defang(self.render_value(f, canon[f]))}"
                          for f in self.field_order if f in canon)
        # labels without their optional fields: ask for exactly the tags that are given
        shown = self if len(canon) == len(self.label_fields) else self.select_labels(tuple(canon))
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(v.steps, 1))
        system = (f"You are an expert ads relevance analyst preparing training data. {self.description}\n"
                  f"{self.label_guidelines}\n\nThe labels below are already decided and correct. Do not choose "
                  f"new labels: reconstruct the reasoning that makes the given labels appropriate. Refer to "
                  f"concrete details of the input.")
        if v.example:
            system += "\n\nExample of the expected reasoning:\n" + v.example
        if answer == "explanation":
            user = (f"{self.render_input(row)}\n{given}\n\n{v.question}\nCover these steps:\n{steps}\n\n"
                    f"Write only the explanation: a few plain sentences that name concrete details of the input. "
                    f"No headings, no lists, no tags, and do not choose a different label.")
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        user = (f"{self.render_input(row)}\n{given}\n\n{v.question}\nAnswer in these steps:\n{steps}\n\n"
                f"{shown.output_format('reasoning')}\nThe tags must repeat the given values exactly.")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def assemble_explanation(self, labels: Mapping[str, Any], text: str) -> str:
        """The tagged reasoning answer for an `answer="explanation"` teacher response: ``<think>text</think>``
        + the GIVEN labels' tags, for the filters to judge like any candidate.

        Not a repair: a response that already is a full tagged answer is returned unchanged (its tags are then
        checked against the labels by the contradiction filter); a response that carries task tags or a
        ``<think>`` marker anywhere else, or is blank, is returned unchanged too, so the strict parser rejects
        it (schema drop) instead of this function guessing what the teacher meant.
        """
        body = text.strip()
        if not body or _control_re().search(body):
            return text
        return self.format_target(labels, body)

    def generation_messages(self, row: Mapping[str, Any], n: int = 4) -> list[Message]:
        """The first-stage generation prompt of generation tasks (e.g. keyword -> queries following §3.2's rules)."""
        if self.generation_instruction is None:
            raise ParseError(f"task `{self.name}` has no generation prompt; it is a labeling task", task=self.name)
        if n < 1:
            raise ConfigError(f"`n` must be >= 1, got {n}")
        rules = "\n".join(f"- {r}" for r in self.generation_rules)
        system = f"{self.generation_instruction}\nRules:\n{rules}" if rules else self.generation_instruction
        shape = "".join(f"{self.open_tag(f)}...{self.close_tag(f)}" for f in self.field_order)
        user = (f"{self.render_input(row)}\n\nWrite {n} different outputs. Write each one as {shape}, one "
                f"output per line, and write nothing else.")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def parse_generation(self, text: str) -> list[str]:
        """Strictly parse a generation answer: one or more ``<Tag>text</Tag>`` of the first output field."""
        f = self.field_order[0]
        tag = self.tags[f]
        body = _strip_think(text, self.name)[1]
        items = _scan_tags(body, self.name)
        if not items:
            raise MissingTagError(f"task `{self.name}`: generation output has no {self.open_tag(f)} tags",
                                  task=self.name, field=f, text=text)
        out = []
        for name, value in items:
            if name != tag:
                raise MalformedOutputError(f"task `{self.name}`: unexpected tag <{name}> in generation output; "
                                           f"expected only <{tag}>", task=self.name, field=f, text=text)
            if not value.strip():
                raise InvalidLabelError(f"task `{self.name}`: empty <{tag}> in generation output",
                                        task=self.name, field=f, text=text)
            out.append(value.strip())
        return out

    def parse_generation_items(self, text: str) -> list[dict[str, str]]:
        """Strictly parse a generation answer into output dicts: each output is every field's tag, in order
        (one tag for single-field tasks, e.g. ``<Title>..</Title><Description>..</Description>`` for ad_rewrite)."""
        body = _strip_think(text, self.name)[1]
        items = _scan_tags(body, self.name)
        order = [self.tags[f] for f in self.field_order]
        by_tag = {self.tags[f]: f for f in self.field_order}
        if not items:
            raise MissingTagError(f"task `{self.name}`: generation output has no {self.open_tag(self.field_order[0])}"
                                  f" tags", task=self.name, text=text)
        if len(items) % len(order):
            raise MalformedOutputError(f"task `{self.name}`: generation output has {len(items)} tags, not a "
                                       f"multiple of the {len(order)} fields {order}", task=self.name, text=text)
        out = []
        for i in range(0, len(items), len(order)):
            group = items[i:i + len(order)]
            names = [g[0] for g in group]
            if names != order:
                raise MalformedOutputError(f"task `{self.name}`: generation output {i // len(order)} has tags "
                                           f"{names}, expected {order}", task=self.name, text=text)
            rec = {}
            for name, value in group:
                if not value.strip():
                    raise InvalidLabelError(f"task `{self.name}`: empty <{name}> in generation output",
                                            task=self.name, field=by_tag[name], text=text)
                rec[by_tag[name]] = value.strip()
            out.append(rec)
        return out

    def variant(self, variant: int | str) -> PromptVariant:
        if isinstance(variant, int):
            if not 0 <= variant < len(self.reasoning_variants):
                raise ConfigError(f"`variant` {variant} out of range for task `{self.name}` "
                                 f"(0..{len(self.reasoning_variants) - 1})")
            return self.reasoning_variants[variant]
        for v in self.reasoning_variants:
            if v.id == variant:
                return v
        raise ConfigError(f"`variant` {variant!r} unknown for task `{self.name}`; known: "
                         f"{[v.id for v in self.reasoning_variants]}")

    # ------------------------------------------------------------------ parsing
    def parse(self, text: str, mode: Mode | None = None) -> ParsedOutput:
        """Parse a model output strictly (see the module docstring); raise a `ParseError` subclass on failure."""
        if mode is not None:
            _check_mode(mode)
        if not isinstance(text, str):
            raise MalformedOutputError(f"task `{self.name}`: output must be str, got {type(text).__name__}",
                                       task=self.name)
        reasoning, body = _strip_think(text, self.name)
        if mode == "reasoning" and reasoning is None:
            raise MissingTagError(f"task `{self.name}`: reasoning-mode output has no {THINK_OPEN} block",
                                  task=self.name, field="reasoning", text=text)
        if mode == "label" and reasoning is not None:
            raise MalformedOutputError(f"task `{self.name}`: label-mode output must not contain {THINK_OPEN}",
                                       task=self.name, text=text)
        if reasoning is not None and not reasoning:
            raise MalformedOutputError(f"task `{self.name}`: the {THINK_OPEN} block is empty", task=self.name,
                                       field="reasoning", text=text)
        items = _scan_tags(body, self.name)
        by_tag = {self.tags[f]: f for f in self.field_order}
        labels: dict[str, Any] = {}
        for name, value in items:
            f = by_tag.get(name)
            if f is None:
                raise MalformedOutputError(f"task `{self.name}`: unknown tag <{name}>; expected "
                                           f"{[self.open_tag(x) for x in self.field_order]}", task=self.name,
                                           text=text)
            if f in labels:
                raise MalformedOutputError(f"task `{self.name}`: tag <{name}> appears more than once",
                                           task=self.name, field=f, text=text)
            try:
                labels[f] = self.check_value(f, value)
            except InvalidLabelError as e:
                raise InvalidLabelError(str(e), task=self.name, field=f, text=text) from None
        missing = [f for f in self.field_order if f not in labels]
        if missing:
            raise MissingTagError(f"task `{self.name}`: output misses tags "
                                  f"{[self.open_tag(f) for f in missing]}", task=self.name, field=missing[0],
                                  text=text)
        return ParsedOutput(labels=labels, reasoning=reasoning, raw=text)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


_TAG_ITEM = re.compile(r"<([A-Za-z]+)>(.*?)</\1>", re.DOTALL)


def _strip_think(text: str, task: str) -> tuple[str | None, str]:
    """Split an output into (reasoning or None, answer section). The answer starts after the LAST ``</think>``."""
    s = text.strip()
    if s.startswith(THINK_OPEN):
        end = s.rfind(THINK_CLOSE)
        if end < len(THINK_OPEN):
            raise MalformedOutputError(f"task `{task}`: {THINK_OPEN} is never closed with {THINK_CLOSE}",
                                       task=task, field="reasoning", text=text)
        return s[len(THINK_OPEN):end].strip(), s[end + len(THINK_CLOSE):]
    if THINK_CLOSE in s or THINK_OPEN in s:
        raise MalformedOutputError(f"task `{task}`: a think tag appears but the output does not start with "
                                   f"{THINK_OPEN}", task=task, field="reasoning", text=text)
    return None, s


def _scan_tags(body: str, task: str) -> list[tuple[str, str]]:
    """Tokenize an answer section into (tag, value) pairs; anything but whitespace between tags is an error."""
    items: list[tuple[str, str]] = []
    pos = 0
    for m in _TAG_ITEM.finditer(body):
        gap = body[pos:m.start()]
        if gap.strip():
            raise MalformedOutputError(f"task `{task}`: text outside the answer tags: {gap.strip()[:80]!r}",
                                       task=task, text=body)
        items.append((m.group(1), m.group(2)))
        pos = m.end()
    tail = body[pos:]
    if not items and tail.strip():
        raise MissingTagError(f"task `{task}`: no answer tags found in {tail.strip()[:80]!r}", task=task, text=body)
    if tail.strip():
        raise MalformedOutputError(f"task `{task}`: text outside the answer tags: {tail.strip()[:80]!r}",
                                   task=task, text=body)
    return items


def _check_mode(mode: str) -> None:
    if mode not in ("reasoning", "label"):
        raise ConfigError(f"`mode` must be 'reasoning' or 'label', got {mode!r}")


def render_chat(messages: Sequence[Message]) -> str:
    """ChatML text of a message list (used for token counting and the sample tokenizer's template)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
