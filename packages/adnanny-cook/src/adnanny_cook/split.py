"""Train/eval splits with no near-duplicate inputs across the split (paper §3.4: "standardized, shuffled, and split").

Rows are grouped by a key (the query for query_ad, the user history for ad_user, the keyword for keyword
queries). Groups whose normalized keys are near-duplicates (token-set Jaccard >= `threshold`, e.g. "cheap hotel
paris" / "paris hotel cheap") are merged with union-find, then whole groups go to one side. Candidate pairs
come from an inverted index over tokens, so the cost stays near-linear for short keys.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from adnanny_cook.errors import ConfigError
from adnanny_cook.tasks.spec import TaskSpec

__all__ = ["GROUP_KEYS", "group_key", "near_duplicate_groups", "split_rows"]

_TOK = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> frozenset[str]:
    return frozenset(_TOK.findall(text.lower()))


def group_key(task: str | TaskSpec, inp: Mapping[str, Any]) -> str:
    """The text that defines a row's group (normalized lowercase): the task's `split_keys` fields' tokens.

    `task` is a `TaskSpec` or a registered name; an unknown name falls back to the row's first field.
    """
    spec = task if isinstance(task, TaskSpec) else _registered(task)
    fields = [f for f in (spec.group_fields if spec is not None else ()) if f in inp]
    if not fields:
        fields = [next(iter(inp))] if inp else []
    return " ".join(sorted(set().union(*(_tokens(str(inp[f] if inp[f] is not None else "")) for f in fields))))


def _registered(name: str) -> TaskSpec | None:
    from adnanny_cook.errors import UnknownTaskError
    from adnanny_cook.tasks import get_task

    try:
        return get_task(name)
    except UnknownTaskError:
        return None


def __getattr__(name: str) -> Any:
    # GROUP_KEYS (task -> grouping field) used to be a table here; it is now derived from the task definitions
    if name == "GROUP_KEYS":
        from adnanny_cook.tasks import all_tasks

        return {t.name: t.group_fields[0] for t in all_tasks()}
    raise AttributeError(name)


def _name(t: str | TaskSpec) -> str:
    return t.name if isinstance(t, TaskSpec) else t


def near_duplicate_groups(keys: Sequence[str], threshold: float = 0.8) -> list[int]:
    """Group id per key: keys whose token sets have Jaccard >= threshold end up in the same group (transitively)."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    toks = [_tokens(k) for k in keys]
    first: dict[frozenset[str], int] = {}
    index: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        if t in first:  # exact duplicates (after normalization)
            parent[find(i)] = find(first[t])
            continue
        first[t] = i
        # prefix filtering: Jaccard(t, u) >= threshold implies |t & u| >= ceil(threshold * |t|), so any
        # len(t) - ceil(threshold * len(t)) + 1 tokens of t include a shared one (pigeonhole); every earlier key
        # indexes all its tokens, so probing with that many of t's finds every candidate. (The earlier
        # int(len * (1 - threshold)) + 1 was one token short at lengths 5, 10, 15 for 0.8: 5 * 0.2 = 0.999...)
        probe = sorted(t)[: max(1, len(t) - math.ceil(threshold * len(t) - 1e-9) + 1)]
        cands: set[int] = set()
        for tok in probe:
            cands.update(index[tok])
        for j in cands:
            tj = toks[j]
            inter = len(t & tj)
            if inter and inter / len(t | tj) >= threshold:
                parent[find(i)] = find(j)
        for tok in t:
            index[tok].append(i)
    return [find(i) for i in range(len(keys))]


def split_rows(tasks: Sequence[str | TaskSpec], inputs: Sequence[Mapping[str, Any]], *, eval_fraction: float,
               seed: int, threshold: float = 0.8) -> list[str]:
    """'train'/'eval' per row; rows sharing a (near-duplicate) group key always share a split.

    Grouping is per task (a query string in query_ad and the same string as a keyword are different inputs);
    `tasks` holds each row's task name or `TaskSpec` (whose `split_keys` choose the grouping fields).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"`eval_fraction` must be in [0, 1), got {eval_fraction}")
    keys = [f"{_name(t)}\x00{group_key(t, i)}" for t, i in zip(tasks, inputs, strict=True)]
    tasks = [_name(t) for t in tasks]
    by_task: dict[str, list[int]] = defaultdict(list)
    for n, t in enumerate(tasks):
        by_task[t].append(n)
    gid = [0] * len(keys)
    offset = 0
    for _t, idx in sorted(by_task.items()):
        g = near_duplicate_groups([keys[i].split("\x00", 1)[1] for i in idx], threshold)
        for i, gg in zip(idx, g, strict=True):
            gid[i] = offset + gg
        offset += len(idx)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(gid):
        members[g].append(i)
    groups = sorted(members, key=lambda g: keys[members[g][0]])  # order independent of input order
    random.Random(seed).shuffle(groups)
    out = ["train"] * len(keys)
    target = eval_fraction * len(keys)
    n_eval = 0
    for g in groups:
        if n_eval >= target:
            break
        for i in members[g]:
            out[i] = "eval"
        n_eval += len(members[g])
    return out
