"""`CookConfig` (`adnanny-cook run` / `validate-prompts`) and `CorpusConfig` (`adnanny-cook corpus`): typed
pydantic-settings models, loaded through the shared `adnanny_cook.settings` mechanism.

A TOML key and its CLI flag share one name (`executor = "ray"` <-> `--executor ray`; `on_bad_row` <->
`--on-bad-row` or `--on_bad_row`; `k` <-> `--k` or `-k`). Unknown keys are errors with the closest known key
suggested; every problem of one load is reported at once, each naming its key. Lists take a TOML array or a
comma-separated string (`--variants steps,short`), `columns` a TOML table or `field=column,field=column`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from adnanny_cook.errors import ConfigError
from adnanny_cook.settings import Settings, load_settings, split_commas

__all__ = ["CookConfig", "CorpusConfig", "load_config"]


def _columns(value: Any) -> Any:
    """`columns` from a string (`query=search_term,label=esci`, parsed by the one `parse_columns`) or a table."""
    from adnanny_cook.inputs import parse_columns

    if isinstance(value, str) or value is None:
        try:
            return parse_columns(value)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("`columns`: ")) from None
    return value


#: A list key: a TOML array, or one comma-separated string from a flag / an overrides dict.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
#: Task field -> file column: a TOML table or `field=column,field=column`.
ColumnMap = Annotated[dict[str, str], NoDecode, BeforeValidator(_columns)]


class _TaskConfig(Settings):
    """What `run` and `corpus` share: the task reference (resolved once, errors named with the other problems)
    and the dataset keys checked against the task's fields."""

    model_config = SettingsConfigDict(cli_prog_name="adnanny-cook")
    _spec: Any = PrivateAttr(default=None)

    @field_validator("task", check_fields=False)
    @classmethod
    def _task_exists(cls, value: str) -> str:
        from adnanny_cook.errors import AdNannyCookError, UnknownTaskError
        from adnanny_cook.tasks import load_task, task_names

        if not value:
            raise ValueError(f"must name a task: one of {list(task_names())} or a path to a .toml task file")
        try:
            load_task(value)
        except UnknownTaskError:
            raise ValueError(f"must be one of {list(task_names())} or a path to a .toml task file, got "
                             f"{value!r}") from None
        except AdNannyCookError as e:
            raise ValueError(str(e)) from None
        return value

    def _task_problems(self) -> list[str]:
        """`labels`, `columns` (and the variant lists of `run`) against the task's definition."""
        errs: list[str] = []
        spec = self.base_spec
        labels: list[str] = getattr(self, "labels")
        columns: dict[str, str] = getattr(self, "columns")
        if labels:
            try:
                spec.select_labels(tuple(labels))
            except ConfigError as e:
                errs.append(f"`labels`: {e}")
        valid_fields = set(spec.input_fields) | set(spec.label_fields)
        bad_cols = [k for k in columns if k not in valid_fields]
        if bad_cols:
            errs.append(f"`columns` maps unknown task fields {bad_cols}; task `{spec.name}` fields are "
                        f"{sorted(valid_fields)}")
        return errs

    # ------------------------------------------------------------------ derived
    @property
    def base_spec(self) -> Any:
        """The task definition `task` names (a built-in/registered name or a TOML task file)."""
        if self._spec is None:
            from adnanny_cook.tasks import load_task

            self._spec = load_task(getattr(self, "task"))
        return self._spec

    @property
    def spec(self) -> Any:
        """The task restricted to this dataset's label fields (`labels`; all fields when empty)."""
        labels = getattr(self, "labels")
        return self.base_spec.select_labels(tuple(labels)) if labels else self.base_spec

    @property
    def task_name(self) -> str:
        """The task's `name` (what corpus rows carry), also when `task` is a file path."""
        return self.base_spec.name

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready): what the manifest records and resume compares."""
        return self.model_dump()


class CookConfig(_TaskConfig):
    """Configuration of one cooking run (paper §3.1-3.4). Paths are relative to the working directory."""

    model_config = SettingsConfigDict(cli_prog_name="adnanny-cook run")

    # --- data
    task: str = Field(description="task name (adnanny_cook.tasks.TASK_NAMES) or path to a TOML task file")
    input: str = Field(description="labeled rows: .parquet, .csv, .jsonl or .json")
    out: str = Field(description="output directory (corpus.parquet, card, rejects, cache, manifest)")
    columns: ColumnMap = Field(default_factory=dict, description="task field -> column name in `input`")
    labels: CommaList = Field(default_factory=list, description="label fields of this dataset (default: required + "
                                                                "present)")
    id_column: str = Field("id", description="row id column (row number when absent)")
    limit: int = Field(0, ge=0, description="use only the first N rows (0 = all)")
    on_bad_row: Literal["error", "quarantine"] = Field("error", description="\"error\": stop naming the rows; "
                                                                            "\"quarantine\": write rejects.jsonl")
    # --- teacher
    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="teacher model name as the endpoint knows it")
    api_key_env: str = Field("OPENAI_API_KEY",
                             description="environment variable holding the key (\"EMPTY\" when unset)")
    concurrency: int = Field(16, ge=1, description="teacher requests in flight at once")
    rpm: float = Field(0.0, ge=0, description="requests per minute (0 = unlimited)")
    tpm: float = Field(0.0, ge=0, description="tokens per minute (0 = unlimited)")
    max_retries: int = Field(6, ge=0, description="retries on 429 / 5xx / connection failures / a server that stopped "
                                                  "answering (exponential backoff + jitter)")
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for an answer before probing the server "
                                                      "(GET /models); a request on a live server is waited for, "
                                                      "never re-sent. Size it above ceil(concurrency / server "
                                                      "slots) x seconds per request")
    max_wait_s: float = Field(0.0, ge=0, description="longest wait for one answer while the server is up (0 = 10 x "
                                                     "timeout_s); then the call fails WITHOUT a re-send and its "
                                                     "chunk is redone on rerun")
    backoff_base_s: float = Field(0.5, gt=0, description="first backoff; doubles per attempt (Retry-After wins if "
                                                         "longer)")
    backoff_max_s: float = Field(30.0, gt=0, description="backoff ceiling")
    price_in_per_mtok: float = Field(0.0, ge=0, description="$ per 1M prompt tokens (cost accounting)")
    price_out_per_mtok: float = Field(0.0, ge=0, description="$ per 1M completion tokens")
    temperature: float = Field(0.7, description="teacher sampling temperature")
    top_p: float = Field(0.95, ge=0, le=1, description="teacher nucleus sampling")
    max_tokens: int = Field(1024, ge=1, description="teacher completion budget")
    stop: list[str] = Field(default_factory=list, description="stop strings of reasoning requests (TOML array; "
                                                              "e.g. [\"\\n\\n\"] ends an explanation at its "
                                                              "first paragraph); empty = none")
    cache: str = Field("", description="SQLite cache path (default: <out>/cache.sqlite)")
    # --- reasoning generation / rejection sampling
    k: int = Field(4, ge=1, description="candidates per input (prompt variants x decoding seeds)")
    variants: CommaList = Field(default_factory=list, description="prompt variant ids (default: all of the task's)")
    teacher_answer: Literal["tagged", "explanation"] = Field(
        "tagged", description="what a reasoning request asks for: \"tagged\" (<think> + the label tags) or "
                              "\"explanation\" (the explanation alone; the given labels' tags are added before "
                              "the filters judge it: lets a small teacher contribute)")
    n_generate: int = Field(6, ge=1, description="queries asked from the generation prompt (generation tasks)")
    keep_per_input: int = Field(1, ge=1, description="rationales kept per input (chosen by MMR)")
    label_rows: bool = Field(True, description="also emit label-only rows (mode \"label\")")
    embed_model: Literal["minilm", "hashing"] = Field("minilm", description="\"minilm\" (all-MiniLM-L6-v2, offline) or "
                                                                            "\"hashing\"")
    self_consistency_min_sim: float = Field(0.6, ge=0, le=1, description="drop candidates whose cosine to the medoid "
                                                                         "trace is lower")
    boilerplate_min_overlap: int = Field(3, ge=0, description="distinct input content words a trace must cite")
    boilerplate_min_words: int = Field(12, ge=0, description="shortest acceptable trace")
    off_topic_min_sim: float = Field(0.25, ge=0, le=1, description="keyword queries: cosine to keyword+ad+landing page "
                                                                   "below = off-topic")
    near_dup_threshold: float = Field(0.8, ge=0, le=1, description="token Jaccard for near-duplicate queries / split "
                                                                   "groups")
    cross_input_min_sim: float = Field(0.45, ge=0, le=1, description="near-duplicate inputs, same labels: rationales "
                                                                     "below are flagged")
    drop_cross_inconsistent: bool = Field(False, description="drop (not just flag) cross-input inconsistent rationales")
    mmr_lambda: float = Field(0.7, ge=0, le=1, description="MMR: weight of centrality vs diversity")
    verifier_base_url: str = Field("", description="second endpoint; empty = no verifier")
    verifier_model: str = Field("", description="model name at verifier_base_url")
    # --- golden-set validation (§3.3)
    golden: str = Field("", description="golden jsonl; when set, `run` validates prompts first")
    gate_format: float = Field(0.95, ge=0, le=1, description="min format adherence per prompt variant")
    gate_faithful: float = Field(0.9, ge=0, le=1, description="min label faithfulness per prompt variant")
    gate_consistency: float = Field(0.8, ge=0, le=1, description="min fraction of golden examples consistent across "
                                                                 "variants")
    golden_variants: CommaList = Field(default_factory=list, description="variants to validate (default: all)")
    # --- corpus
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of rows in the eval split (grouped)")
    seed: int = Field(0, description="split and shuffle seed")
    write_dropped: bool = Field(True, description="dropped.jsonl with every rejected candidate and its reason")
    chunk_size: int = Field(64, ge=1, description="inputs per checkpointed chunk")
    executor: Literal["local", "ray"] = Field("local", description="\"local\" (asyncio) or \"ray\" (Ray Data)")
    ray_address: str = Field("", description="empty: start a local Ray cluster")
    ray_num_cpus: int = Field(2, ge=1, description="CPUs of the local Ray cluster (and actors)")
    progress: bool = Field(True, description="tqdm bar with rate, ETA, kept/dropped counts")

    @model_validator(mode="after")
    def _cross_field(self) -> CookConfig:
        errs = self._task_problems()
        known = [v.id for v in self.base_spec.reasoning_variants]
        for key in ("variants", "golden_variants"):
            bad = [v for v in getattr(self, key) if v not in known]
            if bad:
                errs.append(f"`{key}` has unknown variant ids {bad} for task `{self.task}`; known: {known}")
        if self.keep_per_input > self.k:
            errs.append(f"`keep_per_input` ({self.keep_per_input}) cannot exceed `k` ({self.k})")
        if bool(self.verifier_base_url) != bool(self.verifier_model):
            errs.append("`verifier_base_url` and `verifier_model` must be set together")
        if errs:
            raise ValueError("; ".join(errs))
        return self

    @property
    def cache_path(self) -> str:
        return self.cache or str(Path(self.out) / "cache.sqlite")

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") or "EMPTY"

    def variant_ids(self) -> list[str]:
        return list(self.variants) or [v.id for v in self.base_spec.reasoning_variants]


class CorpusConfig(_TaskConfig):
    """Configuration of `adnanny-cook corpus`: labeled rows -> a label-only corpus, no teacher involved."""

    model_config = SettingsConfigDict(cli_prog_name="adnanny-cook corpus")

    task: str = Field(description="task name (adnanny_cook.tasks.TASK_NAMES) or path to a TOML task file")
    input: str = Field(description="labeled rows: .csv, .jsonl, .parquet or .json")
    out: str = Field(description="output directory (corpus.parquet, tasks/, card, rejects, manifest)")
    columns: ColumnMap = Field(default_factory=dict, description="task field -> column name in `input`")
    labels: CommaList = Field(default_factory=list, description="label fields of this dataset (default: required + "
                                                                "present)")
    id_column: str = Field("id", description="row id column (row number when absent); ids are kept as corpus ids")
    limit: int = Field(0, ge=0, description="use only the first N rows (0 = all)")
    on_bad_row: Literal["error", "quarantine"] = Field("error", description="\"error\": stop naming the rows; "
                                                                            "\"quarantine\": write rejects.jsonl")
    split_column: str = Field("", description="use your own split (train/eval; test/val/dev count as eval) instead")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of rows in the eval split (grouped by the task's "
                                                              "split_keys)")
    seed: int = Field(0, description="split and shuffle seed")
    near_dup_threshold: float = Field(0.8, ge=0, le=1, description="token Jaccard of split keys above which rows share "
                                                                   "a split group")
    example: bool = Field(False, description="add the task's worked example to every prompt")

    @model_validator(mode="after")
    def _cross_field(self) -> CorpusConfig:
        errs = self._task_problems()
        if errs:
            raise ValueError("; ".join(errs))
        return self


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None, *,
                kind: type[_TaskConfig] = CookConfig, cli: Any = None) -> Any:
    """TOML file (optional; its keys may sit in one `[cook]` / `[corpus]` table) + flags (`cli`: a list as on the
    command line, or a source from `add_settings_flags`) + overrides (None means "not given") -> a validated
    `kind` (`CookConfig`, or `CorpusConfig` for `adnanny-cook corpus`). Problems raise one `ConfigError`."""
    what = "cook config" if kind is CookConfig else "corpus config"
    return load_settings(kind, path, cli=cli, overrides=overrides, error=ConfigError, what=what,
                         tables=("cook", "corpus"))
