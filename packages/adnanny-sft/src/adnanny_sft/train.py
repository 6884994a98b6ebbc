"""``adnanny-sft train``: multi-task SFT with adaptive instance and task weights (paper §4.2), one loop.

Read top to bottom: data (corpus -> target forms -> public mix -> decontamination -> chat-template tokens),
model + backend, weighting state, resume, then the step loop. Per optimizer step:

1. draw ``grad_accum`` micro-batches from the sampler (tasks drawn by λ_t under weighted task sampling);
2. per sample, loss factor s_b = w̃_{t,i} · c_t / N_tok (instance weight of eq. 5, task factor — λ_t/p_t
   in loss-weighting mode, 1 in sampling mode — and the step's target-token count; see
   ``adnanny_sft.objective`` for why this is eq. 2 up to a per-step constant);
3. ``forward_backward`` each micro-batch (returns ℓ_b of eq. 1), stop on a non-finite loss;
4. ``optimizer_step`` (stop if the gradient is non-finite: never applied);
5. instance weights observe the visit (minibatch estimator) or, at an epoch end, the whole training set is
   re-scored (exact estimator); task weights are re-estimated every ``task_eval_every`` steps or at epoch
   ends (eq. 6–7); a checkpoint is written when due.

Everything a resumed run needs (backend state, sampler RNG and queue, weighting state, torch RNG) is in the
checkpoint, and the JSONL log is cut back to it, so an interrupted + resumed run logs exactly the losses
of an uninterrupted one.

Before anything is written, the model folder passes adnanny-ckpt's one weight rule (``check_model_dir``: pickle
weights refused unless ``allow_pickle``, corrupt safetensors and a missing tokenizer named) and the tokenizer
loads; then ``output_dir`` is locked (``adnanny_cook.lock.FolderLock``: a second run on it is refused at once,
naming the holder's PID; the lock of a killed run is taken over). A run that fails before that leaves nothing.

Backends: ``backend = "hf"`` (built in) or a name registered in the entry-point group ``adnanny_sft.backends``
(adnanny-megatron: ``megatron``). A distributed backend runs this same loop on every rank under ``torchrun``:
every rank formats the same data and draws the same batches (the sampler is seeded), the backend splits each
batch over its layout and returns the per-sample losses on every rank, and rank 0 alone writes logs, manifest
and the trainer state beside the backend's own (collective) checkpoint files; the exported model is the last
checkpoint merged into an HF folder by adnanny-ckpt (``mcore_to_hf``, from the descriptor the backend saves). The task-weight evaluation (eq.
6-7) on such a backend scores each label value by its log-likelihood after the prompt and open tag (forward only,
``adnanny_sft.backend.BackendScorer``) instead of generating: a pipeline-sharded model has no cheap decoding
loop, and the value with the highest probability is what greedy decoding would emit first after the open tag.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adnanny_sft.checkpoint import latest_checkpoint, read_trainer_state, save_checkpoint
from adnanny_sft.export import calibrate_tasks, write_model_manifest
from adnanny_sft.config import RESUME_SAFE_KEYS, SFTConfig
from adnanny_sft.errors import AdNannySftError, CheckpointError, ConfigError, DataError, NonFiniteLossError
from adnanny_sft.evaluation import TaskMetricEvaluator

__all__ = ["OutputDirLockedError", "TrainResult", "build_backend", "class_loss_factors", "prepare_data", "train"]


class OutputDirLockedError(AdNannySftError, RuntimeError):
    """Another live ``adnanny-sft train`` holds ``output_dir``; the message names its PID (CLI exit 2)."""


@dataclass
class TrainResult:
    """What a run produced: where, how far, the final task metrics and the model directory."""

    output_dir: Path
    steps: int
    model_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0
    is_main: bool = True  #: False on ranks > 0 of a distributed run (rank 0 reports and writes)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from adnanny_cook.corpus import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())


def prepare_data(cfg: SFTConfig, tokenizer: Any, out: Path, *, write: bool = True
                 ) -> tuple[list[Any], list[dict[str, Any]], dict[str, Any]]:
    """(training examples, held-out rows, data report); writes refused/dropped rows next to the log (``write``:
    rank 0 of a distributed run only).

    The report's ``specs`` are the task definitions trained on (the corpus's own ``tasks/*.toml``, restricted
    to ``labels``) and ``classes`` maps each example id to its balancing class (``class_balance``).
    """
    from adnanny_sft.data import read_rows, row_class, task_specs, with_target_forms
    from adnanny_sft.formatting import format_rows
    from adnanny_sft.mixing import PUBLIC_TASK, Decontaminator, decontaminate, mix_public, read_public_rows

    rows = read_rows(cfg.corpus, split="train")
    if cfg.tasks:
        present = {r["task"] for r in rows}
        missing = sorted(set(cfg.tasks) - present)
        if missing:
            raise ConfigError(f"`tasks` names {missing}, absent from the corpus `{cfg.corpus}` (it has {sorted(present)}).")
        rows = [r for r in rows if r["task"] in cfg.tasks]
    specs = task_specs(cfg.corpus, {r["task"] for r in rows}, labels=cfg.labels)
    full = task_specs(cfg.corpus, specs)
    rerender = {t for t in specs if specs[t].hash != full[t].hash}
    rows, form_counts = with_target_forms(rows, cfg.target_forms, specs=specs, rerender=rerender)
    classes = {str(r["id"]): row_class(r, specs.get(r["task"]), cfg.class_balance_by) for r in rows}
    n_ads = len(rows)
    public = read_public_rows(cfg.public_data) if cfg.public_data else []
    refused: list[dict[str, Any]] = []
    if cfg.decontaminate:  # every ads row and the WHOLE public file, before any row is sampled
        index = Decontaminator(cfg.decontaminate, n=cfg.decontam_ngram)
        clean, refused = decontaminate(rows + public, index, on_contamination=cfg.on_contamination)
        if refused and write:
            _write_jsonl(out / "refused_rows.jsonl", refused)
        rows = [r for r in clean if r["task"] != PUBLIC_TASK]
        public = [r for r in clean if r["task"] == PUBLIC_TASK]
    if cfg.public_data:
        rows = mix_public(rows, public, ratio=cfg.public_ratio, seed=cfg.seed)
    examples, report = format_rows(tokenizer, rows, max_seq_len=cfg.max_seq_len, truncation=cfg.truncation,
                                   input_loss_weight=cfg.input_loss_weight)
    if report.dropped_rows and write:
        _write_jsonl(out / "dropped_rows.jsonl", report.dropped_rows)
    if not examples:
        raise DataError(f"no training example is left after formatting ({report.summary()}); raise `max_seq_len`.")
    eval_rows: list[dict[str, Any]] = []
    if cfg.task_weighting or cfg.evaluate or cfg.threshold_method != "none":
        try:
            eval_rows = read_rows(cfg.eval_corpus or cfg.corpus, split="eval")
            if cfg.tasks:
                eval_rows = [r for r in eval_rows if r["task"] in cfg.tasks]
        except DataError as e:
            if cfg.task_weighting:
                raise ConfigError(f"`task_weighting` needs held-out rows: {e} Set `eval_corpus` or "
                                  "`task_weighting = false`.") from e
    class_counts: dict[str, dict[str, int]] = {}
    for e in examples:
        c = classes.get(e.id)
        if c is not None:
            class_counts.setdefault(e.task, {}).setdefault(c, 0)
            class_counts[e.task][c] += 1
    info = {"target_forms": form_counts, "ads_rows": n_ads, "public_rows": sum(r["task"] == PUBLIC_TASK for r in rows),
            "refused_contaminated": len(refused), "format": report.as_dict(), "examples": len(examples),
            "eval_rows": len(eval_rows), "summary": report.summary(), "class_counts": class_counts,
            "tasks": {t: {"hash": s.hash, "labels": list(s.label_fields)} for t, s in specs.items()},
            "specs": specs, "classes": {e.id: classes.get(e.id) for e in examples}}
    return examples, eval_rows, info


class LoglikTaskEvaluator(TaskMetricEvaluator):
    """The built-in evaluator for backends without a decoding loop (a pipeline-sharded Megatron model): a
    labeling task's prediction is the primary field's value with the highest log-likelihood after the prompt and
    its open tag (forward only, through the backend's ``token_logprobs``: ``BackendView.model``), so M_t is the
    BACC of those values. Greedy decoding would emit that value's first token next; what differs from the
    generative evaluator is only that a model which would not have written the open tag is not counted as a
    parse error (there is no parse). Generation tasks use 1/perplexity as before."""

    def predict(self, model: Any, task: str) -> list[dict[str, Any]]:
        from adnanny_sft.evaluation import _obj
        from adnanny_sft.scoring import score_rows

        spec = self.specs[task]
        rows = self.label_rows[task]
        field = spec.primary_field or spec.field_order[0]
        if len(spec.label_fields) != 1 and spec.primary_field is None:
            raise ConfigError(f"task `{task}`: log-likelihood evaluation scores one label field; the task has "
                              f"{list(spec.label_fields)} and no primary field. Plug an evaluator via "
                              "`task_evaluator`.")
        probs, _ = score_rows(model, self.tokenizer, spec, [_obj(r["input"]) for r in rows], field=field,
                              mode="label", batch_size=self.batch_size)
        preds = []
        for r, p in zip(rows, probs, strict=True):
            gold = spec.validate_labels({k: v for k, v in _obj(r["labels"]).items() if k in spec.label_fields})
            best = max(p, key=p.__getitem__)
            pred = {**gold, field: best} if len(spec.label_fields) > 1 else {field: best}
            preds.append({"id": r["id"], "gold": gold, "pred": pred, "raw": str(best)})
        return preds


#: Tokens of a row's start that define its prefix group for batching (``share_prefix``).
_PREFIX_KEY = 48


def class_loss_factors(examples: list[Any], classes: dict[str, str | None]) -> dict[str, float]:
    """``class_balance = "loss"``: per example, n_task / (K_task · n_class) so every class of a task carries the
    same total loss weight and the task's mean factor stays 1 (tasks without classes: factor 1)."""
    per: dict[str, dict[str, int]] = {}
    for e in examples:
        c = classes.get(e.id)
        if c is not None:
            per.setdefault(e.task, {}).setdefault(c, 0)
            per[e.task][c] += 1
    out: dict[str, float] = {}
    for e in examples:
        c = classes.get(e.id)
        if c is None or e.task not in per:
            continue
        counts = per[e.task]
        out[e.id] = sum(counts.values()) / (len(counts) * counts[c])
    return out


def _score_all(backend: Any, examples: list[Any], pad_id: int, batch_size: int) -> tuple[list[str], list[float]]:
    """Token-mean NLL of every training example under the current parameters (exact estimator of eq. 3)."""
    from adnanny_sft.formatting import collate

    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    ids: list[str] = []
    nll: list[float] = []
    for k in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[k:k + batch_size]]
        batch = collate(chunk, pad_id=pad_id, sample_weights=[0.0] * len(chunk))
        ids.extend(e.id for e in chunk)
        nll.extend(float(x) for x in backend.per_sample_nll(batch))
    return ids, nll


def _sha256(path: str) -> str | None:
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.parquet")) if p.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def train(
    cfg: SFTConfig,
    *,
    evaluator: Callable[..., dict[str, float]] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> TrainResult:
    """Run (or resume) one SFT job; see the module docstring. ``evaluator`` overrides ``task_evaluator``;
    ``on_step(step, backend)`` runs after each step's checkpoint (hooks for tests and custom monitoring)."""
    import torch

    from adnanny_cook.lock import LOCK_FILE

    out = Path(cfg.output_dir)
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; a distributed backend checks the world itself
    is_main = rank == 0
    if cfg.backend == "hf" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("`backend` = 'hf' trains on one device; under torchrun use `backend = \"megatron\"` (or "
                          "run one process)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # ---- model and tokenizer, checked before anything is written ------------------------------------
    model_spec, tokenizer = load_model_and_tokenizer(cfg)
    existed = out.exists()
    lock = _lock(out) if is_main else None
    ok = False
    try:
        result = _train_locked(cfg, out, is_main, model_spec, tokenizer, evaluator, on_step)
        ok = True
        return result
    finally:
        if lock is not None:
            lock.release()
            # a run that never started (nothing but the lock written) leaves no folder behind
            if not ok and not existed and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
                import shutil

                shutil.rmtree(out, ignore_errors=True)


def load_model_and_tokenizer(cfg: SFTConfig) -> tuple[Any, Any]:
    """(model spec, tokenizer) of ``cfg`` with every file checked first: a model folder passes adnanny-ckpt's
    ``check_model_dir`` (the one weight rule of sft and serve: pickle-only weights refused unless
    ``allow_pickle``, truncated or corrupt safetensors and a missing tokenizer named); a tokenizer that still
    fails to load is a one-line ``ConfigError`` naming its folder. Writes nothing."""
    from adnanny_ckpt.errors import AdNannyCkptError
    from adnanny_ckpt.models import UnknownModelError, check_model_dir, check_tokenizer_files
    from adnanny_ckpt.models import resolve_model as resolve_dir

    from adnanny_sft.models import resolve_model

    if cfg.model != "tiny-deepseek-v3":
        try:
            check_model_dir(resolve_dir(cfg.model), allow_pickle=cfg.allow_pickle, tokenizer=not cfg.tokenizer)
        except UnknownModelError:
            pass  # resolve_model below names the model and the known names
        except AdNannyCkptError as e:  # CheckpointFormatError / UnsafeInputError: one line naming the file
            raise ConfigError(f"`model` = {cfg.model!r}: {e}") from None
    tok_dir = cfg.tokenizer
    if tok_dir:
        try:
            check_tokenizer_files(tok_dir)
        except AdNannyCkptError as e:
            raise ConfigError(f"`tokenizer` = {tok_dir!r}: {e}") from None
    try:
        return resolve_model(cfg.model, cfg.tokenizer, tiny_hidden_size=cfg.tiny_hidden_size,
                             tiny_layers=cfg.tiny_layers)
    except AdNannySftError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers' tokenizer errors: one line naming the folder
        where = tok_dir or cfg.model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the tokenizer of `{where}`: {first}") from None


def _lock(out: Path) -> Any:
    from adnanny_cook.lock import FolderLock, FolderLockedError

    try:
        return FolderLock(out, "adnanny-sft train").acquire()
    except FolderLockedError as e:
        raise OutputDirLockedError(f"`output_dir` {e}") from None


def build_backend(cfg: SFTConfig, model_spec: Any, *, total_steps: int, out: Path, tokenizer: Any = None) -> Any:
    """The training backend ``cfg.backend`` names: ``hf`` (built in), else the factory registered under that name
    in the entry-point group ``adnanny_sft.backends`` (adnanny-megatron: ``megatron``), called with the HF
    factory's keywords plus the distributed keys (``layout``, ``stage_layers``, ``micro_batch_size``,
    ``timeout_minutes``, ``convert_dir``, ``mtp_loss_weight``, ``core_attention``).

    A random-init model (``tiny-deepseek-v3``) given to a non-HF backend is first written as an HF folder
    (``output_dir/init-model``, rank 0, the very weights the HF backend would draw from ``seed``), so both
    backends start from the same parameters and give the same loss curve."""
    from adnanny_sft.config import BACKEND_GROUP, installed_backends
    from adnanny_sft.hf_backend import LoraSettings, build_hf_backend, resolve_device

    optim = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                 warmup_steps=cfg.warmup_steps, total_steps=total_steps, lr_schedule=cfg.lr_schedule,
                 min_lr_ratio=cfg.min_lr_ratio)
    if cfg.backend == "hf":
        lora = (LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             target_modules=cfg.lora_target_modules[0] if cfg.lora_target_modules == ["all-linear"]
                             else tuple(cfg.lora_target_modules)) if cfg.lora else None)
        return build_hf_backend(model_spec, dtype=cfg.dtype, seed=cfg.seed, lora=lora,
                                device=resolve_device(cfg.device), allow_pickle=cfg.allow_pickle,
                                selective_head=cfg.selective_head, share_prefix=cfg.share_prefix, **optim)
    from importlib.metadata import entry_points

    found = {e.name: e for e in entry_points(group=BACKEND_GROUP)}
    if cfg.backend not in found:
        raise ConfigError(f"`backend` = {cfg.backend!r} is not installed; installed: {installed_backends()} (a "
                          f"backend registers in the entry-point group `{BACKEND_GROUP}`)")
    try:
        factory = found[cfg.backend].load()
    except Exception as e:  # noqa: BLE001 - a broken plugin install, named
        raise ConfigError(f"`backend` = {cfg.backend!r}: its entry point {found[cfg.backend].value!r} fails to "
                          f"load: {e}") from None
    if not isinstance(model_spec, dict) and not any(Path(model_spec).glob("*.safetensors")):
        raise ConfigError(f"`backend` = {cfg.backend!r} converts safetensors weights and `{model_spec}` has none "
                          "(pickle weights are read by the `hf` backend only); convert the folder to safetensors")
    model = _init_model_dir(cfg, model_spec, out, tokenizer) if isinstance(model_spec, dict) else model_spec
    try:
        return factory(model, dtype=cfg.dtype, seed=cfg.seed, lora=None, device=cfg.device, **optim,
                       layout=cfg.layout, stage_layers=cfg.stage_layers or None,
                       micro_batch_size=cfg.micro_batch_size, timeout_minutes=cfg.timeout_minutes,
                       convert_dir=cfg.convert_dir or str(out / "mcore-init"), mtp_loss_weight=cfg.mtp_loss_weight,
                       core_attention=cfg.core_attention)
    except AdNannySftError:
        raise
    except (ValueError, RuntimeError, OSError) as e:
        if type(e).__module__.startswith(("adnanny_", "builtins")):
            raise ConfigError(f"`backend` = {cfg.backend!r}: {e}") from None
        raise


def _init_model_dir(cfg: SFTConfig, model_spec: dict[str, Any], out: Path, tokenizer: Any) -> Path:
    """Rank 0 writes the seeded random init as an HF folder (atomically, once); other ranks wait for it."""
    import time

    from adnanny_sft.hf_backend import load_causal_lm

    final = out / "init-model"
    done = final / "config.json"
    if int(os.environ.get("RANK", "0")) == 0 and not done.is_file():
        import shutil

        tmp = out / f".init-model.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        load_causal_lm(model_spec, dtype="float32", seed=cfg.seed).save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)
    deadline = time.monotonic() + cfg.timeout_minutes * 60
    while not done.is_file():
        if time.monotonic() > deadline:
            raise CheckpointError(f"rank {os.environ.get('RANK')}: `{final}` did not appear within "
                                  f"`timeout_minutes` = {cfg.timeout_minutes}; did rank 0 fail?")
        time.sleep(0.2)
    return final


def _train_locked(cfg: SFTConfig, out: Path, is_main: bool, model_spec: Any, tokenizer: Any,
                  evaluator: Callable[..., dict[str, float]] | None,
                  on_step: Callable[[int, Any], None] | None) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from adnanny_sft.backend import BackendScorer, BackendView
    from adnanny_sft.evaluation import load_evaluator
    from adnanny_sft.formatting import collate, pad_token_id
    from adnanny_sft.logs import NullLog, RunLog
    from adnanny_sft.sampler import MixtureSampler
    from adnanny_sft.weighting import InstanceWeighter, TaskWeighter

    out.mkdir(parents=True, exist_ok=True)
    examples, eval_rows, data_info = prepare_data(cfg, tokenizer, out, write=is_main)
    specs: dict[str, Any] = data_info.pop("specs")
    classes: dict[str, str | None] = data_info.pop("classes")
    pad_id = pad_token_id(tokenizer)
    task_of = {e.id: e.task for e in examples}
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.task] = counts.get(e.task, 0) + 1
    draws_per_step = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(examples) / draws_per_step))

    backend = build_backend(cfg, model_spec, total_steps=total_steps, out=out, tokenizer=tokenizer)
    hf = cfg.backend == "hf"
    if not hf:  # the same torch RNG state on every rank, whatever building the model consumed
        torch.manual_seed(cfg.seed)
    # what evaluation and calibration see: the HF model itself, or log-likelihood scores through the protocol
    scorer_model = getattr(backend, "model", None) if hf else BackendScorer(backend, pad_id=pad_id)
    eval_backend = backend if hf else BackendView(backend, scorer_model)

    # ---- weighting state and sampler ------------------------------------------------------------
    inst = InstanceWeighter(task_of, beta=cfg.instance_beta, w_min=cfg.instance_w_min, w_max=cfg.instance_w_max,
                            estimator=cfg.instance_estimator, normalize=cfg.instance_normalize,
                            enabled=cfg.instance_weighting)
    taskw = TaskWeighter(counts, alpha=cfg.task_alpha, mode=cfg.task_weighting_mode, initial=cfg.task_initial,
                         enabled=cfg.task_weighting)
    balanced = cfg.class_balance == "sampling" and any(c is not None for c in classes.values())
    sampler = MixtureSampler([e.task for e in examples], [len(e) for e in examples], batch_size=cfg.batch_size,
                             seed=cfg.seed, bucket_batches=cfg.bucket_batches,
                             classes=[classes.get(e.id) for e in examples] if balanced else None,
                             prefix_groups=[hash(e.input_ids[:_PREFIX_KEY]) for e in examples] if cfg.share_prefix
                             else None)
    if taskw.enabled and taskw.mode == "sampling":
        sampler.set_task_probs(taskw.sampling_probs())
    class_factor = class_loss_factors(examples, classes) if cfg.class_balance == "loss" else {}
    if evaluator is None and (cfg.task_weighting or cfg.evaluate) and eval_rows:
        extra = {"specs": specs, "collapse_limit": cfg.collapse_limit,
                 "threshold_method": "max_bacc" if cfg.threshold_method == "none" else cfg.threshold_method,
                 "verbose": True} if cfg.task_evaluator == "builtin" else {}
        if extra:
            extra["verbose"] = is_main  # one rank prints the evaluation summary
        if not hf and cfg.task_evaluator == "builtin":
            evaluator = LoglikTaskEvaluator(tokenizer, eval_rows, mode=cfg.eval_mode,
                                            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                                            max_rows_per_task=cfg.eval_rows_per_task, **extra)
        else:
            evaluator = load_evaluator(cfg.task_evaluator, tokenizer=tokenizer, rows=eval_rows, mode=cfg.eval_mode,
                                       max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                                       max_rows_per_task=cfg.eval_rows_per_task, **extra)

    # ---- resume ------------------------------------------------------------------------------------
    log: Any = RunLog(out, tensorboard=cfg.tensorboard) if is_main else NullLog()
    step, resumed_from = 0, 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise ConfigError(f"`output_dir` {str(out)!r} already holds checkpoints ({ckpt.name}) and `resume` is "
                          "false; choose another `output_dir` or set `resume = true`.")
    if ckpt is not None:
        state, rng = read_trainer_state(ckpt)
        saved = state["config"]
        defaults = {k: f.get_default(call_default_factory=True) for k, f in SFTConfig.model_fields.items()}
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if k not in RESUME_SAFE_KEYS and saved.get(k, defaults.get(k)) != v)
        if changed:
            raise CheckpointError(f"cannot resume from `{ckpt}`: config keys {changed} differ from the run that "
                                  "wrote it; restore them or start in a new `output_dir`.")
        backend.load(ckpt)
        sampler.load_state_dict(state["sampler"])
        inst.load_state_dict(state["instance"])
        taskw.load_state_dict(state["task"])
        torch.set_rng_state(rng["torch"])
        step = resumed_from = int(state["step"])
        log.truncate_after(step)
    else:
        log.truncate_after(-1)
        log.write({"kind": "data", "step": 0, **{k: v for k, v in data_info.items() if k != "summary"},
                   "task_counts": counts, "total_steps": total_steps})

    def trainer_state() -> dict[str, Any]:
        return {"step": step, "config": cfg.to_dict(), "sampler": sampler.state_dict(),
                "instance": inst.state_dict(), "task": taskw.state_dict()}

    if inst.enabled and inst.estimator == "epoch" and step == 0:  # ppl under θ^(0) (eq. 4's first term)
        inst.end_of_epoch(*_score_all(eval_backend, examples, pad_id, cfg.batch_size))

    # ---- the loop -----------------------------------------------------------------------------------
    last_good = ckpt
    metrics: dict[str, float] = {}
    metrics_step = -1
    bar = tqdm(total=total_steps, initial=step, disable=not (cfg.progress and is_main), desc="sft", unit="step")
    if cfg.progress and is_main:
        bar.write(f"adnanny-sft: {len(examples)} examples {counts}; {data_info['summary']}; "
                  f"{total_steps} steps{f', resumed from step {step}' if step else ''}")
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            micro = [sampler.next_batch() for _ in range(cfg.grad_accum)]
            chunks = [[examples[i] for i in idx] for _, idx in micro]
            n_tok = sum(e.num_target_tokens for c in chunks for e in c)
            task_loss: dict[str, float] = {}
            task_tok: dict[str, int] = {}
            objective, seen_tokens = 0.0, 0
            for chunk in chunks:
                weights = [inst.loss_weight(e.id) * taskw.loss_factor(e.task) * class_factor.get(e.id, 1.0) / n_tok
                           for e in chunk]
                batch = collate(chunk, pad_id=pad_id, sample_weights=weights)
                losses = backend.forward_backward(batch)  # [B] ℓ_b, eq. 1
                bad = [e.id for e, v in zip(chunk, losses.tolist(), strict=True) if not math.isfinite(v)]
                if bad:
                    raise NonFiniteLossError(
                        f"loss became non-finite at step {step + 1} (samples {bad[:5]}); training stopped. "
                        f"Last good checkpoint: {str(last_good) if last_good else 'none (no checkpoint yet)'}. "
                        "Lower `lr`, check the data, or resume from that checkpoint.")
                objective += float((losses * batch.sample_weights).sum())
                seen_tokens += int(batch.attention_mask.sum())
                mean_nll = []
                for e, v in zip(chunk, losses.tolist(), strict=True):
                    k = e.num_target_tokens
                    task_loss[e.task] = task_loss.get(e.task, 0.0) + v
                    task_tok[e.task] = task_tok.get(e.task, 0) + k
                    mean_nll.append(v / k if k else float("nan"))
                inst.observe([e.id for e in chunk], mean_nll)
            stats = backend.optimizer_step()
            if stats.get("skipped"):
                raise NonFiniteLossError(
                    f"gradient norm is {stats['grad_norm']} at step {step + 1}; the update was not applied and "
                    f"training stopped. Last good checkpoint: {str(last_good) if last_good else 'none'}.")
            step += 1
            dt = time.perf_counter() - t0
            per_task = {t: task_loss[t] / max(1, task_tok[t]) for t in sorted(task_loss)}
            if step % cfg.log_every == 0 or step == total_steps:
                log.write({"kind": "train", "step": step, "epoch": micro[-1][0], "loss": objective,
                           "nll": sum(task_loss.values()) / max(1, n_tok), "task_nll": per_task,
                           "target_tokens": n_tok, "tokens": seen_tokens, "tokens_per_s": seen_tokens / dt,
                           "lr": stats["lr"], "grad_norm": stats["grad_norm"], "lambda": dict(taskw.lambdas)})
            bar.update(1)
            bar.set_postfix_str(f"loss {sum(task_loss.values()) / max(1, n_tok):.3f} {seen_tokens / dt:.0f} tok/s "
                                + " ".join(f"{t[:10]}={v:.2f}" for t, v in per_task.items()))

            # an epoch ended if this step's batches, or the next batch, belong to a later epoch than its first
            epoch_end = (sampler.peek_epoch() if step < total_steps else micro[-1][0]) > micro[0][0]
            if epoch_end or step == total_steps:
                if inst.enabled and inst.estimator == "epoch" and epoch_end and step < total_steps:
                    inst.end_of_epoch(*_score_all(eval_backend, examples, pad_id, cfg.batch_size))
                log.write({"kind": "epoch", "step": step, "epoch": micro[-1][0],
                           "instance_weights": inst.per_task_stats()})
            due_eval = evaluator is not None and (
                (cfg.task_eval_every and step % cfg.task_eval_every == 0) or (not cfg.task_eval_every and epoch_end))
            if due_eval:
                metrics, metrics_step = evaluator(eval_backend, step=step), step
                lambdas = taskw.update(metrics, step)
                if taskw.enabled and taskw.mode == "sampling":
                    sampler.set_task_probs(taskw.sampling_probs())
                log.write({"kind": "eval", "step": step, "metrics": metrics, "lambda": lambdas,
                           "details": getattr(evaluator, "last_details", {})})
            if (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and epoch_end) \
                    or step == total_steps:
                last_good = save_checkpoint(out, step, backend, trainer_state(), keep=cfg.keep_checkpoints,
                                            distributed=not hf)
            if on_step is not None:
                on_step(step, backend)
    finally:
        bar.close()
        log.close()

    # ---- final metrics, model and manifest --------------------------------------------------------
    if evaluator is not None and metrics_step != step:  # report metrics of the final model
        metrics = evaluator(eval_backend, step=step)
        log_final = {"kind": "final_eval", "step": step, "metrics": metrics,
                     "details": getattr(evaluator, "last_details", {})}
        final_log = RunLog(out, tensorboard=False) if is_main else NullLog()
        final_log.write(log_final)
        final_log.close()
    model_dir = None
    thresholds: dict[str, Any] = {}
    if cfg.threshold_method != "none" and eval_rows:
        thresholds = calibrate_tasks(scorer_model, tokenizer, specs, eval_rows,
                                     method=cfg.threshold_method, max_rows=cfg.calibration_rows,
                                     batch_size=cfg.eval_batch_size)
        for t, th in thresholds.items():
            if is_main and (cfg.progress or th.get("warning")):
                print(f"adnanny-sft: task `{t}` threshold {th['threshold']:.4f} ({th['threshold_method']}) on "
                      f"{th['n']} validation rows: BACC {th['val_bacc']:.1%}, AUC {th['val_auc']:.3f}"
                      + (f"; {th['warning']}" if th.get("warning") else ""), file=sys.stderr, flush=True)
    if cfg.export and hasattr(backend, "export") and is_main:
        model_dir = backend.export(out / "model", tokenizer=tokenizer)
        write_model_manifest(model_dir, specs, thresholds, base_model=cfg.model, corpus=cfg.corpus,
                             extra={"sft": {"steps": step, "labels": cfg.labels, "target_forms": cfg.target_forms,
                                            "class_balance": cfg.class_balance}})
    elif cfg.export and is_main:  # e.g. Megatron: the last checkpoint, converted by adnanny-ckpt
        model_dir = _export_checkpoint(last_good, out / "model", cfg.backend)
        if model_dir is not None:
            write_model_manifest(model_dir, specs, thresholds, base_model=cfg.model, corpus=cfg.corpus,
                                 extra={"sft": {"steps": step, "labels": cfg.labels, "backend": cfg.backend,
                                                "target_forms": cfg.target_forms, "class_balance": cfg.class_balance}})
    if is_main:
        _write_manifest(out, cfg, data_info, metrics, step, thresholds)
    return TrainResult(output_dir=out, steps=step, model_dir=model_dir, metrics=metrics, data=data_info,
                       resumed_from=resumed_from, is_main=is_main)


def _export_checkpoint(ckpt: Path | None, dest: Path, backend: str) -> Path | None:
    """A backend without ``export`` (Megatron): its last checkpoint carries adnanny-ckpt's descriptor
    (``adnanny_ckpt.json``), so ``adnanny_ckpt.mcore_to_hf`` merges it into an HF folder (into a temporary name,
    then renamed: a crash leaves no half model). Without a descriptor the checkpoint stays the model (said)."""
    import shutil

    if ckpt is None or not (Path(ckpt) / "adnanny_ckpt.json").is_file():
        print(f"adnanny-sft: the `{backend}` backend has no HF export and its checkpoint `{ckpt}` no adnanny-ckpt "
              "descriptor; the checkpoint is the model", file=sys.stderr, flush=True)
        return None
    from adnanny_ckpt import mcore_to_hf

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        mcore_to_hf(str(ckpt), str(tmp), overwrite=True, progress=False)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write_manifest(out: Path, cfg: SFTConfig, data: dict[str, Any], metrics: dict[str, float], step: int,
                    thresholds: dict[str, Any] | None = None) -> None:
    import torch
    import transformers

    from adnanny_cook.corpus import atomic_write_bytes
    from adnanny_sft.__about__ import __version__

    manifest = {
        "stage": "sft", "steps": step, "config": cfg.to_dict(),
        "inputs": {"corpus": {"path": cfg.corpus, "sha256": _sha256(cfg.corpus)},
                   "public_data": {"path": cfg.public_data, "sha256": _sha256(cfg.public_data)} if cfg.public_data else None},
        "data": data, "metrics": metrics, "thresholds": thresholds or {},
        "versions": {"adnanny-sft": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
