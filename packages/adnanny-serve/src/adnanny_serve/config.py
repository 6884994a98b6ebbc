"""Typed configs of ``adnanny-serve label`` (:class:`LabelConfig`) and ``adnanny-serve serve`` (:class:`ServeConfig`).

One mechanism for every AdNanny package: adnanny-cook's ``adnanny_cook.settings`` (pydantic-settings). A TOML key
and its flag share one name (``chunk_size = 32`` <=> ``--chunk-size 32`` or ``--chunk_size 32``); flags win over
the file; unknown keys are refused with the closest known key suggested, and every problem of one load is
reported in one :class:`~adnanny_serve.errors.ConfigError` naming each key (``invalid label config `l.toml`:
unknown key `chunk_sise` (did you mean `chunk_size`?)``). The flags are generated from these models, so the help
text is the fields' descriptions. Building a config in Python (``LabelConfig(model=..., ...)``) validates the
same way and raises the same error class.

Bool keys are flags without a value (``--example``, ``--no-progress``, ``--allow-pickle``, ``--no-threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from adnanny_cook.settings import Settings, format_validation_error, load_settings
from adnanny_serve.errors import ConfigError

__all__ = ["LabelConfig", "ServeConfig", "load_label_config", "load_serve_config"]

MODES = ("label", "reasoning")


def _columns(value: Any) -> Any:
    """``columns``: a TOML table or ``field=column,...`` (adnanny-cook's one ``parse_columns``); empty -> None."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, Mapping):
        bad = {k: v for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str) or not v}
        if bad:
            raise ValueError(f"must map task fields to file column names (strings), got {bad!r}")
        return dict(value)
    if isinstance(value, str):
        from adnanny_cook.inputs import parse_columns

        try:
            return dict(parse_columns(value))
        except Exception as e:  # adnanny-cook's ConfigError names the bad piece
            raise ValueError(str(e).removeprefix("`columns`: ")) from None
    raise ValueError(f"must be 'field=column,...' or a table, got {type(value).__name__}")


def _labels(value: Any) -> Any:
    """``labels``: ``"label,quality_label"`` or a list of field names; empty -> None."""
    if value is None or value == "" or value == () or value == []:
        return None
    if isinstance(value, str):
        out = tuple(v.strip() for v in value.split(",") if v.strip())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        out = tuple(v.strip() for v in value)
    else:
        raise ValueError(f"must be 'field,field' or a list of field names, got {value!r}")
    if not out:
        raise ValueError(f"{value!r} names no label field")
    return out


ColumnMap = Annotated[dict[str, str] | None, NoDecode, BeforeValidator(_columns)]
LabelList = Annotated[tuple[str, ...] | None, NoDecode, BeforeValidator(_labels)]
Dtype = Literal["float32", "bfloat16", "float16"]
Fp8Weights = Literal["dequantize", "keep"]


class _ServeSettings(Settings):
    """adnanny-cook's ``Settings`` whose direct construction raises serve's ``ConfigError`` (one line naming the
    keys) instead of pydantic's multi-line ``ValidationError``: ``LabelConfig(...)`` is public API."""

    _what: ClassVar[str] = "config"

    def __init__(self, **data: Any) -> None:
        if "settings_customise_sources" in type(self).__dict__:  # built by load_settings: it names the file itself
            super().__init__(**data)
            return
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, type(self), f"invalid {self._what}")) from None


class LabelConfig(_ServeSettings):
    """Settings of ``adnanny-serve label`` (TOML keys == flags)."""

    model_config = SettingsConfigDict(cli_implicit_flags=True, cli_prog_name="adnanny-serve label")
    _what: ClassVar[str] = "label config"

    model: str = Field(description="Model dir (HF checkpoint; FP8 ones per --fp8-weights) or a built-in name "
                                   "(smollm2).")
    task: str = Field("", description="Task: a built-in/registered name (query_ad, ad_user, keyword_query, ...) or "
                      "a TOML task file; default: the one task stored in the model dir (tasks/NAME.toml). A name "
                      "the model dir stores is loaded from there (the definition it was trained on).")
    input: str = Field("", description="Input CSV / JSONL / Parquet: `id` + the task's input fields (renamed with "
                       "--columns), or a corpus-style `input` JSON column.")
    out: str = Field("", description="Output predictions Parquet.")
    mode: Literal["label", "reasoning"] = Field("label", description="label: tags only (fast); reasoning: think "
                                                "first.")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="Inference engine.")
    device: str = Field("cpu", description="cpu or cuda (cuda:N).")
    dtype: Dtype | None = Field(None, description="float32 / bfloat16 / float16 (default fp32 on CPU, bf16 on "
                                "CUDA).")
    fp8_weights: Fp8Weights | None = Field(
        None, description="FP8 checkpoints: keep = weights stay float8 in memory (per-layer block-scaled matmul); "
        "dequantize = expanded at load. Default: keep on CUDA, dequantize on CPU.")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call.")
    chunk_size: int = Field(64, ge=1, description="Rows per resumable chunk.")
    max_tokens: int | None = Field(None, ge=1, description="Generation budget (label mode: 32 label tasks / 128 "
                                   "generation tasks; reasoning 512).")
    top_logprobs: int = Field(20, ge=1, description="Alternatives kept per step for `score`.")
    example: bool = Field(False, description="Add the task's one fixed worked example. It biases small models "
                          "toward that example's label (SmolLM2 copied it on 95% of rows); prefer --few-shot.")
    columns: ColumnMap = Field(None, description="Map task fields to file columns: `query=search_term,"
                               "ad_title=title,id=row_id` or a TOML table (also applied to --few-shot-from).")
    labels: LabelList = Field(None, description="Label fields to predict, comma-separated (e.g. `label` for "
                              "relevance-only query_ad).")
    max_input_tokens: int | None = Field(None, ge=1, description="Budget of the whole prompt in tokens: the "
                                         "longest input fields are cut to fit, never the instructions.")
    few_shot: int = Field(0, ge=0, description="K worked examples drawn from --few-shot-from, balanced across the "
                          "primary label's values (seeded; a row never sees itself).")
    few_shot_from: str | None = Field(None, description="Labeled CSV/JSONL/Parquet of your training rows (same "
                                      "--columns).")
    few_shot_seed: int = Field(0, description="Seed of the few-shot draw.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Decision threshold on `score` for the "
                                    "primary field (defect iff score < threshold); default: the model's "
                                    "adnanny_model.json, if any.")
    no_threshold: bool = Field(False, description="Ignore the model's threshold: greedy labels.")
    executor: Literal["local", "ray"] = Field("local", description="local, or ray (engine replicas on a Ray "
                                              "cluster: RAY_ADDRESS, or a local one).")
    num_workers: int = Field(2, ge=1, description="Ray: engine replicas (actors).")
    retries: int = Field(2, ge=0, description="Ray: times a failed chunk is retried before the run fails naming "
                         "it.")
    progress: bool = Field(True, description="Show the progress bar (--no-progress hides it).")
    allow_pickle: bool = Field(False, description="Load pickle weights (pytorch_model.bin) from a model folder "
                               "without safetensors. Unpickling runs code from the file: only for models you trust.")

    @model_validator(mode="after")
    def _cross_field(self) -> LabelConfig:
        errs: list[str] = []
        if self.few_shot and not self.few_shot_from:
            errs.append("`few_shot` needs `few_shot_from` (a labeled CSV/JSONL/Parquet of your training rows)")
        elif self.few_shot_from and not self.few_shot:
            errs.append("`few_shot_from` is given but `few_shot` is 0; pass `--few-shot K`")
        if self.few_shot and self.example:
            errs.append("`example` and `few_shot` exclude each other; use `few_shot` (the fixed example biases "
                        "small models)")
        if self.threshold is not None and self.no_threshold:
            errs.append("`threshold` and `no_threshold` exclude each other")
        if errs:
            raise ValueError("; ".join(errs))
        return self

    def check_runnable(self) -> None:
        """`input` and `out` are needed to run (a config built only to resolve a task/threshold may omit them)."""
        missing = [f"`{k}` is required" for k in ("input", "out") if not getattr(self, k)]
        if missing:
            raise ConfigError("invalid label config: " + "; ".join(missing) + ".")

    def max_tokens_for(self, task: Any) -> int:
        if self.max_tokens is not None:
            return self.max_tokens
        if self.mode == "reasoning":
            return 512
        return 32 if task.kind == "label" else 128


class ServeConfig(_ServeSettings):
    """Settings of ``adnanny-serve serve`` (TOML keys == flags)."""

    model_config = SettingsConfigDict(cli_implicit_flags=True, cli_prog_name="adnanny-serve serve")
    _what: ClassVar[str] = "serve config"

    model: str = Field(description="Local HF checkpoint dir or a built-in name (smollm2).")
    served_model_name: str | None = Field(None, description="Name clients pass as `model` (default: the built-in "
                                          "name or the folder's basename).")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    api_key: str | None = Field(None, description="Require `Authorization: Bearer KEY` (or $ADNANNY_SERVE_API_KEY).")
    device: str = Field("cpu", description="cpu or cuda (cuda:N).")
    dtype: Dtype | None = Field(None, description="float32 / bfloat16 / float16.")
    fp8_weights: Fp8Weights | None = Field(None, description="FP8 checkpoints: keep (float8 in memory) or "
                                           "dequantize; default keep on CUDA, dequantize on CPU.")
    batch_size: int = Field(8, ge=1, description="Max sequences per engine batch.")
    max_queue: int = Field(64, ge=1, description="Waiting prompts before 429.")
    batch_wait_ms: float = Field(5.0, ge=0, description="Wait for a batch to fill (static batching).")
    max_prompt_tokens: int = Field(4096, ge=1, description="Longest prompt.")
    max_tokens: int = Field(1024, ge=1, description="Largest max_tokens allowed.")
    max_queue_tokens: int | None = Field(None, ge=1, description="Also refuse (429) when the waiting requests' "
                                         "prompt + max_tokens tokens would exceed this.")
    batching: Literal["static", "continuous"] = Field(
        "static", description="static: batches of requests with equal parameters; continuous: requests join and "
        "leave the running batch at every decoding step (mixed parameters and seeds).")
    allow_pickle: bool = Field(False, description="Load pickle weights (pytorch_model.bin) if the folder has no "
                               "safetensors (trusted models only).")
    prefix_caching: bool = Field(True, description="Compute the KV of the prompts' shared prefix (system prompt) "
                                 "once and prefill only each prompt's own suffix (`--no-prefix-caching`: off).")
    threads: int = Field(0, ge=0, description="torch CPU threads of the engine; 0: all cores but one on CPU (the "
                         "HTTP side needs one), torch's default on CUDA.")


def load_label_config(path: str | Path | None = None, *, cli: Any = None,
                      overrides: Mapping[str, Any] | None = None) -> LabelConfig:
    """TOML file (optional) + flags (a list as on the command line, or a source from ``add_settings_flags``) +
    overrides (None = not given) -> a validated :class:`LabelConfig`; every problem in one ``ConfigError``."""
    return load_settings(LabelConfig, path, cli=cli, overrides=overrides, error=ConfigError, what="label config")


def load_serve_config(path: str | Path | None = None, *, cli: Any = None,
                      overrides: Mapping[str, Any] | None = None) -> ServeConfig:
    """The same for :class:`ServeConfig`."""
    return load_settings(ServeConfig, path, cli=cli, overrides=overrides, error=ConfigError, what="serve config")
