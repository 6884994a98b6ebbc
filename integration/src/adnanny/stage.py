"""The contract between the flow engine (`adnanny.flow`) and its stages (`adnanny.stages.*`).

A stage is a small object that turns the folders of earlier stages into its own folder, through the packages'
public APIs and CLIs only (design.md: data flows between stages as folders in open formats). The engine owns
everything around it — the run directory, `manifest.json`, skip-if-unchanged, resume, locks, progress, lineage
walking — so a stage never writes its own manifest and never looks at another stage's config.

Why a protocol and not a base class: each stage is one readable module (torchtune's recipe style) whose only
obligations are the five names below; the engine can be tested with toy stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Stage", "StageContext", "StageResult", "Support", "stage_artifact"]


@dataclass(frozen=True)
class StageContext:
    """What the engine hands a stage's `run`.

    `out` is `RUN_DIR/<name>/`: it exists, and holds a partial earlier attempt when the engine is resuming a
    killed run (the stage reuses its package's own resume — cook, sft, rl, label all resume from their folder).
    `inputs` maps each name in the stage's `requires` to that completed stage's folder. `flow` is the whole
    validated flow config (read-only: the task list, seed, sizes); `config` is this stage's own table of it.
    """

    name: str
    out: Path
    run_dir: Path
    inputs: Mapping[str, Path]
    config: Any
    flow: Any
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    """What a stage returns; the engine writes it into `RUN_DIR/<name>/manifest.json`.

    `metrics`: JSON-able numbers the report reads (schema documented in `adnanny.report`).
    `artifacts`: name -> path relative to `out` (e.g. {"model": "model", "predictions": "label/query_ad.parquet"}).
    `notes`: sentences the report prints verbatim (e.g. "golden gate failed for query_ad: trained label-only").
    `lineage`: name -> path (absolute or relative to `out`) of what this stage was made from, for
    `adnanny lineage` (e.g. {"base_model": ".../smollm2", "corpus": "../cook/corpus"}).
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lineage: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Support:
    """One line of `adnanny run --dry-run`: whether the installed packages support one thing a config asks for."""

    what: str
    supported: bool
    why: str = ""


@runtime_checkable
class Stage(Protocol):
    """A flow stage. `Config` is an `adnanny_cook.settings.Settings` subclass (unknown keys are errors).

    Optional attributes the engine reads with `getattr` (so stages without them keep working):
    `optional_requires` — names in `requires` the stage can do without (e.g. quantize takes align's model, or
    train's when the flow does not align); such a stage gets no `ctx.inputs` entry when the flow neither runs it
    nor has it finished. `version` — a string folded into the stage's key: bump it when the stage's code changes
    what it writes, so finished run dirs rerun the stage.
    """

    name: str
    requires: tuple[str, ...]
    Config: type[Any]

    def run(self, ctx: StageContext) -> StageResult:
        """Do the work into `ctx.out`; raise the package's error (one line, naming file/row/key) on failure."""
        ...

    def supports(self, config: Any, flow: Any) -> list[Support]:
        """For `--dry-run`: what of `config` the installed packages can do here, and what they cannot yet."""
        ...

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        """For `adnanny lineage`: what this stage's folder knows about one row/label id (None if nothing).

        The walk asks each stage on the lineage path about the same id; a stage whose rows carry other ids
        upstream (a distilled row made from label row X) returns `"upstream_id": X` in its dict."""
        ...


def stage_artifact(folder: Path, key: str) -> Path | None:
    """An artifact of a finished stage's folder, by the name its `manifest.json` gives it (None when the folder has
    no readable manifest or no such artifact): how a stage finds an upstream stage's outputs without assuming
    their layout."""
    mf = folder / "manifest.json"
    if not mf.is_file():
        return None
    try:
        arts = json.loads(mf.read_text()).get("artifacts") or {}
    except ValueError:
        return None
    if isinstance(arts, dict) and isinstance(arts.get(key), str):
        return folder / arts[key]
    return None
