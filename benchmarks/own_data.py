"""A user's walk on a labeled file, end to end through the CLIs, beside a lexical baseline and a prompted model.

    hatch run python benchmarks/own_data.py [--datasets sample_world,movielens] [--pilot] [--work DIR]

For each dataset (`own_data_datasets.py` writes the user's files: dev.csv, test.csv, gold.csv) the walk is
what a user types, each step a subprocess of the installed CLI:

    adnanny-cook corpus --task T --input dev.csv --out corpus --columns ... --labels label
    adnanny-sft train --corpus corpus --model smollm2 --lora ... --output_dir sft          -> sft/model
    adnanny-serve label --model sft/model --input test.csv --columns ...                   -> finetuned.parquet
    adnanny-serve label --model smollm2 --few-shot K --few-shot-from dev.csv ...           -> prompted.parquet
    adnanny-eval report --gold gold.csv --pred finetuned --baseline prompted|baseline --view defect --json

and, on the corpus's own train rows, the small task model AdNanny replaces (`adnanny_eval.baselines`): the
lexical baseline (TF-IDF cosine + token overlap + balanced logistic regression) everywhere, and the
popularity/genre-overlap baseline on MovieLens. Every model is scored on the same test rows; the paired
bootstrap intervals of fine-tuned − prompted and fine-tuned − baseline BACC come from `adnanny-eval report
--baseline` (adnanny-eval's compare/bootstrap API). Unparsed outputs count as misses of their gold class
(``--parse-errors wrong``), so a model cannot gain by failing to answer.

Recorded in ``benchmarks/results/own_data.json``: BACC with intervals, Model DR vs DR, parse-error rates,
predicted-class distributions, wall time / peak RSS per step, training and labeling tokens/s, the caps, the
exact command lines, and the exact error of any step that failed (the walk goes on with what it can).

The pieces are functions so that the flow report (`adnanny run`) can reuse them: `run_step`,
`fit_baselines`, `prediction_summary`, `eval_report`, `walk`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from own_data_datasets import Dataset, movielens_dataset, sample_world_dataset  # noqa: E402

RESULTS = HERE / "results" / "own_data.json"
DATASETS = ("sample_world", "movielens")

__all__ = ["Step", "WalkConfig", "eval_report", "fit_baselines", "main", "prediction_summary", "run_step", "walk"]


# ----------------------------------------------------------------------------------------------- config
@dataclass
class WalkConfig:
    """Caps and recipe of one walk (every field is recorded in the JSON).

    `sft_args` are extra ``adnanny-sft train`` flags (``--key value`` pairs), for recipe options that landed
    after this benchmark was written (class balancing, threshold calibration, ``input_loss_weight``).

    `model` is what is fine-tuned; `prompted_model` is the base model labeled with few-shot prompts (always a
    pretrained model: a random-init one has nothing to prompt). A ``tiny-*`` `model` is trained from scratch
    with a word-level tokenizer fitted on the user's own corpus (`train_user_tokenizer`), in float32, no LoRA.
    """

    work: Path = Path("/tmp/adnanny-own-data")
    model: str = "smollm2"
    lora: bool = True
    max_steps: int = 20
    batch_size: int = 4
    lora_top_layers: int = 8
    lr: float = 1e-3
    warmup_steps: int = 3
    max_seq_len: int = 512
    calibration_rows: int = 48
    eval_rows_per_task: int = 16
    threads: int = 2
    label_batch_size: int = 8
    max_input_tokens: int = 448
    label_max_tokens: int = 12
    few_shot: int = 2
    seed: int = 0
    n_resamples: int = 1000
    n_test: int = 110
    max_dev: int = 1600
    history_len: int = 5
    items_per_user: int = 4
    eval_fraction: float = 0.15
    dtype: str = "bfloat16"
    prompted_model: str = "smollm2"
    prompted_dtype: str = "bfloat16"
    tokenizer_vocab: int = 8192
    lowercase_tokenizer: bool = True
    sample_sizes: dict[str, int] = field(default_factory=dict)
    sft_args: list[str] = field(default_factory=list)
    timeout_s: float = 2400.0
    skip_models: bool = False

    @classmethod
    def pilot(cls, work: Path) -> WalkConfig:
        """Tiny caps that exercise every step in a few minutes."""
        return cls(work=work, max_steps=2, n_test=16, max_dev=160, few_shot=2, n_resamples=200,
                   calibration_rows=8, eval_rows_per_task=8)


# ----------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One CLI call: its command line, exit status, wall time, peak RSS and output tails."""

    name: str
    argv: list[str]
    rc: int
    wall_s: float
    peak_rss_mib: float
    stdout_tail: str
    stderr_tail: str
    log: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["wall_s"] = round(self.wall_s, 2)
        d["peak_rss_mib"] = round(self.peak_rss_mib, 1)
        if self.ok:
            d.pop("stderr_tail")
        return d

    def json_out(self) -> dict[str, Any] | None:
        """The JSON object the command printed on stdout (``--json``): the whole stdout, else its last
        one-line object (tools that print progress lines before it)."""
        log = Path(self.log).with_suffix(".stdout")
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        try:
            obj = json.loads(text)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            pass
        start = text.rfind("\n{")
        for chunk in (text[start + 1:] if start >= 0 else "", *reversed(text.splitlines())):
            chunk = chunk.strip()
            if chunk.startswith("{"):
                try:
                    return json.loads(chunk)
                except json.JSONDecodeError:
                    continue
        return None


def _exe(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TORCHDYNAMO_DISABLE": "1"})
    return env


def _tail(path: Path, n: int = 2000) -> str:
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-n:]


def run_step(name: str, argv: Sequence[str], log_dir: Path, *, threads: int = 2,
             timeout_s: float = 3600.0) -> Step:
    """Run one CLI as a subprocess; stdout/stderr go to ``log_dir/name.{stdout,stderr}``.

    Peak RSS is the child's own (``os.wait4`` rusage, which covers the child and the grandchildren it waited
    for), not this process's.
    """
    import subprocess

    log_dir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    cmd = [_exe(argv[0]), *map(str, argv[1:])]
    print(f"[own_data] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with out_p.open("w") as fo, err_p.open("w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=_env(threads))
        deadline = t0 + timeout_s
        rusage = None
        status = 0
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                fe.write(f"\n[own_data] killed after {timeout_s:.0f} s\n")
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rss = rusage.ru_maxrss / 1024 if rusage is not None else float("nan")  # KiB -> MiB on Linux
    step = Step(name, cmd, proc.returncode, wall, rss, _tail(out_p, 1500), _tail(err_p), str(log_dir / name))
    print(f"[own_data] {name}: rc={step.rc} {wall:.1f}s {rss:.0f} MiB", flush=True)
    if not step.ok:
        print(step.stderr_tail[-800:], flush=True)
    return step


def _help(cli: str, verb: str) -> str:
    import subprocess

    try:
        return subprocess.run([_exe(cli), verb, "--help"], capture_output=True, text=True, timeout=120,
                              env=_env(1)).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def lora_top_modules(model: str, n_layers: int) -> list[str]:
    """LoRA targets: every projection of the top `n_layers` decoder layers of a Llama-style model.

    Why the top layers only (the CPU recipe here): backward then stops at the lowest adapted layer, so a
    step costs ~1.4x less than all-layer LoRA on SmolLM2 (measured 26 vs 19 tok/s, bf16, 2 shared cores),
    and the relevance decision is made from the top layers' features anyway.
    """
    from adnanny_ckpt.models import resolve_model

    n_total = int(json.loads((resolve_model(model) / "config.json").read_text())["num_hidden_layers"])
    layers = range(max(0, n_total - n_layers), n_total)
    attn = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp = ("gate_proj", "up_proj", "down_proj")
    return [f"layers.{i}.self_attn.{m}" for i in layers for m in attn] + \
           [f"layers.{i}.mlp.{m}" for i in layers for m in mlp]


def train_user_tokenizer(corpus: Path, out: Path, *, vocab_size: int = 8192, lowercase: bool = True) -> Path:
    """A word-level tokenizer for a from-scratch tiny model, fitted on the user's corpus (prompts + targets,
    every split: the inputs' words, not their labels, are what it learns; test rows are never read).

    WHY: a tiny model has no tokenizer of its own; cook's sample-world tokenizer knows ads words, not movie
    titles. The trainer is cook's (`adnanny_cook.sample.tokenizer.train_tokenizer`): word-level merges (a word
    is one id wherever it appears, what lets the model match history against item) and the task tags as atomic
    tokens.

    ``lowercase``: passed to cook's trainer (its default; see its docstring for why a from-scratch model needs it).
    """
    from adnanny_cook.sample.tokenizer import train_tokenizer
    from adnanny_cook.tasks import render_chat

    texts = []
    for r in _corpus_rows(corpus):
        msgs = json.loads(r["messages"]) if isinstance(r["messages"], str) else list(r["messages"])
        texts.append(render_chat([*msgs, {"role": "assistant", "content": r["target"]}]))
    return train_tokenizer(texts, out, vocab_size=vocab_size, lowercase=lowercase)


# ----------------------------------------------------------------------------------------------- corpus
def _corpus_rows(corpus: Path) -> list[dict[str, Any]]:
    import polars as pl

    path = corpus / "corpus.parquet" if corpus.is_dir() else corpus
    return pl.read_parquet(path).to_dicts()


def _match_records(rows: list[dict[str, Any]], ds: Dataset) -> list[str]:
    """Dataset record ids of corpus rows: by id, else by the input fields (cook may rename ids)."""
    by_input: dict[tuple[str, ...], str] = {}
    fields = [f for f in ds.columns if f != "label"]
    for rid, rec in ds.records.items():
        by_input.setdefault(tuple(str(rec.get(f, "")) for f in fields), rid)
    out = []
    for r in rows:
        if r["id"] in ds.records:
            out.append(r["id"])
            continue
        inp = json.loads(r["input"]) if isinstance(r.get("input"), str) else (r.get("input") or {})
        key = tuple(str(inp.get(f, "") or "") for f in fields)
        if key not in by_input:
            raise KeyError(f"corpus row `{r['id']}` matches no row of {ds.dev_csv} (input {key[:2]}...)")
        out.append(by_input[key])
    return out


def _test_ids(ds: Dataset) -> list[str]:
    import csv

    with ds.test_csv.open(encoding="utf-8") as fh:
        return [r["id"] for r in csv.DictReader(fh)]


def fit_baselines(ds: Dataset, train_ids: Sequence[str], out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Fit the baselines on `train_ids` (the corpus's train rows), write their predictions on the test rows.

    Returns, per baseline, the predictions path, fit/predict time, coefficients and the train class balance.
    """
    import numpy as np

    from adnanny_eval.baselines import (
        LexicalBaseline,
        LogRegConfig,
        PopularityGenreBaseline,
        PopularityTable,
        predictions_frame,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    test_ids = _test_ids(ds)
    rec = ds.records
    y = np.array([rec[i]["label"] not in ds.defect for i in train_ids])
    cfg = LogRegConfig(seed=seed)
    lf, rf = ds.lexical_fields

    def texts(ids: Sequence[str]) -> tuple[list[str], list[str]]:
        return ([" ".join(str(rec[i].get(f) or "") for f in lf) for i in ids],
                [" ".join(str(rec[i].get(f) or "") for f in rf) for i in ids])

    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    lex = LexicalBaseline(cfg).fit(*texts(train_ids), y)
    score = lex.predict_proba(*texts(test_ids))
    path = out_dir / "baseline_lexical.parquet"
    predictions_frame(test_ids, score, defect_label=ds.defect[0], non_defect_label=ds.non_defect_label,
                      threshold=cfg.threshold).write_parquet(path)
    results["lexical"] = {"pred": str(path), "wall_s": round(time.perf_counter() - t0, 3),
                          "features": list(lex.feature_names), "coefficients": lex.model.coefficients(),
                          "left_fields": list(lf), "right_fields": list(rf)}
    if ds.popularity is not None:
        t0 = time.perf_counter()
        pop = PopularityTable.fit(*ds.popularity)

        def cols(ids: Sequence[str]) -> tuple[list[Any], ...]:
            return ([rec[i]["item"] for i in ids], [rec[i]["item_genres"] for i in ids],
                    [rec[i]["history_genres"] for i in ids], [rec[i]["history_ratings"] for i in ids])

        pg = PopularityGenreBaseline(pop, cfg).fit(*cols(train_ids), y)
        score = pg.predict_proba(*cols(test_ids))
        path = out_dir / "baseline_popularity_genre.parquet"
        predictions_frame(test_ids, score, defect_label=ds.defect[0], non_defect_label=ds.non_defect_label,
                          threshold=cfg.threshold).write_parquet(path)
        results["popularity_genre"] = {"pred": str(path), "wall_s": round(time.perf_counter() - t0, 3),
                                       "features": list(pg.feature_names),
                                       "coefficients": pg.model.coefficients(),
                                       "popularity_period_ratings": len(ds.popularity[0])}
    results["train_rows"] = len(train_ids)
    results["train_non_defect_share"] = float(y.mean()) if len(y) else None
    return results


# ----------------------------------------------------------------------------------------------- summaries
def prediction_summary(pred: Path, ds: Dataset, *, field: str = "label") -> dict[str, Any]:
    """Parse-error rate, predicted-class distribution (parsed rows) and the largest class share."""
    import polars as pl

    df = pl.read_parquet(pred) if pred.suffix == ".parquet" else pl.read_csv(pred)
    n = df.height
    if "parse_error" in df.columns:
        pe = df["parse_error"]
        failed = pe.is_not_null() & (pe.cast(pl.String) != "") & (pe.cast(pl.String) != "false")
    else:
        failed = pl.Series([False] * n)
    labels = df.filter(~failed)[field].cast(pl.String).str.to_lowercase().to_list() if field in df.columns else []
    dist: dict[str, int] = {}
    for v in labels:
        dist[str(v)] = dist.get(str(v), 0) + 1
    n_parsed = len(labels)
    top = max(dist.values()) / n_parsed if n_parsed else None
    out: dict[str, Any] = {
        "rows": n,
        "parse_errors": int(failed.sum()),
        "parse_error_rate": float(failed.sum()) / n if n else None,
        "predicted_classes": dict(sorted(dist.items())),
        "largest_class_share": top,
        "collapsed": bool(top is not None and top > 0.9),
    }
    if "input_truncated" in df.columns:
        out["truncated_inputs"] = int(df["input_truncated"].cast(pl.Boolean).sum())
    if "score" in df.columns:
        s = df["score"].drop_nulls()
        out["score_mean"] = float(s.mean()) if s.len() else None
    return out


def eval_report(ds: Dataset, cand: Path, base: Path, names: tuple[str, str], log_dir: Path, tag: str,
                cfg: WalkConfig, *, gaps: list[str]) -> tuple[Step, dict[str, Any] | None]:
    """``adnanny-eval report --json`` of candidate vs baseline under the task's defect values."""
    help_text = _help("adnanny-eval", "report")
    argv = ["adnanny-eval", "report", "--gold", ds.gold_csv, "--pred", cand, "--baseline", base,
            "--json", "--candidate-name", names[0], "--baseline-name", names[1],
            "--n-resamples", cfg.n_resamples, "--seed", cfg.seed, "--name", ds.name]
    if "--defect" in help_text:
        argv += ["--view", "defect", "--defect", ",".join(ds.defect), "--rate-name", ds.rate_name]
    else:
        gaps.append("adnanny-eval report has no `--view defect --defect ...`; used the built-in `bad` view")
        argv += ["--view", "bad"]
    if "--parse-errors" in help_text:
        argv += ["--parse-errors", "wrong"]
    else:
        gaps.append("adnanny-eval report has no `--parse-errors`: unparsed rows are not counted as misses")
    step = run_step(f"eval_{tag}", argv, log_dir, threads=1, timeout_s=600)
    return step, step.json_out() if step.ok else None


def _bacc_row(rep: dict[str, Any], side: str) -> dict[str, Any]:
    m = rep.get(side) or {}
    ci = (rep.get("bootstrap") or {}).get(side)
    keep = ("BACC", "DR", "Model DR", "RR", "Model RR", "PosAcc", "NegAcc", "Acc", "AUC", "n", "n_defect",
            "parse_errors", "parse_error_rate", "n_parse_errors")
    out = {k: m[k] for k in keep if k in m}
    out["BACC_ci"] = ci
    return out


# ----------------------------------------------------------------------------------------------- the walk
def walk(ds: Dataset, cfg: WalkConfig, *, out_root: Path) -> dict[str, Any]:
    """Corpus -> SFT -> label (fine-tuned, prompted) -> eval, plus the baselines, for one dataset."""
    root = out_root / ds.name
    logs = root / "logs"
    preds = root / "preds"
    preds.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Any] = {}
    gaps: list[str] = []
    res: dict[str, Any] = {"task": ds.task if not ds.task.endswith(".toml") else
                           str(Path(ds.task).relative_to(HERE.parent)),
                           "columns": ds.columns, "caps": ds.caps, "stats": ds.stats, "steps": steps,
                           "cli_gaps": gaps, "models": {}, "comparisons": {}}
    t_walk = time.perf_counter()

    # 1. corpus
    corpus = root / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    st = run_step("cook_corpus", ["adnanny-cook", "corpus", "--task", ds.task, "--input", ds.dev_csv,
                                  "--out", corpus, "--columns", ds.columns_arg, "--labels", "label",
                                  "--eval-fraction", cfg.eval_fraction, "--seed", cfg.seed, "--json"], logs, threads=1, timeout_s=900)
    steps["cook_corpus"] = st.record()
    if not st.ok:
        gaps.append(f"adnanny-cook corpus failed (rc {st.rc}): {st.stderr_tail.strip().splitlines()[-1:]}")
        res["wall_s"] = time.perf_counter() - t_walk
        return res
    rows = _corpus_rows(corpus)
    splits: dict[str, int] = {}
    for r in rows:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    res["corpus"] = {"rows": len(rows), "splits": splits,
                     "task_files": sorted(p.name for p in (corpus / "tasks").glob("*.toml"))
                     if (corpus / "tasks").exists() else []}
    task_files = sorted((corpus / "tasks").glob("*.toml")) if (corpus / "tasks").exists() else []
    task_ref = str(task_files[0]) if len(task_files) == 1 else ds.task

    # 2. baselines on the corpus's train rows
    train_rows = [r for r in rows if r["split"] == "train"]
    train_ids = sorted(set(_match_records(train_rows, ds)))
    res["baselines"] = fit_baselines(ds, train_ids, preds, seed=cfg.seed)
    for name in ("lexical", "popularity_genre"):
        if name in res["baselines"]:
            res["models"][f"baseline_{name}"] = prediction_summary(Path(res["baselines"][name]["pred"]), ds)

    if cfg.skip_models:
        st, rep = eval_report(ds, Path(res["baselines"]["lexical"]["pred"]),
                              Path(res["baselines"]["lexical"]["pred"]), ("lexical", "lexical"), logs,
                              "lexical_self", cfg, gaps=gaps)
        steps["eval_lexical_self"] = st.record()
        res["comparisons"]["lexical_self"] = rep
        res["wall_s"] = round(time.perf_counter() - t_walk, 1)
        return res

    # 3. fine-tune
    sft_dir = root / "sft"
    if sft_dir.exists():
        shutil.rmtree(sft_dir)
    tiny = cfg.model.startswith("tiny-")
    sft_argv = ["adnanny-sft", "train", "--corpus", corpus, "--model", cfg.model,
                "--lora", str(cfg.lora and not tiny).lower(),
                "--target_forms", "label", "--max_steps", cfg.max_steps, "--batch_size", cfg.batch_size,
                "--lr", cfg.lr, "--max_seq_len", cfg.max_seq_len, "--threads", cfg.threads, "--seed", cfg.seed,
                "--dtype", "float32" if tiny else cfg.dtype, "--warmup_steps", cfg.warmup_steps,
                "--calibration_rows", cfg.calibration_rows, "--eval_rows_per_task", cfg.eval_rows_per_task,
                "--eval_max_new_tokens", 12, "--task_weighting", "false", "--instance_weighting", "false",
                "--tensorboard", "false", "--save_every", 0,
                "--output_dir", sft_dir, "--progress", "false", "--json", *cfg.sft_args]
    if tiny:
        t0 = time.perf_counter()
        tok_dir = train_user_tokenizer(corpus, root / "tokenizer", vocab_size=cfg.tokenizer_vocab,
                                       lowercase=cfg.lowercase_tokenizer)
        res["tokenizer"] = {"dir": str(tok_dir), "seconds": round(time.perf_counter() - t0, 2),
                            "lowercase": cfg.lowercase_tokenizer,
                            "vocab": len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])}
        sft_argv += ["--tokenizer", tok_dir]
    elif cfg.lora and cfg.lora_top_layers > 0:
        sft_argv += ["--lora_target_modules", ",".join(lora_top_modules(cfg.model, cfg.lora_top_layers))]
    st = run_step("sft_train", sft_argv, logs, threads=cfg.threads, timeout_s=cfg.timeout_s)
    steps["sft_train"] = st.record()
    res["sft_summary"] = st.json_out()
    model_dir = sft_dir / "model"
    manifest = model_dir / "adnanny_model.json"
    res["adnanny_model"] = json.loads(manifest.read_text()) if manifest.exists() else None
    if st.ok and manifest.exists() is False:
        gaps.append("sft: model dir has no adnanny_model.json (no calibrated threshold)")
    if not st.ok:
        gaps.append(f"adnanny-sft train failed (rc {st.rc}): {st.stderr_tail.strip().splitlines()[-1:]}")

    common = ["--task", task_ref, "--input", ds.test_csv, "--columns", ds.columns_arg, "--mode", "label",
              "--batch-size", cfg.label_batch_size, "--max-input-tokens", cfg.max_input_tokens,
              "--max-tokens", cfg.label_max_tokens,
              "--no-progress", "--json"]
    if not ds.task.endswith(".toml"):
        common += ["--labels", "label"]

    # 4. label with the fine-tuned model
    ft_pred = preds / "finetuned.parquet"
    if st.ok:
        for p in (ft_pred, ft_pred.with_suffix(".parquet.manifest.json")):
            p.unlink(missing_ok=True)
        st = run_step("label_finetuned", ["adnanny-serve", "label", "--model", model_dir, "--out", ft_pred,
                                          *common, "--dtype", "float32" if tiny else cfg.dtype], logs, threads=cfg.threads, timeout_s=cfg.timeout_s)
        steps["label_finetuned"] = st.record()
        res["label_finetuned_stats"] = st.json_out()
        if st.ok:
            res["models"]["fine_tuned"] = prediction_summary(ft_pred, ds)
        else:
            gaps.append(f"adnanny-serve label (fine-tuned) failed (rc {st.rc}): "
                        f"{st.stderr_tail.strip().splitlines()[-1:]}")

    # 5. label with the prompted base model (few-shot from the user's own training rows)
    pr_pred = preds / "prompted.parquet"
    pr_pred.unlink(missing_ok=True)
    st = run_step("label_prompted", ["adnanny-serve", "label", "--model", cfg.prompted_model, "--out", pr_pred,
                                     *common, "--dtype", cfg.prompted_dtype,
                                     "--few-shot", cfg.few_shot, "--few-shot-from", ds.dev_csv,
                                     "--few-shot-seed", cfg.seed],
                  logs, threads=cfg.threads, timeout_s=cfg.timeout_s)
    steps["label_prompted"] = st.record()
    res["label_prompted_stats"] = st.json_out()
    if st.ok:
        res["models"]["prompted"] = prediction_summary(pr_pred, ds)
    else:
        gaps.append(f"adnanny-serve label (prompted) failed (rc {st.rc}): {st.stderr_tail.strip().splitlines()[-1:]}")

    # 6. eval: the paired comparisons through the CLI
    main_base = "popularity_genre" if "popularity_genre" in res["baselines"] else "lexical"
    pairs = []
    if "fine_tuned" in res["models"] and "prompted" in res["models"]:
        pairs.append(("fine_tuned_vs_prompted", ft_pred, pr_pred, ("fine-tuned", "prompted")))
    for bname in ("lexical", "popularity_genre"):
        if bname not in res["baselines"]:
            continue
        bpath = Path(res["baselines"][bname]["pred"])
        if "fine_tuned" in res["models"]:
            pairs.append((f"fine_tuned_vs_{bname}", ft_pred, bpath, ("fine-tuned", bname)))
        elif "prompted" in res["models"]:
            pairs.append((f"prompted_vs_{bname}", pr_pred, bpath, ("prompted", bname)))
    if "prompted" in res["models"] and "fine_tuned" in res["models"]:
        pairs.append((f"prompted_vs_{main_base}", pr_pred, Path(res["baselines"][main_base]["pred"]),
                      ("prompted", main_base)))
    for tag, cand, base, names in pairs:
        st, rep = eval_report(ds, cand, base, names, logs, tag, cfg, gaps=gaps)
        steps[f"eval_{tag}"] = st.record()
        if rep is None:
            gaps.append(f"adnanny-eval report {tag} failed (rc {st.rc}): {st.stderr_tail.strip().splitlines()[-1:]}")
            continue
        res["comparisons"][tag] = {"candidate": _bacc_row(rep, "candidate"), "baseline": _bacc_row(rep, "baseline"),
                                   "delta_BACC": (rep.get("delta") or {}).get("BACC"),
                                   "delta_BACC_ci": (rep.get("bootstrap") or {}).get("delta"),
                                   "bootstrap": {k: v for k, v in (rep.get("bootstrap") or {}).items()
                                                 if k not in ("candidate", "baseline", "delta")},
                                   "report": rep}
    res["cli_gaps"] = list(dict.fromkeys(gaps))
    res["main_baseline"] = main_base
    res["verdict"] = _verdict(res, main_base)
    res["wall_s"] = round(time.perf_counter() - t_walk, 1)
    return res


def _verdict(res: dict[str, Any], main_base: str) -> dict[str, Any]:
    comp = res["comparisons"]
    ft = res["models"].get("fine_tuned")
    vp = comp.get("fine_tuned_vs_prompted")
    vb = comp.get(f"fine_tuned_vs_{main_base}")
    lo = None if vp is None or not vp["delta_BACC_ci"] else vp["delta_BACC_ci"][0]
    out = {
        "beats_prompted": None if lo is None else bool(lo > 0),
        "beats_prompted_delta_ci": None if vp is None else vp["delta_BACC_ci"],
        "collapsed": None if ft is None else ft["collapsed"],
        "largest_class_share": None if ft is None else ft["largest_class_share"],
        "baseline": main_base,
        "reaches_baseline": None if vb is None else bool(vb["delta_BACC"] is not None and vb["delta_BACC"] >= 0),
        "vs_baseline_delta": None if vb is None else vb["delta_BACC"],
        "vs_baseline_delta_ci": None if vb is None else vb["delta_BACC_ci"],
    }
    out["acceptance"] = bool(out["beats_prompted"] and out["collapsed"] is False)
    return out



# ----------------------------------------------------------------------------------------------- summary
def _sft_log(sft_dir: Path) -> dict[str, Any] | None:
    """Training throughput and the final in-training evaluation from adnanny-sft's ``log.jsonl``."""
    log = sft_dir / "log.jsonl"
    if not log.exists():
        return None
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    train = [r for r in recs if r.get("kind") == "train"]
    evals = [r for r in recs if r.get("kind") == "eval"]
    tps = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    tokens = sum(r.get("tokens", 0) for r in train)
    return {
        "steps": len(train),
        "tokens": tokens,
        "target_tokens": sum(r.get("target_tokens", 0) for r in train),
        "tokens_per_s_mean": sum(tps) / len(tps) if tps else None,
        "tokens_per_s_median": sorted(tps)[len(tps) // 2] if tps else None,
        "train_seconds": sum(r.get("tokens", 0) / r["tokens_per_s"] for r in train if r.get("tokens_per_s")),
        "loss_first": train[0]["loss"] if train else None,
        "loss_last": train[-1]["loss"] if train else None,
        "final_eval": evals[-1] if evals else None,
    }


def _label_speed(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    if not stats:
        return None
    sps = stats.get("samples_per_s")
    tok = (stats.get("avg_prompt_tokens") or 0) + (stats.get("avg_completion_tokens") or 0)
    return {"rows": stats.get("rows"), "seconds": stats.get("seconds"), "samples_per_s": sps,
            "avg_prompt_tokens": stats.get("avg_prompt_tokens"),
            "avg_completion_tokens": stats.get("avg_completion_tokens"),
            "tokens_per_s": sps * tok if sps else None, "truncated_rows": stats.get("truncated_rows"),
            "parse_errors": stats.get("parse_errors")}


def summarize(record: dict[str, Any], work: Path) -> dict[str, Any]:
    """The compact table of the run: per dataset and model, BACC with its 95% interval, Model DR vs DR,
    parse-error rate, predicted classes; the paired deltas; CPU cost (wall, peak RSS, tokens/s)."""
    out: dict[str, Any] = {}
    for name, res in record.get("datasets", {}).items():
        if "comparisons" not in res:
            out[name] = {"error": res.get("error")}
            continue
        comps = res["comparisons"]
        models: dict[str, Any] = {}
        for tag, comp in comps.items():
            cand, base = tag.split("_vs_")
            for role, who in (("candidate", cand), ("baseline", base)):
                key = who if who in ("fine_tuned", "prompted") else f"baseline_{who}"
                if key in models or not comp.get(role):
                    continue
                row = comp[role]
                rate = "RR" if "RR" in row else "DR"
                models[key] = {"BACC": row.get("BACC"), "BACC_ci95": row.get("BACC_ci"),
                               rate: row.get(rate), f"Model {rate}": row.get(f"Model {rate}"),
                               "AUC": row.get("AUC"), "n": row.get("n"), "n_defect": row.get("n_defect"),
                               "parse_error_pct": row.get("parse_error_rate")}
        for key, summ in res.get("models", {}).items():
            models.setdefault(key, {}).update({"predicted_classes": summ.get("predicted_classes"),
                                               "largest_class_share": summ.get("largest_class_share"),
                                               "collapsed": summ.get("collapsed")})
        deltas = {tag: {"delta_BACC": c.get("delta_BACC"), "ci95": c.get("delta_BACC_ci")}
                  for tag, c in comps.items()}
        steps = res.get("steps", {})
        sft_dir = work / "runs" / name / "sft"
        cost = {
            "walk_wall_s": res.get("wall_s"),
            "steps": {k: {"wall_s": v.get("wall_s"), "peak_rss_mib": v.get("peak_rss_mib"), "rc": v.get("rc")}
                      for k, v in steps.items()},
            "sft": _sft_log(sft_dir),
            "label_finetuned": _label_speed(res.get("label_finetuned_stats")),
            "label_prompted": _label_speed(res.get("label_prompted_stats")),
            "baselines_fit_predict_s": {k: v.get("wall_s") for k, v in (res.get("baselines") or {}).items()
                                        if isinstance(v, dict)},
        }
        out[name] = {"models": models, "deltas": deltas, "verdict": res.get("verdict"), "cost": cost,
                     "threshold": ((res.get("adnanny_model") or {}).get("tasks") or {}),
                     "cli_gaps": res.get("cli_gaps")}
    return out

# ----------------------------------------------------------------------------------------------- main
def _host() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "python": platform.python_version(),
            "machine": platform.machine()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("adnanny-cook", "adnanny-sft", "adnanny-serve", "adnanny-eval", "adnanny-ckpt", "torch",
              "transformers", "peft", "scikit-learn"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "absent"
    return out


def _git_head() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: sample_world,movielens")
    ap.add_argument("--work", type=Path, default=Path("/tmp/adnanny-own-data"), help="work folder (outside repo)")
    ap.add_argument("--pilot", action="store_true", help="tiny caps (a few minutes); writes own_data_pilot.json")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/own_data.json)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lora", choices=["true", "false"], default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--max-dev", type=int, default=None)
    ap.add_argument("--few-shot", type=int, default=None)
    ap.add_argument("--items-per-user", type=int, default=None,
                    help="movielens: later-rated movies sampled per user (rows; default 4)")
    ap.add_argument("--history-len", type=int, default=None,
                    help="movielens: earlier ratings shown as the user history (default 5)")
    ap.add_argument("--lora-top-layers", type=int, default=None, help="LoRA on the top N layers (0: all-linear)")
    ap.add_argument("--calibration-rows", type=int, default=None)
    ap.add_argument("--max-input-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="sft and label dtype (default bfloat16: ~4x fp32 matmuls here)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="re-read the results JSON and --work artifacts, (re)write its `summary`; run nothing")
    ap.add_argument("--skip-models", action="store_true", help="corpus + baselines + eval only (no sft/label)")
    ap.add_argument("--model", default=None, help="fine-tuned model: smollm2 (LoRA/full) or tiny-deepseek-v3")
    ap.add_argument("--prompted-model", default=None, help="the prompted base model (default smollm2)")
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--cased-tokenizer", action="store_true",
                    help="tiny model: the user-corpus tokenizer keeps case (default: it lowercases)")
    ap.add_argument("--sample-sizes", default="", help="JSON sizes of the sample world of dataset (a)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other datasets' results already in the results JSON (rerun one dataset)")
    ap.add_argument("--sft-args", default="", help="extra adnanny-sft train flags, space-separated")
    a = ap.parse_args(argv)
    cfg = WalkConfig.pilot(a.work) if a.pilot else WalkConfig(work=a.work)
    for key in ("max_steps", "batch_size", "lr", "n_test", "max_dev", "few_shot", "max_input_tokens", "threads", "dtype",
                "lora_top_layers", "calibration_rows", "model", "prompted_model", "warmup_steps", "items_per_user",
                "history_len"):
        v = getattr(a, key)
        if v is not None:
            setattr(cfg, key, v)
    if a.lora is not None:
        cfg.lora = a.lora == "true"
    cfg.sft_args = a.sft_args.split()
    cfg.skip_models = a.skip_models
    cfg.lowercase_tokenizer = not a.cased_tokenizer
    cfg.sample_sizes = json.loads(a.sample_sizes) if a.sample_sizes else {}
    out = a.out or (HERE / "results" / ("own_data_pilot.json" if a.pilot else "own_data.json"))
    if a.summarize_only:
        record = json.loads(out.read_text())
        record["summary"] = summarize(record, Path(record["config"]["work"]))
        _write_json(out, record)
        print(json.dumps(record["summary"], indent=1)[:4000])
        return 0
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        ap.error(f"unknown --datasets {unknown}; known: {list(DATASETS)}")

    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "benchmark": "own_data", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_head": _git_head(), "host_before": _host(), "versions": _versions(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "pilot": a.pilot, "datasets": {},
    }
    if a.merge and out.exists():  # the other datasets' walks (and their configs) as they were recorded
        old = json.loads(out.read_text())
        for k, v in old.get("datasets", {}).items():
            if k not in names:
                record["datasets"][k] = v
                record.setdefault("configs_by_dataset", {})[k] = (old.get("configs_by_dataset") or {}).get(
                    k, old.get("config"))
    for name in names:
        record.setdefault("configs_by_dataset", {})[name] = record["config"]
    cfg.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "sample_world":
            ds = sample_world_dataset(cfg.work, seed=cfg.seed, n_test=cfg.n_test, max_dev=cfg.max_dev,
                                      sizes=cfg.sample_sizes or None)
        else:
            ds = movielens_dataset(cfg.work, seed=cfg.seed, max_test=cfg.n_test, max_dev=cfg.max_dev,
                                   history_len=cfg.history_len, items_per_user=cfg.items_per_user)
        try:
            record["datasets"][name] = walk(ds, cfg, out_root=cfg.work / "runs")
        except Exception as e:  # record the failure, keep the other dataset's walk
            record["datasets"][name] = {"error": f"{type(e).__name__}: {e}"}
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        _write_json(out, record)  # after each dataset, so a killed run keeps what it finished
    record["host_after"] = _host()
    verdicts = {n: d.get("verdict", {}) for n, d in record["datasets"].items()}
    record["acceptance"] = {
        "met": bool(verdicts) and all(v.get("acceptance") for v in verdicts.values()),
        "goal_met": bool(verdicts) and all(v.get("reaches_baseline") for v in verdicts.values()),
        "per_dataset": verdicts,
    }
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    record["summary"] = summarize(record, cfg.work)
    _write_json(out, record)
    print(json.dumps({"acceptance": record["acceptance"], "wall_s": record["wall_s"], "out": str(out)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
