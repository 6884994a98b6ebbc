"""The `distill` stage: a smaller student trained on AdNanny's own outputs, with and without data-quality control.

The paper (§5.3, Table 6) distills AdNanny into AdNanny-7B on AdNanny-generated, reasoning-augmented data and
shows that data-quality control (DQC) on those outputs is what lets the student match its teacher. Here:

1. **Pool**: unlabeled inputs the student learns from — the cook corpus's training inputs (gold labels
   dropped; never a held-out row), the first `pool_rows` in a seeded order.
2. **AdNanny labels and explains them**: `adnanny-serve label` in label+reasoning mode (`pool/<task>.parquet`),
   so every row carries AdNanny's labels *and* its generated rationale.
3. **Two corpora** in adnanny-cook's corpus schema (`corpus/` and `corpus_dqc/`), each row in both target
   forms (label+reasoning and label-only) with provenance naming AdNanny's prediction:
   - *without DQC*: every output whose labels parsed;
   - *with DQC*: only outputs that pass adnanny-cook's rejection filters as cook applies them to a teacher —
     `schema_parse` (the strict parser accepts the reasoning-mode answer), `contradiction_reason` (no label the
     rationale states contradicts the tags), `boilerplate_reason` (the rationale cites the input) and
     `repetition_reason` (no degenerate repetition loops) — each drop counted by reason.
   A seeded 10% of each corpus is its `eval` split: adnanny-sft calibrates the student's threshold on AdNanny's
   labels there (no gold label reaches the student).
4. **Students** (`student/`, `student_dqc/`): adnanny-sft on a tiny model (`student_*` keys), same recipe for
   both, so the corpora are the only difference.
5. **Table 6** on the label stage's held-out rows, primary view of each task: teacher (the prompted teacher
   model, from the label stage), AdNanny (the label stage's label-only predictions), student, student+DQC —
   metrics, BACC bootstrap intervals, n.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from adnanny.stage import StageContext, StageResult, Support
from adnanny.stages.label import Config as LabelConfig
from adnanny.stages.label import _atomic_parquet, _corpus_rows, _label, corpus_dir, evaluate_system, task_views
from adnanny.stages.quantize import StageInputError, source_model, task_home
from adnanny_cook.settings import Settings

__all__ = ["Config", "DistillStage", "STAGE", "dqc_reason"]

SYSTEMS = ("teacher", "adnanny", "student", "student_dqc")


class Config(Settings):
    """`[distill]` table of the flow config."""

    source: str = Field("auto", description="which model is AdNanny: `auto` (align's, else train's), `align` or "
                                            "`train`")
    pool_rows: int = Field(192, ge=8, description="unlabeled inputs per task AdNanny labels and explains (a tiny "
                                                  "student trained on 48 rows never learned the tag format; 300 did)")
    pool_mode: str = Field("auto", pattern="^(auto|reasoning|label)$",
                           description="`reasoning`: AdNanny writes labels + rationale (generated data); `label`: "
                                       "labels only (then DQC can check only the tags); `auto`: reasoning when "
                                       "AdNanny's training corpus had reasoning rows of the task, else label")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of each student corpus kept for the "
                                                                "student's threshold calibration")
    dqc_min_words: int = Field(12, ge=0, description="DQC: shortest acceptable rationale (cook's default)")
    dqc_min_overlap: int = Field(3, ge=0, description="DQC: input content words a rationale must cite (cook's "
                                                      "default)")
    dqc_max_repeat: float = Field(0.3, gt=0, le=1, description="DQC: largest share of repeated word trigrams in "
                                                               "a rationale")
    student_model: str = Field("tiny-deepseek-v3", description="the student's architecture / base model "
                                                               "(adnanny-sft `model`)")
    student_tokenizer: str = Field("", description="tokenizer dir (default: AdNanny's model dir)")
    student_hidden_size: int = Field(32, ge=8, description="tiny student: hidden size")
    student_layers: int = Field(2, ge=1, description="tiny student: decoder layers")
    student_steps: int = Field(200, ge=1, description="optimizer steps per student")
    student_batch_size: int = Field(8, ge=1, description="rows per step")
    student_lr: float = Field(5e-3, gt=0, description="peak learning rate")
    student_input_loss_weight: float = Field(0.0, ge=0, description="adnanny-sft `input_loss_weight`")
    threads: int = Field(0, ge=0, description="torch CPU threads of the student runs (0: torch's default)")
    batch_size: int = Field(8, ge=1, description="labeling batch size")
    device: str = Field("cpu", description="cpu or cuda (labeling)")
    n_resamples: int = Field(1000, ge=0, description="bootstrap resamples of Table 6's intervals")


# ---------------------------------------------------------------------------------------------------- DQC
def dqc_reason(spec: Any, rid: str, raw: str, labels: dict[str, Any], inp: dict[str, Any], cfg: Config,
               mode: str) -> tuple[str | None, str]:
    """(drop reason or None, detail) of one AdNanny output under adnanny-cook's filters (see module docstring)."""
    from adnanny_cook.filters import (Candidate, boilerplate_reason, contradiction_reason, repetition_reason,
                                      schema_parse)

    c = Candidate(item_id=rid, sub=0, idx=0, variant="adnanny", text=raw, key=rid, labels=dict(labels))
    if mode == "label":  # nothing to judge but the tags, which parsed already
        return None, ""
    reason = (schema_parse(spec, c) or contradiction_reason(spec, c)
              or boilerplate_reason(c, inp, cfg.dqc_min_overlap, cfg.dqc_min_words)
              or repetition_reason(c, cfg.dqc_max_repeat))
    return reason, c.detail


# ---------------------------------------------------------------------------------------------------- the stage
class DistillStage:
    """Student distillation with and without DQC, and Table 6 (see the module docstring)."""

    name = "distill"
    requires: tuple[str, ...] = ("cook", "train", "align", "label")
    optional_requires: tuple[str, ...] = ("align",)  # absent when the flow switches them off
    Config = Config

    def run(self, ctx: StageContext) -> StageResult:
        import polars as pl
        from adnanny_cook import make_row, write_corpus
        from adnanny_cook.tasks import load_task_from_dir

        cfg: Config = ctx.config
        seed = int(getattr(ctx.flow, "seed", 0) or 0)
        src_stage, model_dir = source_model(ctx.inputs, cfg.source)
        if not ctx.inputs.get("label") or not ctx.inputs.get("cook"):
            raise StageInputError("the distill stage needs the cook and label stages' folders (held-out rows and "
                                  "the teacher's/AdNanny's predictions)")
        cook, label_dir = Path(ctx.inputs["cook"]), Path(ctx.inputs["label"])
        lcfg = LabelConfig(batch_size=cfg.batch_size, device=cfg.device)
        heldouts = sorted((label_dir / "heldout").glob("*.parquet"))
        tasks = [p.stem for p in heldouts if "." not in p.stem]
        if not tasks:
            raise StageInputError(f"label stage folder `{label_dir}` has no heldout/<task>.parquet")
        engine = None
        home = task_home(model_dir, ctx.inputs)
        notes: list[str] = []
        modes: dict[str, str] = {}
        rows: dict[str, list[dict[str, Any]]] = {"corpus": [], "corpus_dqc": []}
        funnel: dict[str, Any] = {}
        specs = {}
        for name in tasks:
            spec = load_task_from_dir(home, name)
            task_ref = str(home / "tasks" / f"{name}.toml")
            specs[name] = spec
            held_ids = set(pl.read_parquet(label_dir / "heldout" / f"{name}.parquet")["id"].cast(pl.Utf8).to_list())
            pool = [r for r in _corpus_rows(corpus_dir(cook), spec, "train") if r["id"] not in held_ids]
            random.Random(seed).shuffle(pool)
            pool = pool[: cfg.pool_rows]
            if not pool:
                raise StageInputError(f"no training inputs of `{name}` in `{corpus_dir(cook)}` to distill from")
            inputs = pl.DataFrame([{"id": r["id"], **{f: r.get(f) for f in spec.input_fields}} for r in pool],
                                  infer_schema_length=None)
            inp = ctx.out / "pool" / f"{name}.inputs.parquet"
            _atomic_parquet(inputs, inp)
            out = ctx.out / "pool" / f"{name}.parquet"
            mode = cfg.pool_mode if cfg.pool_mode != "auto" else _trained_mode(home, name)
            ctx.log(f"distill: {name}: AdNanny labels {inputs.height} pool inputs ({mode} mode)")
            if engine is None:
                from adnanny_serve import load_engine

                engine = load_engine(str(model_dir), device=cfg.device, batch_size=cfg.batch_size)
            _label(engine, model_dir, inp, out, lcfg, mode=mode, task=task_ref)
            pred = pl.read_parquet(out)
            if mode == "reasoning" and pred["parse_error"].is_not_null().all():
                # a model that never learned to explain (a label-only corpus): its labels still distill
                notes.append(f"{name}: no AdNanny label+reasoning output parsed; the pool was labeled label-only, "
                             "so DQC checks only the tags.")
                mode = "label"
                out = ctx.out / "pool" / f"{name}.label.parquet"
                _label(engine, model_dir, inp, out, lcfg, mode=mode, task=task_ref)
                pred = pl.read_parquet(out)
            modes[name] = mode
            by_id = {r["id"]: r for r in pool}
            f = {"pool": pred.height, "parsed": 0, "dqc_kept": 0, "dropped": {}}
            for p in pred.iter_rows(named=True):
                labels = {k: p[k] for k in spec.field_order if p.get(k) is not None}
                if p["parse_error"] or set(labels) != set(spec.field_order):
                    continue
                f["parsed"] += 1
                src = {f_: by_id[p["id"]].get(f_) for f_ in spec.input_fields}
                reason, detail = dqc_reason(spec, p["id"], p["raw"] or "", labels, src, cfg, mode)
                split = "eval" if _unit(f"{seed}:{p['id']}") < cfg.eval_fraction else "train"
                prov = {"teacher": "adnanny", "model": str(model_dir), "prediction": str(out), "id": p["id"],
                        "dqc": reason or "kept", **({"dqc_detail": detail} if detail else {})}
                made = []
                if mode == "reasoning" and p.get("reasoning"):
                    made.append(make_row(id=f"{p['id']}-r", task=spec, mode="reasoning", input=src, labels=labels,
                                         reasoning=p["reasoning"], split=split, provenance=prov))
                made.append(make_row(id=f"{p['id']}-l", task=spec, mode="label", input=src, labels=labels,
                                     reasoning=None, split=split, provenance=prov))
                rows["corpus"].extend(made)
                if reason is None:
                    f["dqc_kept"] += 1
                    rows["corpus_dqc"].extend(made)
                else:
                    f["dropped"][reason] = f["dropped"].get(reason, 0) + 1
            funnel[name] = f
        engine = None
        tok = cfg.student_tokenizer or str(model_dir)
        students: dict[str, Path] = {}
        for key, system in (("corpus", "student"), ("corpus_dqc", "student_dqc")):
            data = rows[key]
            if not any(r["split"] == "train" for r in data):
                # an honest empty row of Table 6, not a crash: DQC may reject every output of a weak model
                what = "passed DQC" if key == "corpus_dqc" else "parsed"
                notes.append(f"{system} not trained: no AdNanny output {what} "
                             f"(funnel: {json.dumps(funnel, sort_keys=True)}).")
                for stale in (ctx.out / key, ctx.out / system):  # from an earlier attempt on other outputs
                    shutil.rmtree(stale, ignore_errors=True)
                continue
            write_corpus(data, ctx.out / key, tasks=specs)
            ctx.log(f"distill: training {system} on {sum(r['split'] == 'train' for r in data)} rows")
            students[system] = self._train_student(cfg, ctx.out / key, ctx.out / system, tok, seed)
        table6: dict[str, Any] = {}
        views: dict[str, str] = {}
        for name, spec in specs.items():
            gold_df = pl.read_parquet(label_dir / "heldout" / f"{name}.parquet")
            gold = gold_df.select(["id", *[f for f in spec.field_order if spec.label_fields.get(f)]])
            vk, view = next(iter(task_views(spec).items()))
            views[name] = vk
            preds: dict[str, Any] = {}
            for system, fname in (("teacher", "prompted"), ("adnanny", "adnanny")):
                p = label_dir / "predictions" / f"{name}.{fname}.parquet"
                if p.is_file():
                    preds[system] = pl.read_parquet(p)
                elif system == "adnanny":  # the teacher row is absent when the flow has no prompted baseline
                    raise StageInputError(f"label stage folder `{label_dir}` lacks AdNanny's predictions `{p.name}`")
            for system, sdir in students.items():
                out = ctx.out / "predictions" / f"{name}.{system}.parquet"
                out.parent.mkdir(parents=True, exist_ok=True)
                from adnanny_serve import load_engine

                eng = load_engine(str(sdir), device=cfg.device, batch_size=cfg.batch_size)
                _label(eng, sdir, label_dir / "heldout" / f"{name}.parquet", out, lcfg, task=name)
                preds[system] = pl.read_parquet(out)
            table6[name] = {s: evaluate_system(name, vk, view, gold, preds[s], cfg.n_resamples, seed)
                            for s in SYSTEMS if s in preds}
        shown = ", ".join(f"{t}: {v} view" for t, v in views.items())
        notes[:0] = [f"AdNanny is {src_stage}'s model; students: {cfg.student_model}.",
                     f"Table 6 ({shown}): teacher = the prompted teacher model, AdNanny = the label stage's "
                     "label-only predictions, students trained on AdNanny's outputs without / with DQC, all on the "
                     "label stage's held-out rows."]
        for name, f in funnel.items():
            drops = ", ".join(f"{k} {v}" for k, v in sorted(f["dropped"].items())) or "none"
            notes.append(f"{name}: AdNanny labeled {f['pool']} pool inputs, {f['parsed']} parsed, DQC kept "
                         f"{f['dqc_kept']} (dropped: {drops}).")
        return StageResult(
            metrics={"table6": table6, "table6_view": views, "funnel": funnel, "pool_mode": modes},
            artifacts={**{s: f"{s}/model" for s in students},
                       **{k: k for k in ("corpus", "corpus_dqc") if (ctx.out / k / "corpus.parquet").is_file()}},
            notes=notes,
            lineage={"model": str(model_dir), "corpus": str(corpus_dir(cook))},
        )

    @staticmethod
    def _train_student(cfg: Config, corpus: Path, out: Path, tokenizer: str, seed: int) -> Path:
        """adnanny-sft on `corpus` -> the exported student dir (resumes from `out`'s checkpoints when killed)."""
        from adnanny_sft import SFTConfig, train

        done = out / "model"
        stamp = out / "distill_input.json"
        key = {"corpus": _digest(corpus / "corpus.parquet"), "config": cfg.model_dump(), "seed": seed}
        key = json.loads(json.dumps(key, sort_keys=True, default=str))
        same = stamp.is_file() and json.loads(stamp.read_text()) == key
        if same and (done / "config.json").is_file():
            return done
        if not same and out.exists():  # checkpoints of other data or settings: never resume from them
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(key, sort_keys=True))  # before training: a killed run resumes its checkpoints
        sc = SFTConfig(corpus=str(corpus), tokenizer=tokenizer, model=cfg.student_model,
                       tiny_hidden_size=cfg.student_hidden_size, tiny_layers=cfg.student_layers,
                       max_steps=cfg.student_steps, batch_size=cfg.student_batch_size, lr=cfg.student_lr,
                       warmup_steps=min(10, cfg.student_steps // 10), input_loss_weight=cfg.student_input_loss_weight,
                       target_forms=["reasoning", "label"], class_balance="sampling", task_weighting=False,
                       instance_weighting=False, evaluate=False, seed=seed, output_dir=str(out), progress=False,
                       tensorboard=False, save_every=max(cfg.student_steps // 2, 1), keep_checkpoints=1,
                       threads=cfg.threads)
        res = train(sc)
        if res.model_dir is None:
            raise StageInputError(f"adnanny-sft wrote no model under `{out}`")
        return Path(res.model_dir)

    def supports(self, config: Any, flow: Any) -> list[Support]:
        cfg = config if isinstance(config, Config) else Config()
        out = [Support("AdNanny-labeled, AdNanny-explained distillation data with cook's DQC filters", True)]
        if cfg.student_model.startswith("tiny"):
            out.append(Support(f"student `{cfg.student_model}` trained with adnanny-sft (HF backend, CPU)", True))
        else:
            from adnanny_ckpt.models import resolve_model

            try:
                resolve_model(cfg.student_model)
                out.append(Support(f"student `{cfg.student_model}` trained with adnanny-sft", True))
            except Exception as e:  # a 7B student is a local HF dir at paper scale
                out.append(Support(f"student `{cfg.student_model}`", False, str(e)))
        return out

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        """A student corpus row (`<pool id>-r|-l`) or a pool id: AdNanny's prediction it came from and its DQC fate;
        a held-out id: the students' predictions."""
        import polars as pl

        out = Path(out)
        found: dict[str, Any] = {}
        base = row_id[:-2] if row_id.endswith(("-r", "-l")) else row_id
        for key in ("corpus", "corpus_dqc"):
            p = out / key / "corpus.parquet"
            if p.is_file():
                df = pl.read_parquet(p).filter(pl.col("id").is_in([row_id, f"{base}-r", f"{base}-l"]))
                if df.height:
                    r = df.row(0, named=True)
                    found[key] = {"id": r["id"], "labels": json.loads(r["labels"]),
                                  "provenance": json.loads(r["provenance"])}
                    # the pool input is a cook corpus row: lineage continues there (its teacher prompt/response)
                    found["upstream_id"] = found[key]["provenance"]["id"]
        for p in sorted((out / "pool").glob("*.parquet")):
            if ".inputs" in p.name:
                continue
            df = pl.read_parquet(p).filter(pl.col("id") == base)
            if df.height:
                r = df.row(0, named=True)
                found["adnanny_output"] = {k: v for k, v in r.items() if k not in ("label_probs",)}
                man = p.with_name(p.name + ".manifest.json")
                if man.is_file():
                    found["model"] = json.loads(man.read_text()).get("model_dir")
        for p in sorted((out / "predictions").glob("*.parquet")):
            df = pl.read_parquet(p).filter(pl.col("id").cast(pl.Utf8) == row_id)
            if df.height:
                found[p.stem.split(".", 1)[1]] = {k: v for k, v in df.row(0, named=True).items()
                                                  if k not in ("raw", "label_probs")}
        return found or None


def _trained_mode(model_dir: Path, task: str) -> str:
    """`reasoning` when the model's training corpus (its `adnanny_model.json` names it) holds reasoning rows of
    `task`, else `label`: a model trained label-only cannot write the rationales the reasoning pool asks for."""
    import polars as pl

    try:
        corpus = json.loads((model_dir / "adnanny_model.json").read_text()).get("corpus")
        p = Path(corpus)
        files = [p] if p.is_file() else sorted(p.glob("*.parquet"))
        n = sum(pl.scan_parquet(f).filter((pl.col("task") == task) & (pl.col("mode") == "reasoning"))
                .select(pl.len()).collect().item() for f in files)
    except (OSError, ValueError, TypeError, pl.exceptions.PolarsError):
        return "reasoning"  # unknown: try, and fall back to label-only if nothing parses
    return "reasoning" if n else "label"


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) from `key` (the eval-split draw, independent of row order)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


STAGE = DistillStage()
