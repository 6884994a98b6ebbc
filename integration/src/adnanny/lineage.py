"""`adnanny lineage RUN_DIR --id ID`: from one predicted label back to everything it was made from.

The walk starts at the latest stage whose `trace(out, id)` knows the id (label, or distill for a student's row),
then follows that stage's manifest `lineage` paths: a path inside another stage's folder continues the walk in
that stage (its `trace` is asked about the same id — or about `trace["upstream_id"]` when a stage maps ids, e.g.
a distilled row -> the label row it came from), a path outside the run dir (a base model, the user's data file)
is a leaf. So label -> the model that produced it -> that model's corpus and base model -> for the corpus row its
teacher prompt and response, with each stage answering only about its own folder (`Stage.trace`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adnanny.flow import FlowError, read_manifest

__all__ = ["LineageError", "format_lineage", "trace_lineage"]


class LineageError(FlowError):
    """The id is known to no stage, or a lineage path is broken; the message names what was searched."""


def _stage_of(path: Path, run_dir: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and (run_dir / rel.parts[0] / "manifest.json").is_file() else None


def _node(name: str, run_dir: Path, row_id: str, stages: Mapping[str, Any], seen: set[str]) -> dict[str, Any]:
    out = run_dir / name
    m = read_manifest(out)
    node: dict[str, Any] = {"stage": name, "folder": str(out), "status": m.status if m else "missing",
                            "trace": None, "from": []}
    st = stages.get(name)
    if st is not None and m is not None:
        node["trace"] = st.trace(out, row_id)
    seen.add(name)
    next_id = row_id
    if isinstance(node["trace"], Mapping) and node["trace"].get("upstream_id") is not None:
        next_id = str(node["trace"]["upstream_id"])
    # "model" first: the walk's main line is label -> the model that produced it -> its corpus and base model
    items = sorted(m.lineage.items() if m else [], key=lambda kv: (kv[0] != "model", kv[0] != "policy"))
    for what, rel in items:
        if not Path(rel).is_absolute() and not (run_dir / Path(rel).parts[0] / "manifest.json").is_file():
            # the engine keeps in-run paths relative to the run dir and others absolute: this is a plain value
            node["from"].append({"what": what, "value": rel})
            continue
        p = Path(rel) if Path(rel).is_absolute() else run_dir / rel
        up = _stage_of(p, run_dir)
        entry: dict[str, Any] = {"what": what, "path": str(p), "exists": p.exists()}
        if up == name:
            entry["in_stage"] = True
        if up is not None and up != name:
            entry["stage"] = up
            entry["node"] = (_node(up, run_dir, next_id, stages, seen) if up not in seen
                             else {"stage": up, "seen": True})
        node["from"].append(entry)
    return node


def trace_lineage(run_dir: str | os.PathLike[str], row_id: str,
                  stages: Mapping[str, Any] | None = None, *, start: str | None = None) -> dict[str, Any]:
    """The lineage tree of `row_id` (see module docstring); raises `LineageError` when no stage knows it.

    `start`: the stage to start from; default the label stage when it knows the id (the command is about a
    predicted label), else the latest stage that does."""
    from adnanny import stages as pkg

    rd = Path(run_dir)
    if not rd.is_dir():
        raise LineageError(f"run directory `{rd}` does not exist")
    if stages is None:
        from adnanny.config import installed_stages

        stages = installed_stages()
    order = [n for n in pkg.STAGE_ORDER if n in stages] + [n for n in stages if n not in pkg.STAGE_ORDER]
    if start is not None:
        if start not in stages:
            raise LineageError(f"--stage {start!r} is not an installed stage ({list(order)})")
        order = [start]
    elif "label" in order:
        order = [n for n in order if n != "label"] + ["label"]
    searched = []
    for name in reversed(order):
        out = rd / name
        if not out.is_dir() or read_manifest(out) is None:
            continue
        searched.append(name)
        t = stages[name].trace(out, row_id)
        if t is not None:
            return {"id": row_id, "run_dir": str(rd), "root": _node(name, rd, row_id, stages, set())}
    raise LineageError(f"id {row_id!r} is not known to any stage of `{rd}` (asked: {searched or 'no finished stage'})")


def _short(v: Any, limit: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    s = s.replace("\n", "\\n")
    return s if len(s) <= limit else s[:limit - 3] + "..."


def format_lineage(tree: Mapping[str, Any], *, full: bool = False) -> str:
    """The tree as indented text (`full=True`: no shortening of prompts and responses)."""
    lines = [f"lineage of id {tree['id']!r} in {tree['run_dir']}"]

    def walk(node: Mapping[str, Any], depth: int) -> None:
        pad = "  " * depth
        if node.get("seen"):
            lines.append(f"{pad}{node['stage']} (see above)")
            return
        lines.append(f"{pad}{node['stage']}  [{node['status']}]  {node['folder']}")
        t = node.get("trace")
        if isinstance(t, Mapping):
            for k, v in t.items():
                lines.append(f"{pad}  · {k}: {v if full and isinstance(v, str) else _short(v)}")
        elif t is None:
            lines.append(f"{pad}  · (this stage has no record of the id)")
        for e in node.get("from", []):
            if "value" in e:
                lines.append(f"{pad}  <- {e['what']}: {e['value']}")
                continue
            where = "" if e.get("exists", True) else "  (missing!)"
            if "node" in e:
                lines.append(f"{pad}  <- {e['what']}: {e['path']}{where}")
                walk(e["node"], depth + 2)
            elif e.get("in_stage"):
                lines.append(f"{pad}  <- {e['what']}: {e['path']} (in this stage's folder){where}")
            else:
                lines.append(f"{pad}  <- {e['what']}: {e['path']} (outside the run){where}")

    walk(tree["root"], 0)
    return "\n".join(lines)
