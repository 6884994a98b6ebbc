"""Chat-template formatting: prompt + target -> token ids with a loss mask on the assistant target only.

The text is rendered with the tokenizer's own chat template (``apply_chat_template``), once with the prompt
plus generation header and once with the assistant turn appended; the second must extend the first by the
target (a template that rewrites assistant text, e.g. one that strips ``<think>``, is refused: training on
a target the model never sees at inference time would be silently wrong). Token spans come from the fast
tokenizer's offsets, so the mask is exact even where BPE merges across the prompt/target boundary. The
template's end-of-turn token right after the target (``<|im_end|>``) carries loss too — the model must
learn to stop — and nothing after it does.

Truncation never cuts the target (so never a label tag). A sequence longer than ``max_seq_len`` is:

* ``truncation="input"`` (default): shortened by cutting tokens from the *end of the last user message*
  (the task input: long ad text, user histories), leaving the system instructions (task, output format,
  label-vs-reasoning instruction) and the generation header intact; if even an empty input would not make it
  fit, the row is dropped;
* ``truncation="drop"``: dropped.

Every cut and every drop is counted per task in :class:`FormatReport` (and the trainer logs it and writes the
dropped rows with their reason), never silent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adnanny_sft.errors import ConfigError, DataError

if TYPE_CHECKING:
    from adnanny_sft.backend import Batch

__all__ = ["Example", "FormatReport", "format_example", "format_rows", "collate", "prompt_ids", "pad_token_id"]

TRUNCATION_MODES = ("input", "drop")


@dataclass(frozen=True)
class Example:
    """One tokenised training sample: ids, and where the target (loss) tokens are."""

    id: str
    task: str
    input_ids: tuple[int, ...]
    loss_mask: tuple[float, ...]
    input_tokens_cut: int = 0

    @property
    def num_target_tokens(self) -> int:
        """Target positions (weight 1); task-input tokens weighted by ``input_loss_weight`` (< 1) are not
        counted, so the step normaliser — and with it the targets' effective learning rate — does not change
        when an input loss is added."""
        return int(sum(1 for m in self.loss_mask[1:] if m == 1.0))

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class FormatReport:
    """What formatting did to a set of rows: kept, cut and dropped counts per task, and the dropped rows."""

    kept: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    tokens_cut: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_rows: list[dict[str, Any]] = field(default_factory=list)

    def add_kept(self, task: str, cut: int) -> None:
        self.kept[task] = self.kept.get(task, 0) + 1
        if cut:
            self.truncated[task] = self.truncated.get(task, 0) + 1
            self.tokens_cut[task] = self.tokens_cut.get(task, 0) + cut

    def add_dropped(self, row_id: str, task: str, reason: str, length: int) -> None:
        self.dropped[task] = self.dropped.get(task, 0) + 1
        self.dropped_rows.append({"id": row_id, "task": task, "reason": reason, "tokens": length})

    def as_dict(self) -> dict[str, Any]:
        return {"kept": dict(self.kept), "truncated": dict(self.truncated), "tokens_cut": dict(self.tokens_cut),
                "dropped": dict(self.dropped)}

    def summary(self) -> str:
        k, t, d = sum(self.kept.values()), sum(self.truncated.values()), sum(self.dropped.values())
        return (f"{k} rows kept ({t} with their input cut by {sum(self.tokens_cut.values())} tokens), "
                f"{d} dropped because the target did not fit")


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja/template errors come in several types
        raise ConfigError(f"the tokenizer's chat template failed on these messages: {e}; the tokenizer needs a "
                          "`chat_template` (tokenizer_config.json).") from e
    if not isinstance(text, str):
        raise ConfigError("`apply_chat_template(tokenize=False)` did not return text; unsupported tokenizer.")
    return text


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the prompt plus the assistant generation header (what inference feeds the model)."""
    text = _render(tokenizer, messages, generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_texts(tokenizer: Any) -> set[str]:
    out = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        out |= set(added())
    return out


def format_example(
    tokenizer: Any,
    row_id: str,
    task: str,
    messages: Sequence[Mapping[str, str]],
    target: str,
    *,
    max_seq_len: int,
    truncation: str = "input",
    input_loss_weight: float = 0.0,
) -> Example | tuple[str, int]:
    """Tokenise one row; returns an :class:`Example`, or ``(reason, length)`` when it must be dropped.

    ``input_loss_weight`` > 0 also puts a language-model loss of that weight on the task input (the last user
    message's content; never the system prompt, which stays a loss-free shared prefix). WHY: a label-only target
    supervises one token per row, too sparse for a small model trained from scratch to discover that relevance
    means matching the query's words against the ad's; predicting the ad's words from the query's teaches it to
    attend across the two (pilots in the README: chance without it, 0.82 BACC with weight 0.3).
    """
    if not 0.0 <= input_loss_weight < 1.0:
        raise ConfigError(f"`input_loss_weight` must be in [0, 1); got {input_loss_weight!r}.")
    if truncation not in TRUNCATION_MODES:
        raise ConfigError(f"`truncation` must be one of {TRUNCATION_MODES}; got {truncation!r}.")
    if not target:
        raise DataError(f"row {row_id!r} (task `{task}`) has an empty `target`; nothing to train on.")
    if not messages or any(m.get("role") == "assistant" for m in messages):
        raise DataError(f"row {row_id!r}: `messages` must be the prompt only (no assistant turn), non-empty.")
    prompt_text = _render(tokenizer, messages, generation_prompt=True)
    full_text = _render(tokenizer, [*messages, {"role": "assistant", "content": target}], generation_prompt=False)
    p_len = len(prompt_text)
    if not full_text.startswith(prompt_text) or not full_text[p_len:].startswith(target):
        raise ConfigError(f"row {row_id!r}: the chat template does not render the assistant turn as "
                          "<prompt + generation header> + <target> (it rewrites or reorders the target text); "
                          "use a template that keeps the assistant content verbatim.")
    c_end = p_len + len(target)
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    specials = _special_texts(tokenizer)
    mask = [0.0] * len(ids)
    last_target = -1
    for i, (s, e) in enumerate(offsets):
        if e > p_len and s < c_end:
            mask[i] = 1.0
            last_target = i
    if last_target < 0:
        raise DataError(f"row {row_id!r}: the target produced no tokens (tokenizer offsets are missing?).")
    nxt = last_target + 1
    if nxt < len(ids):
        s, e = offsets[nxt]
        if full_text[s:e] in specials:  # the end-of-turn token: learn to stop
            mask[nxt] = 1.0
            last_target = nxt
    ids, mask = ids[: last_target + 1], mask[: last_target + 1]  # nothing after end-of-turn carries loss
    first_target = mask.index(1.0)
    if input_loss_weight > 0:
        users = [m for m in messages if m.get("role") == "user"]
        content = str(users[-1]["content"]) if users else ""
        u0 = prompt_text.rfind(content) if content else -1
        if u0 >= 0:
            for i in range(1, first_target):
                if offsets[i][0] >= u0 and offsets[i][1] <= u0 + len(content):
                    mask[i] = input_loss_weight
    cut = 0
    if len(ids) > max_seq_len:
        if truncation == "drop":
            return ("too_long", len(ids))
        excess = len(ids) - max_seq_len
        user = [m for m in messages if m.get("role") == "user"]
        content = str(user[-1]["content"]) if user else ""
        start = prompt_text.rfind(content) if content else -1
        if start < 0:
            return ("too_long_no_user_input", len(ids))
        end = start + len(content)
        inside = [i for i in range(first_target) if offsets[i][0] >= start and offsets[i][1] <= end]
        if len(inside) < excess:
            return ("target_does_not_fit", len(ids))
        drop = set(inside[-excess:])  # the end of the input goes; the start and every instruction stay
        ids = [t for i, t in enumerate(ids) if i not in drop]
        mask = [m for i, m in enumerate(mask) if i not in drop]
        cut = excess
    return Example(id=row_id, task=task, input_ids=tuple(ids), loss_mask=tuple(mask), input_tokens_cut=cut)


def format_rows(
    tokenizer: Any,
    rows: Iterable[Mapping[str, Any]],
    *,
    max_seq_len: int,
    truncation: str = "input",
    input_loss_weight: float = 0.0,
) -> tuple[list[Example], FormatReport]:
    """Tokenise rows with ``id``, ``task``, ``messages``, ``target``; counts cuts and drops (module docstring)."""
    if max_seq_len < 8:
        raise ConfigError(f"`max_seq_len` must be >= 8; got {max_seq_len}.")
    report = FormatReport()
    out: list[Example] = []
    for row in rows:
        for key in ("id", "task", "messages", "target"):
            if key not in row or row[key] is None:
                raise DataError(f"training row {row.get('id', '?')!r} lacks `{key}`.")
        ex = format_example(tokenizer, str(row["id"]), str(row["task"]), row["messages"], str(row["target"]),
                            max_seq_len=max_seq_len, truncation=truncation,
                            input_loss_weight=input_loss_weight)
        if isinstance(ex, tuple):
            report.add_dropped(str(row["id"]), str(row["task"]), ex[0], ex[1])
            continue
        report.add_kept(ex.task, ex.input_tokens_cut)
        out.append(ex)
    return out, report


def collate(examples: Sequence[Example], *, pad_id: int, sample_weights: Sequence[float]) -> Batch:
    """Right-pad examples into a :class:`Batch` (padding: id ``pad_id``, attention 0, loss 0)."""
    import torch

    from adnanny_sft.backend import Batch

    if not examples:
        raise DataError("cannot collate an empty batch.")
    t = max(len(e) for e in examples)
    b = len(examples)
    ids = torch.full((b, t), int(pad_id), dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(e.loss_mask, dtype=torch.float32)
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=mask,
                 sample_weights=torch.tensor(list(sample_weights), dtype=torch.float32),
                 task=tuple(e.task for e in examples), sample_ids=tuple(e.id for e in examples))


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (padding never carries attention or loss, so either works)."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    raise ConfigError("the tokenizer has neither `pad_token_id` nor `eos_token_id`; set one in its config.")

