"""Toy stages for the engine's tests (no tests here): small, deterministic, resumable the way the real stages are.

`cook` writes a corpus in chunks (one file per chunk, skipped when present: its own resume, like adnanny-cook's),
sleeping `delay` seconds per chunk so a test can SIGKILL it mid-stage; `train` "fits" label counts and writes a
loss log; `label` predicts the held-out rows and reports metrics in the flow's schema (adnanny.report). Loaded by
the other test files with `load_toys()` (the suite runs with --import-mode=importlib, so no sibling imports).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from adnanny.stage import StageContext, StageResult, Support
from adnanny_cook.settings import Settings


class CookConfig(Settings):
    """Toy cooking."""

    rows: int = Field(12, ge=1, description="corpus rows")
    chunk: int = Field(3, ge=1, description="rows per chunk file")
    delay: float = Field(0.0, ge=0, description="seconds to sleep per chunk")


class TrainConfig(Settings):
    """Toy training."""

    steps: int = Field(5, ge=1, description="steps")
    base: str = Field("/models/toy-base", description="base model path (outside the run)")


class LabelConfig(Settings):
    """Toy labeling."""

    held_out: int = Field(6, ge=1, description="held-out rows")
    fp8_supported: bool = Field(False, description="pretend-free: whether to claim FP8 serving (dry-run lines)")


def _rows(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"id": f"r{i}", "prompt": f"query {i} / ad {rng.randint(0, 99)}",
             "response": f"<Reason>because {i}</Reason><Label>{rng.choice(['bad', 'good'])}</Label>",
             "label": rng.choice(["bad", "good"])} for i in range(n)]


class ToyCook:
    name = "cook"
    requires: tuple[str, ...] = ()
    Config = CookConfig

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config
        rows = _rows(ctx.flow.seed, cfg.rows)
        chunks = ctx.out / "chunks"
        chunks.mkdir(exist_ok=True)
        done = 0
        for i in range(0, len(rows), cfg.chunk):
            f = chunks / f"{i // cfg.chunk:04d}.jsonl"
            if f.exists():
                continue
            time.sleep(cfg.delay)
            tmp = f.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows[i:i + cfg.chunk]))
            tmp.rename(f)
            done += 1
            ctx.log(f"chunk {f.name}")
        corpus = "".join(p.read_text() for p in sorted(chunks.glob("*.jsonl")))
        (ctx.out / "corpus.jsonl").write_text(corpus)
        n = len(rows)
        return StageResult(
            metrics={"funnel": {"query_ad": {"inputs": n, "requested": n, "candidates": n, "schema_pass": n - 1,
                                             "filter_pass": n - 2, "kept": n - 2, "label_only": 2}},
                     "golden": {"query_ad": {"passed": False, "measured": {"format": 0.5},
                                             "thresholds": {"format": 0.9}, "action": "trained label-only"}},
                     "teacher": {"model": "toy", "endpoint": "http://127.0.0.1:0/v1"},
                     "chunks_written": None},
            artifacts={"corpus": "corpus.jsonl"}, notes=["golden gate failed for query_ad: trained label-only"])

    def supports(self, config: Any, flow: Any) -> list[Support]:
        return [Support("toy cooking", True)]

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        f = out / "corpus.jsonl"
        for line in f.read_text().splitlines() if f.is_file() else []:
            r = json.loads(line)
            if r["id"] == row_id:
                return {"teacher_prompt": r["prompt"], "teacher_response": r["response"]}
        return None


class ToyTrain:
    name = "train"
    requires: tuple[str, ...] = ("cook",)
    Config = TrainConfig

    def run(self, ctx: StageContext) -> StageResult:
        corpus = ctx.inputs["cook"] / "corpus.jsonl"
        rows = [json.loads(x) for x in corpus.read_text().splitlines()]
        counts = {lab: sum(r["label"] == lab for r in rows) for lab in ("bad", "good")}
        (ctx.out / "model").mkdir(exist_ok=True)
        (ctx.out / "model" / "weights.json").write_text(json.dumps(counts, sort_keys=True))
        with (ctx.out / "log.jsonl").open("w") as f:
            for s in range(ctx.config.steps):
                f.write(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n")
        return StageResult(metrics={"tokens_per_s": 123.0, "steps": ctx.config.steps,
                                    "val": {"query_ad": {"bacc": 0.61, "auc": 0.66}}},
                           artifacts={"model": "model", "log": "log.jsonl"},
                           lineage={"corpus": str(corpus), "base_model": ctx.config.base})

    def supports(self, config: Any, flow: Any) -> list[Support]:
        return [Support("toy training", True)]

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        return None  # a model knows no row ids; the walk passes through its lineage


class ToyLabel:
    name = "label"
    requires: tuple[str, ...] = ("train",)
    Config = LabelConfig

    def run(self, ctx: StageContext) -> StageResult:
        weights = json.loads((ctx.inputs["train"] / "model" / "weights.json").read_text())
        guess = max(weights, key=lambda k: (weights[k], k))
        ids = [f"r{i}" for i in range(ctx.config.held_out)]
        (ctx.out / "predictions.jsonl").write_text("".join(
            json.dumps({"id": i, "relevance": guess, "score": int(hashlib.md5(i.encode()).hexdigest(), 16) % 100
                        / 100}) + "\n" for i in ids))

        def sysm(b: float) -> dict[str, Any]:
            return {"metrics": {"bacc": b, "acc": b + 0.01, "model_dr": 0.4, "dr": 0.35, "pos_acc": 0.7,
                                "neg_acc": 0.6, "auc": b + 0.05}, "ci": {"bacc": [b - 0.05, b + 0.05]},
                    "n": len(ids), "parse_error_rate": 0.0}

        return StageResult(
            metrics={"tables": {"query_ad": {"bad": {"adnanny": sysm(0.7), "prompted": sysm(0.55),
                                                     "lexical": sysm(0.75)}}},
                     "paired": {"query_ad": {"bad": {
                         "adnanny-prompted": {"metric": "bacc", "diff": 0.15, "lo": 0.05, "hi": 0.25},
                         "adnanny-lexical": {"metric": "bacc", "diff": -0.05, "lo": -0.09, "hi": -0.01}}}},
                     "precision": {"query_ad": {"bf16": {"bacc": 0.7, "acc": 0.71},
                                                "fp8": {"bacc": 0.69, "acc": 0.7}}},
                     "throughput": {"label_only": 4.0, "label_reasoning": 1.5},
                     "cost": {"label_only": {"usd_per_1m": 12.5, "usd_per_s": 0.0027, "samples_per_s": 4.0}},
                     "injection": {"n": 4, "changed": 1, "rate": 0.25}},
            artifacts={"predictions": "predictions.jsonl"},
            lineage={"model": str(ctx.inputs["train"] / "model"), "prompted_model": "toy-teacher"})

    def supports(self, config: Any, flow: Any) -> list[Support]:
        return [Support("toy labeling on CPU", True),
                Support("FP8 serving on vLLM", config.fp8_supported, "" if config.fp8_supported else
                        "toy: no vLLM here")]

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        f = out / "predictions.jsonl"
        for line in f.read_text().splitlines() if f.is_file() else []:
            r = json.loads(line)
            if r["id"] == row_id:
                return {"prediction": r}
        return None


def toy_stages() -> dict[str, Any]:
    return {"cook": ToyCook(), "train": ToyTrain(), "label": ToyLabel()}

