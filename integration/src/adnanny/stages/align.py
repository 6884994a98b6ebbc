"""The `align` stage: adnanny-rl's GRPO (paper §4.3) from the train stage's model -> an aligned model (`model/`).

Through adnanny-rl's public API (`adnanny_rl.load_config` + `adnanny_rl.train.main`, i.e. `adnanny-rl train
--config`): its rollouts, KL to the frozen start model, checkpoints and resume (a killed stage resumes from the
last checkpoint), and its held-out evaluation before and after.

Rewards, one adnanny-rl task each:
* `labels` — every labeling task of the flow, on the cook corpus (its eval split = the held-out prompts): agreement
  of the parsed labels with gold, a penalty for an output that does not parse;
* `retrieval` — `keyword_query` prompts from the sample world: eq. 8's recall gain of a frozen BM25 index when the
  generated queries are added to their ad (held-out clicked queries of the click logs);
* `ctr` — `ad_rewrite` prompts made from the sample world's ad catalog: eq. 8's predicted-CTR uplift of a frozen
  click model fitted on the earlier sessions.
The downstream rewards need the sample world (the cook stage's `world`); a task the trained model never saw gets
mostly format penalties — the stage says so in its notes rather than leaving the reward out silently.

Metrics: the mean held-out reward of the first labels task before/after with a paired bootstrap interval over
prompts (seeded), every task's before/after, and the mean KL of the run; artifact `log` is adnanny-rl's JSONL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from adnanny.stage import StageContext, StageResult, Support, stage_artifact
from adnanny_cook.settings import Settings

__all__ = ["AlignStage", "AlignStageConfig", "STAGE", "paired_bootstrap_mean"]


class AlignStageConfig(Settings):
    """The align stage: GRPO with label, retrieval and CTR rewards from the trained model.

    Sizes, from a pilot on this shared 2-core machine at load ~8 (tiny model, 3 reward tasks, P 4 x G 4, 24
    tokens): 24-46 s per step plus ~150 s of fixed cost (two model copies, BM25 index, CTR model fit on ~31k
    impressions, held-out evaluation before and after of 8 prompts x 3 tasks): 3 steps took 261 s. The embedded
    default runs `steps = 16` (~2-3 min on 2 idle cores), 32 held-out prompts per task; CI: `steps = 4`,
    `eval_prompts = 8`, `rewards = ["labels"]`.
    """

    model_config = SettingsConfigDict(cli_prog_name="adnanny run --align")

    rewards: list[Literal["labels", "retrieval", "ctr"]] = Field(
        default_factory=lambda: ["labels", "retrieval", "ctr"],
        description="reward tasks: labels (the flow's labeling tasks), retrieval (keyword_query, frozen BM25), "
                    "ctr (ad_rewrite, frozen click model)")
    downstream_weight: float = Field(0.25, gt=0, description="sampling weight of each downstream task's prompts "
                                                             "(labels tasks have 1)")
    steps: int = Field(16, ge=1, description="GRPO rollout steps")
    prompts_per_step: int = Field(4, ge=1, description="P: prompts per step")
    group_size: int = Field(4, ge=2, description="G: completions per prompt")
    max_completion_tokens: int = Field(24, ge=4, description="tokens per completion (label-only answers are short)")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    beta: float = Field(0.04, ge=0, description="KL coefficient")
    temperature: float = Field(1.0, gt=0, description="rollout temperature")
    eval_prompts: int = Field(32, ge=1, description="held-out prompts per task scored before and after")
    save_every: int = Field(10, ge=1, description="checkpoint every N steps")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="any other adnanny-rl train key")


def paired_bootstrap_mean(before: list[float], after: list[float], *, n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(after - before) over prompts resampled with replacement (paired)."""
    import numpy as np

    if len(before) != len(after) or not before:
        raise ValueError(f"paired bootstrap needs equal non-empty lists, got {len(before)} and {len(after)}")
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))



def _ctr_prompts(world: Path, out: Path) -> Path:
    """`ad_rewrite` inputs from the sample world's catalog (title, description, landing page)."""
    import polars as pl

    from adnanny_cook.corpus import atomic_write_bytes

    path = out / "data" / "ad_rewrite.parquet"
    if not path.is_file():
        import io

        ads = pl.read_parquet(world / "catalog" / "ads.parquet")
        df = ads.select(pl.col("id").cast(pl.Utf8), pl.col("title").alias("ad_title"),
                        pl.col("description").alias("ad_description"), pl.col("landing_page"))
        buf = io.BytesIO()
        df.write_parquet(buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    return path


class AlignStage:
    """train's model -> `model/` (GRPO), with the held-out reward before and after."""

    name = "align"
    requires: tuple[str, ...] = ("cook", "train")
    Config = AlignStageConfig

    def _rl_config(self, ctx: StageContext, cfg: AlignStageConfig) -> tuple[Any, list[str]]:
        from adnanny_cook.tasks import load_task
        from adnanny_rl import load_config

        cook, train = Path(ctx.inputs["cook"]), Path(ctx.inputs["train"])
        policy = stage_artifact(train, "model") or train / "model"
        corpus = stage_artifact(cook, "corpus") or cook / "corpus"
        world = stage_artifact(cook, "world") or cook / "world"
        trained = set(json.loads((policy / "adnanny_model.json").read_text()).get("tasks", {}))
        notes: list[str] = []
        tasks: list[dict[str, Any]] = []
        if "labels" in cfg.rewards:
            for ref in getattr(ctx.flow, "tasks", None) or ["query_ad"]:
                spec = load_task(ref)
                if spec.kind == "label":
                    tasks.append({"task": spec.name, "data": str(corpus), "reward": "labels", "mode": "label"})
        have_world = (world / "catalog" / "ads.parquet").is_file()
        for kind, task in (("retrieval", "keyword_query"), ("ctr", "ad_rewrite")):
            if kind not in cfg.rewards:
                continue
            if not have_world:
                notes.append(f"align: the `{kind}` reward needs the sample world's ads and click logs; the cook "
                             f"folder has none, so it is not used.")
                continue
            data = (str(world / "keyword_query.parquet") if kind == "retrieval" else str(_ctr_prompts(world, ctx.out)))
            tasks.append({"task": task, "data": data, "reward": kind, "mode": "label", "world": str(world),
                          "weight": cfg.downstream_weight})
            if trained and task not in trained:
                notes.append(f"align: the `{kind}` reward runs on `{task}`, a task the trained model was not "
                             f"trained on (its tasks: {sorted(trained)}); its rewards are mostly format penalties.")
        if not tasks:
            from adnanny.flow import FlowError

            raise FlowError(f"align: no reward task to run (`align.rewards` = {cfg.rewards}, flow tasks "
                            f"{getattr(ctx.flow, 'tasks', None)})")
        micro = cfg.prompts_per_step * cfg.group_size
        keys: dict[str, Any] = {
            "policy": str(policy), "output_dir": str(ctx.out / "rl"), "tasks": tasks, "steps": cfg.steps,
            "prompts_per_step": cfg.prompts_per_step, "group_size": cfg.group_size, "micro_batch": micro,
            "max_completion_tokens": cfg.max_completion_tokens, "lr": cfg.lr, "beta": cfg.beta,
            "temperature": cfg.temperature, "eval_prompts": cfg.eval_prompts, "save_every": cfg.save_every,
            "seed": int(getattr(ctx.flow, "seed", 0)), "threads": cfg.threads, **cfg.overrides}
        return load_config(None, keys), notes

    def run(self, ctx: StageContext) -> StageResult:
        from adnanny_rl.train import main

        cfg: AlignStageConfig = ctx.config
        rl, notes = self._rl_config(ctx, cfg)
        ctx.log(f"align: GRPO from {rl.policy}: {rl.steps} steps x {rl.prompts_per_step} prompts x "
                f"{rl.group_size}, tasks {[(t.task, t.reward) for t in rl.tasks]}")
        t0 = time.perf_counter()
        summary = main(rl)
        model = ctx.out / "model"
        if model.exists():
            import shutil

            shutil.rmtree(model)
        Path(summary["model"]).rename(model)
        # adnanny-rl carries the task definitions and the model manifest to the aligned model, with each labeling
        # task's threshold refitted on the held-out split (RL moves the scores the threshold was fitted on).
        for name, c in (summary.get("calibration") or {}).items():
            b = {k: float("nan") if v is None else v for k, v in c["before"].items()}
            notes.append(f"align: `{name}` threshold refitted after RL on the held-out split: "
                         f"{b.get('threshold', float('nan')):.3f} -> {c['threshold']:.3f} (val BACC "
                         f"{b.get('val_bacc', float('nan')):.3f} -> {c['val_bacc']:.3f}, AUC "
                         f"{b.get('val_auc', float('nan')):.3f} -> {c['val_auc']:.3f})")
        from adnanny_sft.logs import read_log

        recs = read_log(ctx.out / "rl")
        kls = [float(r["kl"]) for r in recs if r.get("kind") == "train" and r.get("kl") is not None]
        before, after = summary["eval_before"], summary["eval_after"]
        per_task = {}
        for name in before:
            b, a = before[name], after.get(name, [])
            lo, hi = paired_bootstrap_mean(b, a, seed=int(getattr(ctx.flow, "seed", 0))) if len(a) == len(b) \
                else (float("nan"), float("nan"))
            per_task[name] = {"before": sum(b) / len(b), "after": sum(a) / len(a) if a else None, "ci": [lo, hi],
                              "n": len(b)}
        main_task = next((t.task for t in rl.tasks if t.reward == "labels"), rl.tasks[0].task)
        m = per_task.get(main_task, {})
        for name, v in per_task.items():
            ctx.log(f"align: {name}: held-out reward {v['before']:.3f} -> {v['after']:.3f} "
                    f"(after - before 95% CI [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], n={v['n']})")
        # the log the report reads: one record per step with step, reward (mean over the step's tasks), kl
        steps_log = []
        for r in recs:
            if r.get("kind") == "train":
                rew = [t["reward"] for t in (r.get("tasks") or {}).values() if "reward" in t]
                steps_log.append({"step": r["step"], "reward": sum(rew) / len(rew) if rew else None, "kl": r["kl"],
                                  "tasks": r.get("tasks")})
        from adnanny_cook.corpus import atomic_write_bytes

        atomic_write_bytes(ctx.out / "log.jsonl", "".join(json.dumps(x, default=str) + "\n"
                                                          for x in steps_log).encode())
        return StageResult(
            metrics={"reward_before": m.get("before"), "reward_after": m.get("after"), "reward_ci": m.get("ci"),
                     "reward_task": main_task, "kl": sum(kls) / len(kls) if kls else 0.0, "tasks": per_task,
                     "steps": rl.steps, "calibration": summary.get("calibration") or {},
                     "seconds": round(time.perf_counter() - t0, 1)},
            artifacts={"model": "model", "log": "log.jsonl", "rl_log": "rl/log.jsonl", "summary": "rl/summary.json"},
            notes=notes,
            lineage={"policy": str(rl.policy), **{f"data:{t.task}": t.data for t in rl.tasks}})

    def supports(self, config: AlignStageConfig, flow: Any) -> list[Support]:
        import importlib.util

        ok = importlib.util.find_spec("adnanny_rl") is not None
        out = [Support(f"align: adnanny-rl GRPO, rewards {config.rewards}", ok,
                       "HF backend + transformers rollout engine in-process" if ok else "adnanny-rl is not installed")]
        from adnanny_rl import RLConfig

        unknown = sorted(k for k in config.overrides
                         if k not in RLConfig.model_fields and k not in ("engine", "backend"))
        if unknown:
            out.append(Support(f"adnanny-rl keys {unknown}", False, "not keys of this adnanny-rl version"))
        engine = str(config.overrides.get("engine", "transformers"))
        if engine != "transformers":
            ok = importlib.util.find_spec("vllm") is not None
            out.append(Support(f"rollout engine: {engine}", False,
                               "adnanny-rl's recipe drives the transformers engine only; vLLM weight sync is "
                               "unit-tested, not wired" + ("" if ok else " (vllm not installed)")))
        backend = str(config.overrides.get("backend", "hf"))
        if backend != "hf":
            out.append(Support(f"rl backend: {backend}", False, "adnanny-rl's recipe builds the HF backend; the "
                                                                "Megatron backend passes the protocol but is not "
                                                                "selectable from the recipe yet"))
        return out

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        """None: align writes no per-row outputs (a label's walk passes through its manifest's `policy` lineage to
        the train stage, which knows the corpus and base model)."""
        return None


STAGE = AlignStage()
