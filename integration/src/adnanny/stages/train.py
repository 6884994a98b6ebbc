"""The `train` stage: adnanny-sft on the cook stage's corpus -> an exported AdNanny model (`model/`).

Through adnanny-sft's public API only (`adnanny_sft.load_config` + `adnanny_sft.train`): the same run as
`adnanny-sft train --config ...`, with its checkpoints, resume (a killed stage resumes from its last checkpoint),
calibrated threshold and `adnanny_model.json`.

The recipe is adnanny-sft's relevance-learning recipe, read at run time from `adnanny_sft.fixture.FIXTURE_RECIPE`
(its `sft` table: model size, lr schedule, class balance, input-loss weight, target forms ...), so the flow trains
the way the shared fixture was shown to learn relevance and follows any improvement of it without a copy here.
This stage then sets what belongs to the flow: the corpus, the tokenizer (the cook stage's sample-world tokenizer
for the tiny model), the flow's tasks, paper §4.2's instance and task weighting (on by default: the fixture
switches them off only to stay cheap and deterministic), the sizes below, and any `sft` key in `overrides`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from adnanny.stage import StageContext, StageResult, Support, stage_artifact
from adnanny_cook.settings import Settings

__all__ = ["STAGE", "TrainStage", "TrainStageConfig", "recipe"]


def recipe() -> dict[str, Any]:
    """adnanny-sft's relevance-learning recipe (the `sft` table of `FIXTURE_RECIPE`), a copy."""
    from adnanny_sft.fixture import FIXTURE_RECIPE

    return json.loads(json.dumps(FIXTURE_RECIPE["sft"]))


class TrainStageConfig(Settings):
    """The train stage: adnanny-sft with instance + task weighting on the cook corpus, adnanny-sft's recipe.

    Sizes: 0 / empty always means "the recipe's value" (today 1,600 steps x 32 rows, tiny DeepSeek-V3 h64 x 4
    layers, input loss 0.3: relevance is learned between steps ~800 and ~1,400 on the default corpus; at 800 a
    run may not have crossed, session 5). The 800-step default trained in 268 s on 2 cores with little else
    running. Pilots on
    this shared 2-core machine at load 7-9: 1.2-5 s per 8-row step, ~11 s per 32-row step (so 800 x 32 is ~2.5 h
    here); adnanny-sft's README measured 0.30 s per 16-row step on a quieter machine, i.e. ~8 min for the recipe
    on 2 idle cores — the embedded default keeps the recipe (learning relevance is the acceptance; 15 min for
    the whole flow is a goal). CI: `steps = 60`, `batch_size = 8` (~2 min here; format only, not relevance).
    """

    model_config = SettingsConfigDict(cli_prog_name="adnanny run --train")

    base_model: str = Field("", description="base model: `tiny-deepseek-v3`, `smollm2` or an HF dir (empty: the "
                                            "recipe's)")
    tokenizer: str = Field("", description="tokenizer dir (empty: the cook stage's sample-world tokenizer for the "
                                           "tiny model, the model's own otherwise)")
    steps: int = Field(0, ge=0, description="optimizer steps (0: the recipe's max_steps)")
    batch_size: int = Field(0, ge=0, description="rows per step (0: the recipe's)")
    lr: float = Field(0.0, ge=0, description="peak learning rate (0: the recipe's)")
    instance_weighting: bool = Field(True, description="paper eq. 3-5 per-sample weights")
    task_weighting: bool = Field(True, description="paper eq. 6-7 task weights from held-out metrics")
    eval_rows_per_task: int = Field(32, ge=1, description="held-out rows the task-weight evaluator generates on")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="any other adnanny-sft train key (e.g. "
                                                                        "{ lora = true, public_data = \"x.jsonl\" })")


def _sft_config(ctx: StageContext, cfg: TrainStageConfig) -> Any:
    from adnanny_cook.tasks import load_task
    from adnanny_sft import load_config

    cook = Path(ctx.inputs["cook"])
    corpus = stage_artifact(cook, "corpus") or cook / "corpus"
    keys = recipe()
    tasks = [load_task(t).name for t in (getattr(ctx.flow, "tasks", None) or [])] or keys.get("tasks", [])
    base = cfg.base_model or keys.get("model", "tiny-deepseek-v3")
    keys.update(model=base, corpus=str(corpus), tasks=tasks, output_dir=str(ctx.out / "sft"),
                instance_weighting=cfg.instance_weighting, task_weighting=cfg.task_weighting,
                eval_rows_per_task=cfg.eval_rows_per_task, threads=cfg.threads, progress=False, tensorboard=False,
                seed=int(getattr(ctx.flow, "seed", 0)))
    if cfg.steps:
        keys["max_steps"] = cfg.steps
    if cfg.batch_size:
        keys["batch_size"] = cfg.batch_size
    if cfg.lr:
        keys["lr"] = cfg.lr
    tok = cfg.tokenizer or (str(stage_artifact(cook, "tokenizer") or cook / "world" / "tokenizer")
                            if base.startswith("tiny") else "")
    if tok:
        keys["tokenizer"] = tok
    keys.update(cfg.overrides)
    return load_config(None, keys)



class TrainStage:
    """cook corpus -> `model/` (HF dir + adnanny_model.json with calibrated thresholds)."""

    name = "train"
    requires: tuple[str, ...] = ("cook",)
    Config = TrainStageConfig

    def run(self, ctx: StageContext) -> StageResult:
        from adnanny_sft import train
        from adnanny_sft.logs import read_log

        cfg: TrainStageConfig = ctx.config
        sft = _sft_config(ctx, cfg)
        ctx.log(f"train: adnanny-sft on {sft.corpus}: {sft.model} (h{sft.tiny_hidden_size} x {sft.tiny_layers}) "
                f"{sft.max_steps} steps x {sft.batch_size} rows, lr {sft.lr}, instance weighting "
                f"{sft.instance_weighting}, task weighting {sft.task_weighting}")
        t0 = time.perf_counter()
        result = train(sft)
        if result.model_dir is None:
            from adnanny.flow import FlowError

            raise FlowError(f"train: adnanny-sft wrote no model in {sft.output_dir} (export is off in `overrides`)")
        model = ctx.out / "model"
        if model.exists() or model.is_symlink():
            import shutil

            shutil.rmtree(model) if model.is_dir() and not model.is_symlink() else model.unlink()
        Path(result.model_dir).rename(model)
        manifest = json.loads((Path(sft.output_dir) / "manifest.json").read_text())
        recs = read_log(Path(sft.output_dir))
        steps = [r for r in recs if r.get("kind") == "train"]
        tps = [float(r["tokens_per_s"]) for r in steps if r.get("tokens_per_s")]
        val = {t: {"bacc": float(th["val_bacc"]), "auc": float(th["val_auc"]), "threshold": float(th["threshold"]),
                   "n": int(th["n"])} for t, th in (manifest.get("thresholds") or {}).items()}
        for t, v in val.items():
            ctx.log(f"train: {t}: validation BACC {v['bacc']:.1%}, AUC {v['auc']:.3f} on {v['n']} rows")
        # the log the report reads: one record per optimizer step (adnanny-sft's own log also holds data/eval records)
        from adnanny_cook.corpus import atomic_write_bytes

        atomic_write_bytes(ctx.out / "log.jsonl", "".join(
            json.dumps({k: r.get(k) for k in ("step", "loss", "nll", "lr", "grad_norm", "tokens_per_s")}) + "\n"
            for r in steps).encode())
        notes = []
        if result.resumed_from:
            notes.append(f"train: resumed from step {result.resumed_from} of adnanny-sft's checkpoints.")
        return StageResult(
            metrics={"tokens_per_s": sum(tps) / len(tps) if tps else 0.0, "steps": result.steps, "val": val,
                     "final_loss": steps[-1]["nll"] if steps else None, "rows": result.data.get("summary"),
                     "seconds": round(time.perf_counter() - t0, 1)},
            artifacts={"model": "model", "log": "log.jsonl", "sft_log": "sft/log.jsonl",
                       "sft_manifest": "sft/manifest.json"},
            notes=notes,
            lineage={"corpus": sft.corpus, "base_model": sft.model, **({"tokenizer": sft.tokenizer}
                                                                      if sft.tokenizer else {})})

    def supports(self, config: TrainStageConfig, flow: Any) -> list[Support]:
        import importlib.metadata as md

        keys = recipe()
        base = config.base_model or keys.get("model", "tiny-deepseek-v3")
        out = [Support(f"train: adnanny-sft {md.version('adnanny-sft')} on {base} with instance + task weighting",
                       True, "recipe: adnanny_sft.fixture.FIXTURE_RECIPE")]
        backend = str(config.overrides.get("backend", "hf"))
        if backend != "hf":
            eps = {e.name for e in md.entry_points(group="adnanny_sft.backends")}
            out.append(Support(f"train backend: {backend}", backend in eps,
                               f"entry point adnanny_sft.backends:{backend}" if backend in eps else
                               f"no adnanny_sft.backends entry point `{backend}` installed (found {sorted(eps)})"))
        if not base.startswith("tiny"):
            try:
                from adnanny_ckpt.models import resolve_model

                out.append(Support(f"base model {base}", True, str(resolve_model(base))))
            except Exception as e:  # noqa: BLE001 - reported in the dry run
                out.append(Support(f"base model {base}", False, str(e)))
        from adnanny_sft import SFTConfig

        fields = set(getattr(SFTConfig, "model_fields", {}) or getattr(SFTConfig, "__dataclass_fields__", {}))
        unknown = sorted(k for k in config.overrides if fields and k not in fields)
        if unknown:
            out.append(Support(f"adnanny-sft keys {unknown}", False, "not keys of this adnanny-sft version"))
        layout = config.overrides.get("layout")
        if layout:
            eps = {e.name for e in md.entry_points(group="adnanny_sft.backends")}
            ok = backend in eps and backend != "hf"
            out.append(Support(f"parallel layout {layout}", ok,
                               f"through the `{backend}` backend (torchrun at run time)" if ok else
                               "a layout needs `overrides.backend` = an installed non-HF backend (megatron)"))
        if str(config.overrides.get("device", "cpu")) == "cuda":
            import torch

            ok = bool(torch.cuda.is_available())
            out.append(Support("train on cuda", ok, f"{torch.cuda.device_count()} GPU(s) here" if ok else
                               "no CUDA device on this machine"))
        return out

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        """The model, corpus and base model, when `row_id` is a row (or input) of the training corpus."""
        import polars as pl

        mf = Path(out) / "sft" / "manifest.json"
        if not mf.is_file():
            return None
        m = json.loads(mf.read_text())
        corpus = Path(m["config"]["corpus"])
        cfile = corpus / "corpus.parquet" if corpus.is_dir() else corpus
        if not cfile.is_file():
            return None
        rid = str(row_id)
        df = pl.read_parquet(cfile, columns=["id", "split", "provenance"]).filter(
            (pl.col("id") == rid) | pl.col("provenance").str.contains(f'"source_id": {json.dumps(rid)}', literal=True))
        if df.height == 0:
            return None
        return {"id": rid, "model": str(Path(out) / "model"), "base_model": m["config"]["model"],
                "corpus": str(cfile), "corpus_sha256": m["inputs"]["corpus"]["sha256"],
                "rows": [{"row": r["id"], "split": r["split"]} for r in df.iter_rows(named=True)],
                "steps": m["steps"]}


STAGE = TrainStage()
