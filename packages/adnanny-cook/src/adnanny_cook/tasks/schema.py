"""Task definitions as data: a TOML task file <-> `TaskSpec`.

A task file (the built-in tasks are such files too, in `adnanny_cook/tasks/builtin/`)::

    name = "product_relevance"              # [a-z][a-z0-9_]*; the corpus `task` column
    description = "Judge how relevant a product is to a search query."
    instruction = "You label query-product relevance..."
    guidelines = "Exact = ...; Substitute = ...; Irrelevant = ..."   # optional
    value_display = "capitalize"            # or "as_is" (default): how values are written between tags
    split_keys = ["query"]                  # input fields that group rows for the split (default: first input)

    [inputs.query]                          # input fields, in prompt order
    title = "Query"
    [inputs.product_description]
    title = "Product description"
    optional = true                         # may be blank; a blank optional input is left out of the prompt

    [labels.label]                          # label (output) fields, in tag order
    tag = "Label"                           # the XML tag: <Label>...</Label>
    values = ["bad", "fair", "good"]        # strings or ints; absent = free text (a generation task)
    defect = ["bad"]                        # values a binary defect view counts as defects
    title = "relevance label"               # how cooking prompts name it (default: the field name)
    stated_as = ["relevance label", "relevance"]  # phrases that state a value in reasoning (default: title)
    optional = false                        # true: rows may lack this field
    [labels.label.map]                      # your values -> canonical values
    E = "good"
    S = "fair"

    [[variants]]                            # cooking prompt variants (at least one)
    id = "steps"
    question = "Why is the given label appropriate?"
    steps = ["Describe the intent.", "Explain why the label fits."]
    example = "..."                         # optional worked reasoning shown to the teacher

    [generation]                            # generation tasks only
    instruction = "..."
    rules = ["...", "..."]

    [example]                               # optional worked example for inference prompts
    reasoning = "..."
    [example.input]
    query = "..."
    [example.labels]
    label = "fair"

Every problem is reported at once, each naming the file and the dotted key; unknown keys are errors with a
suggestion. `spec_to_dict(spec)` is the canonical form (defaults written out, map keys sorted), so a file read
back from `task_to_toml(spec)` has the same `hash`.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adnanny_cook.errors import TaskDefinitionError
from adnanny_cook.tasks.spec import VALUE_DISPLAYS, PromptVariant, TaskSpec

__all__ = ["load_task_file", "spec_from_dict", "spec_to_dict", "task_to_toml"]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAG = re.compile(r"[A-Za-z]+\Z")      # what the strict parser's tag scanner accepts
_RESERVED_TAGS = {"think"}

_TOP_KEYS = ("name", "description", "instruction", "guidelines", "value_display", "split_keys", "inputs",
             "labels", "variants", "generation", "example")
_INPUT_KEYS = ("title", "optional")
_LABEL_KEYS = ("tag", "values", "defect", "title", "stated_as", "optional", "map")
_VARIANT_KEYS = ("id", "question", "steps", "example")
_GEN_KEYS = ("instruction", "rules")
_EXAMPLE_KEYS = ("input", "labels", "reasoning")


class _Problems:
    """Collects every problem of one file (so a user fixes them all in one pass)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, msg: str) -> None:
        self.items.append(f"key `{key}`: {msg}" if key else msg)

    def unknown(self, table: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
        for k in table:
            if k not in known:
                close = difflib.get_close_matches(k, list(known), n=1)
                hint = f"; did you mean `{prefix}{close[0]}`?" if close else f"; known keys: {list(known)}"
                self.add(f"{prefix}{k}", f"unknown key{hint}")

    def raise_if_any(self) -> None:
        if self.items:
            raise TaskDefinitionError(f"task definition `{self.source}` is invalid:\n  " + "\n  ".join(self.items),
                                      source=self.source, problems=self.items)


def _str(p: _Problems, table: Mapping[str, Any], key: str, prefix: str, *, required: bool,
         default: str = "") -> str:
    v = table.get(key)
    if v is None:
        if required:
            p.add(f"{prefix}{key}", "is required (a non-empty string)")
        return default
    if not isinstance(v, str) or (required and not v.strip()):
        p.add(f"{prefix}{key}", f"must be a non-empty string, got {v!r}")
        return default
    return v


def _bool(p: _Problems, table: Mapping[str, Any], key: str, prefix: str) -> bool:
    v = table.get(key, False)
    if not isinstance(v, bool):
        p.add(f"{prefix}{key}", f"must be true or false, got {v!r}")
        return False
    return v


def _str_list(p: _Problems, table: Mapping[str, Any], key: str, prefix: str, *, required: bool = False
              ) -> tuple[str, ...]:
    v = table.get(key)
    if v is None:
        if required:
            p.add(f"{prefix}{key}", "is required (a non-empty list of strings)")
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v) or (required and not v):
        p.add(f"{prefix}{key}", f"must be a {'non-empty ' if required else ''}list of non-empty strings, got {v!r}")
        return ()
    return tuple(v)


def _table(p: _Problems, data: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any] | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        p.add(f"{prefix}{key}", f"must be a table, got {type(v).__name__}")
        return None
    return v


def spec_from_dict(data: Mapping[str, Any], *, source: str = "<task>") -> TaskSpec:
    """Validate a parsed task file and build its `TaskSpec`; raise `TaskDefinitionError` listing every problem
    (each naming `source` and the dotted key)."""
    p = _Problems(source)
    if not isinstance(data, Mapping):
        p.add("", f"a task definition must be a table, got {type(data).__name__}")
        p.raise_if_any()
    p.unknown(data, _TOP_KEYS, "")
    name = _str(p, data, "name", "", required=True)
    if name and not _NAME.match(name):
        p.add("name", f"must match [a-z][a-z0-9_]* (it names files and corpus rows), got {name!r}")
    description = _str(p, data, "description", "", required=True)
    instruction = _str(p, data, "instruction", "", required=True)
    guidelines = _str(p, data, "guidelines", "", required=False)
    value_display = data.get("value_display", "as_is")
    if value_display not in VALUE_DISPLAYS:
        p.add("value_display", f"must be one of {list(VALUE_DISPLAYS)}, got {value_display!r}")
        value_display = "as_is"

    # ---- inputs
    input_fields: list[str] = []
    input_titles: dict[str, str] = {}
    optional_inputs: list[str] = []
    inputs = _table(p, data, "inputs")
    if not inputs:
        p.add("inputs", "is required: at least one [inputs.<field>] table")
    for f, t in (inputs or {}).items():
        pre = f"inputs.{f}."
        if not _FIELD.match(f):
            p.add(f"inputs.{f}", "field names must be identifiers ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(t, dict):
            p.add(f"inputs.{f}", f"must be a table (title = ..., optional = ...), got {t!r}")
            continue
        p.unknown(t, _INPUT_KEYS, pre)
        input_fields.append(f)
        input_titles[f] = _str(p, t, "title", pre, required=False) or f.replace("_", " ").capitalize()
        if _bool(p, t, "optional", pre):
            optional_inputs.append(f)
    if input_fields and len(optional_inputs) == len(input_fields):
        p.add("inputs", "at least one input field must be required (not `optional = true`)")

    # ---- labels
    label_fields: dict[str, tuple[Any, ...]] = {}
    tags: dict[str, str] = {}
    defect_values: dict[str, tuple[Any, ...]] = {}
    optional_labels: list[str] = []
    label_map: dict[str, dict[str, Any]] = {}
    label_titles: dict[str, str] = {}
    stated_as: dict[str, tuple[str, ...]] = {}
    labels = _table(p, data, "labels")
    if not labels:
        p.add("labels", "is required: at least one [labels.<field>] table")
    for f, t in (labels or {}).items():
        pre = f"labels.{f}."
        if not _FIELD.match(f):
            p.add(f"labels.{f}", "field names must be identifiers ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(t, dict):
            p.add(f"labels.{f}", f"must be a table (tag = ..., values = [...]), got {t!r}")
            continue
        if f in input_titles:
            p.add(f"labels.{f}", "a label field cannot have the name of an input field")
        p.unknown(t, _LABEL_KEYS, pre)
        tag = _str(p, t, "tag", pre, required=True)
        if tag and not _TAG.match(tag):
            p.add(f"{pre}tag", f"must be letters only (e.g. \"Label\"), got {tag!r}")
        elif tag.lower() in _RESERVED_TAGS:
            p.add(f"{pre}tag", f"`{tag}` is reserved for the reasoning block")
        elif tag in tags.values():
            p.add(f"{pre}tag", f"`{tag}` is already the tag of another label field")
        tags[f] = tag
        values = t.get("values", [])
        ok_values = isinstance(values, list) and (
            all(isinstance(v, str) and v.strip() for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values))
        if not ok_values:
            p.add(f"{pre}values", f"must be a list of non-empty strings or a list of integers, got {values!r}")
            values = []
        keys = [str(v).strip().lower() for v in values]
        if len(set(keys)) != len(keys):
            p.add(f"{pre}values", f"has duplicates (values compare case-insensitively): {values!r}")
        label_fields[f] = tuple(values)
        if _bool(p, t, "optional", pre):
            optional_labels.append(f)
        if "title" in t:
            label_titles[f] = _str(p, t, "title", pre, required=True)
        if "stated_as" in t:
            stated_as[f] = _str_list(p, t, "stated_as", pre, required=True)
        for key, dest in (("defect", defect_values),):
            d = t.get(key)
            if d is None:
                continue
            if not isinstance(d, list) or not d:
                p.add(f"{pre}{key}", f"must be a non-empty list of values of `{pre}values`, got {d!r}")
                continue
            if not values:
                p.add(f"{pre}{key}", "needs a closed value set: set `values` first")
                continue
            bad = [v for v in d if _canon(values, v) is None]
            if bad:
                p.add(f"{pre}{key}", f"has {bad!r}, not in `values` {values!r}")
                continue
            dest[f] = tuple(_canon(values, v) for v in d)
        m = _table(p, t, "map", pre)
        if m is not None:
            if not values:
                p.add(f"{pre}map", "needs a closed value set: set `values` first")
            else:
                mapped: dict[str, Any] = {}
                for k, v in m.items():
                    c = _canon(values, v)
                    if c is None:
                        p.add(f"{pre}map.{k}", f"maps to {v!r}, not in `values` {values!r}")
                    else:
                        mapped[str(k).strip()] = c
                label_map[f] = dict(sorted(mapped.items()))
    if label_fields and len(optional_labels) == len(label_fields):
        p.add("labels", "at least one label field must be required (not `optional = true`)")

    # ---- split keys
    split_keys = _str_list(p, data, "split_keys", "")
    bad_keys = [k for k in split_keys if k not in input_titles]
    if bad_keys:
        p.add("split_keys", f"names {bad_keys}, not input fields {list(input_titles)}")

    # ---- variants
    variants: list[PromptVariant] = []
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        p.add("variants", "is required: at least one [[variants]] table (id, question, steps)")
        raw_variants = []
    seen_ids: set[str] = set()
    for i, v in enumerate(raw_variants):
        pre = f"variants[{i}]."
        if not isinstance(v, dict):
            p.add(f"variants[{i}]", f"must be a table, got {v!r}")
            continue
        p.unknown(v, _VARIANT_KEYS, pre)
        vid = _str(p, v, "id", pre, required=True)
        if vid in seen_ids:
            p.add(f"{pre}id", f"duplicate variant id {vid!r}")
        seen_ids.add(vid)
        example = v.get("example")
        if example is not None and not (isinstance(example, str) and example.strip()):
            p.add(f"{pre}example", f"must be a non-empty string, got {example!r}")
            example = None
        variants.append(PromptVariant(id=vid, question=_str(p, v, "question", pre, required=True),
                                      steps=_str_list(p, v, "steps", pre, required=True), example=example))

    # ---- generation
    gen_instruction: str | None = None
    gen_rules: tuple[str, ...] = ()
    gen = _table(p, data, "generation")
    if gen is not None:
        p.unknown(gen, _GEN_KEYS, "generation.")
        gen_instruction = _str(p, gen, "instruction", "generation.", required=True) or None
        gen_rules = _str_list(p, gen, "rules", "generation.")

    # ---- build (the example is checked against the built spec's own validators)
    if p.items:
        p.raise_if_any()
    spec = TaskSpec(
        name=name, description=description, input_fields=tuple(input_fields), input_titles=input_titles,
        label_fields=label_fields, tags=tags, instruction=instruction, label_guidelines=guidelines,
        reasoning_variants=tuple(variants), defect_values=defect_values, generation_instruction=gen_instruction,
        generation_rules=gen_rules, inference_example=None, value_display=value_display,
        optional_inputs=tuple(optional_inputs), optional_labels=tuple(optional_labels), label_map=label_map,
        label_titles=label_titles, stated_as=stated_as, split_keys=split_keys)
    ex = _table(p, data, "example")
    if ex is not None:
        from adnanny_cook.errors import ParseError

        p.unknown(ex, _EXAMPLE_KEYS, "example.")
        ex_in = _table(p, ex, "input", "example.") or {}
        ex_lab = _table(p, ex, "labels", "example.") or {}
        reasoning = _str(p, ex, "reasoning", "example.", required=True)
        unknown_in = [k for k in ex_in if k not in input_titles]
        if unknown_in:
            p.add("example.input", f"has fields {unknown_in} that are not input fields {list(input_titles)}")
        miss = spec.missing_inputs(ex_in)
        if miss:
            p.add("example.input", f"misses required input fields {miss}")
        try:
            canon = spec.validate_labels(ex_lab)
        except ParseError as e:
            p.add("example.labels", str(e))
            canon = {}
        p.raise_if_any()
        from dataclasses import replace

        spec = replace(spec, inference_example=({k: str(v) for k, v in ex_in.items()}, canon, reasoning))
    return spec


def _canon(values: list[Any], v: Any) -> Any:
    """`v` as one of `values` (strings compare case-insensitively), else None."""
    for a in values:
        if isinstance(a, int) and not isinstance(v, bool):
            if (isinstance(v, int) and v == a) or (isinstance(v, str) and v.strip() == str(a)):
                return a
        elif isinstance(a, str) and isinstance(v, str) and v.strip().lower() == a.lower():
            return a
    return None


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """The canonical task-file tables of `spec` (every default written out; `label_map` keys sorted)."""
    d: dict[str, Any] = {
        "name": spec.name, "description": spec.description, "instruction": spec.instruction,
        "guidelines": spec.label_guidelines, "value_display": spec.value_display,
        "split_keys": list(spec.group_fields),
        "inputs": {f: {"title": spec.input_titles[f], "optional": f in spec.optional_inputs}
                   for f in spec.input_fields},
        "labels": {},
        "variants": [],
    }
    for f, values in spec.label_fields.items():
        t: dict[str, Any] = {"tag": spec.tags[f], "values": list(values), "title": spec.label_title(f),
                             "stated_as": list(spec.stated_phrases(f)), "optional": f in spec.optional_labels}
        if spec.defect_values.get(f):
            t["defect"] = list(spec.defect_values[f])
        if spec.label_map.get(f):
            t["map"] = dict(sorted((str(k), v) for k, v in spec.label_map[f].items()))
        d["labels"][f] = t
    for v in spec.reasoning_variants:
        vd: dict[str, Any] = {"id": v.id, "question": v.question, "steps": list(v.steps)}
        if v.example:
            vd["example"] = v.example
        d["variants"].append(vd)
    if spec.generation_instruction is not None:
        d["generation"] = {"instruction": spec.generation_instruction, "rules": list(spec.generation_rules)}
    if spec.inference_example is not None:
        ex_in, ex_lab, ex_r = spec.inference_example
        d["example"] = {"input": dict(ex_in), "labels": dict(ex_lab), "reasoning": ex_r}
    return d


# ---------------------------------------------------------------------------------------------- TOML writer
def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # a JSON string is a valid TOML basic string (same escapes: \n \t \" \\ \uXXXX)
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        items = [_val(x) for x in v]
        one = "[" + ", ".join(items) + "]"
        return one if len(one) <= 100 else "[\n" + "".join(f"    {x},\n" for x in items) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_val(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _emit(table: Mapping[str, Any], path: str, lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_list(v)}
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in table.items() if _is_table_list(v)}
    if path and (scalars or not (subtables or arrays)):
        lines += ["", f"[{path}]"]
    lines += [f"{_key(k)} = {_val(v)}" for k, v in scalars.items()]
    for k, v in subtables.items():
        _emit(v, f"{path}.{_key(k)}" if path else _key(k), lines)
    for k, items in arrays.items():
        for it in items:
            name = f"{path}.{_key(k)}" if path else _key(k)
            lines += ["", f"[[{name}]]"]
            lines += [f"{_key(a)} = {_val(b)}" for a, b in it.items()]


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def task_to_toml(spec: TaskSpec) -> str:
    """The task file text of `spec`; `load_task` of it gives a spec with the same `hash`."""
    lines = [f"# adnanny-cook task definition `{spec.name}` (sha256 {spec.hash})"]
    _emit(spec_to_dict(spec), "", lines)
    return "\n".join(lines) + "\n"


def load_task_file(path: str | Path) -> TaskSpec:
    """Read and validate one TOML task file (errors name the file and key)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskDefinitionError(f"task definition `{p}` does not exist", source=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskDefinitionError(f"cannot read task definition `{p}`: {e}", source=str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskDefinitionError(f"task definition `{p}` is not valid TOML: {e}", source=str(p)) from None
    return spec_from_dict(data, source=str(p))
