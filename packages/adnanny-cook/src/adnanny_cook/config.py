"""`CookConfig`: every knob of `adnanny-cook run`, from a TOML file and/or flags of the same name.

A TOML key and its CLI flag share one name (`executor = "ray"` <-> `--executor ray`; `on_bad_row` <->
`--on-bad-row` or `--on_bad_row`). Unknown keys are errors; all problems are reported at once, each naming its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from adnanny_cook.errors import ConfigError

__all__ = ["CookConfig", "CorpusConfig", "load_config"]


@dataclass
class CookConfig:
    """Configuration of one cooking run (paper §3.1-3.4). Paths are relative to the working directory."""

    # --- data
    task: str = ""                        # task name (adnanny_cook.tasks.TASK_NAMES) or path to a TOML task file
    input: str = ""                       # labeled rows: .parquet, .csv, .jsonl or .json
    out: str = ""                         # output directory (corpus.parquet, card, rejects, cache, manifest)
    columns: dict[str, str] = field(default_factory=dict)  # task field -> column name in `input`
    labels: list[str] = field(default_factory=list)  # label fields of this dataset (default: required + present)
    id_column: str = "id"                 # row id column (row number when absent)
    limit: int = 0                        # use only the first N rows (0 = all)
    on_bad_row: str = "error"             # "error": stop naming the rows; "quarantine": write rejects.jsonl
    # --- teacher
    base_url: str = ""                    # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    model: str = ""                       # teacher model name as the endpoint knows it
    api_key_env: str = "OPENAI_API_KEY"   # environment variable holding the key ("EMPTY" when unset)
    concurrency: int = 16                 # teacher requests in flight at once
    rpm: float = 0.0                      # requests per minute (0 = unlimited)
    tpm: float = 0.0                      # tokens per minute (0 = unlimited)
    max_retries: int = 6                  # retries on 429 / 5xx / timeouts (exponential backoff + jitter)
    timeout_s: float = 120.0              # per-request timeout
    backoff_base_s: float = 0.5           # first backoff; doubles per attempt (Retry-After wins if longer)
    backoff_max_s: float = 30.0           # backoff ceiling
    price_in_per_mtok: float = 0.0        # $ per 1M prompt tokens (cost accounting)
    price_out_per_mtok: float = 0.0       # $ per 1M completion tokens
    temperature: float = 0.7              # teacher sampling temperature
    top_p: float = 0.95                   # teacher nucleus sampling
    max_tokens: int = 1024                # teacher completion budget
    cache: str = ""                       # SQLite cache path (default: <out>/cache.sqlite)
    # --- reasoning generation / rejection sampling
    k: int = 4                            # candidates per input (prompt variants x decoding seeds)
    variants: list[str] = field(default_factory=list)  # prompt variant ids (default: all of the task's)
    n_generate: int = 6                   # queries asked from the generation prompt (generation tasks)
    keep_per_input: int = 1               # rationales kept per input (chosen by MMR)
    label_rows: bool = True               # also emit label-only rows (mode "label")
    embed_model: str = "minilm"           # "minilm" (all-MiniLM-L6-v2, offline) or "hashing"
    self_consistency_min_sim: float = 0.6  # drop candidates whose cosine to the medoid trace is lower
    boilerplate_min_overlap: int = 3      # distinct input content words a trace must cite
    boilerplate_min_words: int = 12       # shortest acceptable trace
    off_topic_min_sim: float = 0.25       # keyword queries: cosine to keyword+ad+landing page below = off-topic
    near_dup_threshold: float = 0.8       # token Jaccard for near-duplicate queries / split groups
    cross_input_min_sim: float = 0.45     # near-duplicate inputs, same labels: rationales below are flagged
    drop_cross_inconsistent: bool = False  # drop (not just flag) cross-input inconsistent rationales
    mmr_lambda: float = 0.7               # MMR: weight of centrality vs diversity
    verifier_base_url: str = ""           # second endpoint; empty = no verifier
    verifier_model: str = ""              # model name at verifier_base_url
    # --- golden-set validation (§3.3)
    golden: str = ""                      # golden jsonl; when set, `run` validates prompts first
    gate_format: float = 0.95             # min format adherence per prompt variant
    gate_faithful: float = 0.9            # min label faithfulness per prompt variant
    gate_consistency: float = 0.8         # min fraction of golden examples consistent across variants
    golden_variants: list[str] = field(default_factory=list)  # variants to validate (default: all)
    # --- corpus
    eval_fraction: float = 0.1            # share of rows in the eval split (grouped)
    seed: int = 0                         # split and shuffle seed
    write_dropped: bool = True            # dropped.jsonl with every rejected candidate and its reason
    chunk_size: int = 64                  # inputs per checkpointed chunk
    executor: str = "local"               # "local" (asyncio) or "ray" (Ray Data)
    ray_address: str = ""                 # empty: start a local Ray cluster
    ray_num_cpus: int = 2                 # CPUs of the local Ray cluster (and actors)
    progress: bool = True                 # tqdm bar with rate, ETA, kept/dropped counts

    def __post_init__(self) -> None:
        errs: list[str] = []
        spec = self._resolve_task(errs)
        for key in ("input", "out", "base_url", "model"):
            if not getattr(self, key):
                errs.append(f"`{key}` is required (set it in the TOML file or with --{key.replace('_', '-')})")
        if self.on_bad_row not in ("error", "quarantine"):
            errs.append(f"`on_bad_row` must be 'error' or 'quarantine', got {self.on_bad_row!r}")
        if self.executor not in ("local", "ray"):
            errs.append(f"`executor` must be 'local' or 'ray', got {self.executor!r}")
        if self.embed_model not in ("minilm", "hashing"):
            errs.append(f"`embed_model` must be 'minilm' or 'hashing', got {self.embed_model!r}")
        for key in ("concurrency", "k", "keep_per_input", "n_generate", "max_tokens", "chunk_size",
                    "ray_num_cpus"):
            if getattr(self, key) < 1:
                errs.append(f"`{key}` must be >= 1, got {getattr(self, key)!r}")
        for key in ("rpm", "tpm", "max_retries", "limit", "boilerplate_min_overlap", "boilerplate_min_words",
                    "price_in_per_mtok", "price_out_per_mtok"):
            if getattr(self, key) < 0:
                errs.append(f"`{key}` must be >= 0, got {getattr(self, key)!r}")
        for key in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            if getattr(self, key) <= 0:
                errs.append(f"`{key}` must be > 0, got {getattr(self, key)!r}")
        for key in ("self_consistency_min_sim", "off_topic_min_sim", "near_dup_threshold", "cross_input_min_sim",
                    "mmr_lambda", "gate_format", "gate_faithful", "gate_consistency", "top_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                errs.append(f"`{key}` must be in [0, 1], got {getattr(self, key)!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            errs.append(f"`eval_fraction` must be in [0, 1), got {self.eval_fraction!r}")
        if self.keep_per_input > self.k:
            errs.append(f"`keep_per_input` ({self.keep_per_input}) cannot exceed `k` ({self.k})")
        if bool(self.verifier_base_url) != bool(self.verifier_model):
            errs.append("`verifier_base_url` and `verifier_model` must be set together")
        if spec is not None:
            known = [v.id for v in spec.reasoning_variants]
            for key in ("variants", "golden_variants"):
                bad = [v for v in getattr(self, key) if v not in known]
                if bad:
                    errs.append(f"`{key}` has unknown variant ids {bad} for task `{self.task}`; known: {known}")
            _check_task_keys(self, spec, errs)
        if errs:
            raise ConfigError("invalid cook config:\n  " + "\n  ".join(errs))

    def _resolve_task(self, errs: list[str]) -> Any:
        from adnanny_cook.errors import AdNannyCookError, UnknownTaskError
        from adnanny_cook.tasks import load_task, task_names

        if not self.task:
            errs.append(f"`task` is required: one of {list(task_names())} or a path to a .toml task file")
            return None
        try:
            spec = load_task(self.task)
        except UnknownTaskError:
            errs.append(f"`task` must be one of {list(task_names())} or a path to a .toml task file, got "
                        f"{self.task!r}")
            return None
        except AdNannyCookError as e:
            errs.append(f"`task`: {e}")
            return None
        object.__setattr__(self, "_spec", spec)
        return spec

    # ------------------------------------------------------------------ derived
    @property
    def base_spec(self) -> Any:
        """The task definition `task` names (a built-in/registered name or a TOML task file)."""
        spec = getattr(self, "_spec", None)
        if spec is None:
            from adnanny_cook.tasks import load_task

            spec = load_task(self.task)
            object.__setattr__(self, "_spec", spec)
        return spec

    @property
    def spec(self) -> Any:
        """The task restricted to this dataset's label fields (`labels`; all fields when empty)."""
        base = self.base_spec
        return base.select_labels(tuple(self.labels)) if self.labels else base

    @property
    def task_name(self) -> str:
        """The task's `name` (what corpus rows carry), also when `task` is a file path."""
        return self.base_spec.name

    @property
    def cache_path(self) -> str:
        return self.cache or str(Path(self.out) / "cache.sqlite")

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") or "EMPTY"

    def variant_ids(self) -> list[str]:
        return list(self.variants) or [v.id for v in self.base_spec.reasoning_variants]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, ftype: Any, value: Any, errs: list[str]) -> Any:
    t = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    try:
        if t == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if t == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if t == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if t == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        if t.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError(value)
            return [str(v) for v in value]
        if t.startswith("dict"):
            if isinstance(value, str):
                from adnanny_cook.inputs import parse_columns  # the one `a=b,c=d` parser (serve uses it too)

                try:
                    return parse_columns(value)
                except ConfigError as e:
                    errs.append(str(e))
                    return None
            if not isinstance(value, dict):
                raise ValueError(value)
            return {str(a): str(b) for a, b in value.items()}
    except (TypeError, ValueError):
        errs.append(f"`{name}` expects {t}, got {value!r}")
        return None
    return value


@dataclass
class CorpusConfig:
    """Configuration of `adnanny-cook corpus`: labeled rows -> a label-only corpus, no teacher involved."""

    task: str = ""                        # task name (adnanny_cook.tasks.TASK_NAMES) or path to a TOML task file
    input: str = ""                       # labeled rows: .csv, .jsonl, .parquet or .json
    out: str = ""                         # output directory (corpus.parquet, tasks/, card, rejects, manifest)
    columns: dict[str, str] = field(default_factory=dict)  # task field -> column name in `input`
    labels: list[str] = field(default_factory=list)  # label fields of this dataset (default: required + present)
    id_column: str = "id"                 # row id column (row number when absent); ids are kept as corpus ids
    limit: int = 0                        # use only the first N rows (0 = all)
    on_bad_row: str = "error"             # "error": stop naming the rows; "quarantine": write rejects.jsonl
    split_column: str = ""                # use your own split (train/eval; test/val/dev count as eval) instead
    eval_fraction: float = 0.1            # share of rows in the eval split (grouped by the task's split_keys)
    seed: int = 0                         # split and shuffle seed
    near_dup_threshold: float = 0.8       # token Jaccard of split keys above which rows share a split group
    example: bool = False                 # add the task's worked example to every prompt

    def __post_init__(self) -> None:
        errs: list[str] = []
        spec = CookConfig._resolve_task(self, errs)  # type: ignore[arg-type]
        for key in ("input", "out"):
            if not getattr(self, key):
                errs.append(f"`{key}` is required (set it in the TOML file or with --{key.replace('_', '-')})")
        if self.on_bad_row not in ("error", "quarantine"):
            errs.append(f"`on_bad_row` must be 'error' or 'quarantine', got {self.on_bad_row!r}")
        if self.limit < 0:
            errs.append(f"`limit` must be >= 0, got {self.limit!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            errs.append(f"`eval_fraction` must be in [0, 1), got {self.eval_fraction!r}")
        if not 0.0 <= self.near_dup_threshold <= 1.0:
            errs.append(f"`near_dup_threshold` must be in [0, 1], got {self.near_dup_threshold!r}")
        if spec is not None:
            _check_task_keys(self, spec, errs)
        if errs:
            raise ConfigError("invalid corpus config:\n  " + "\n  ".join(errs))

    base_spec = CookConfig.base_spec
    spec = CookConfig.spec
    task_name = CookConfig.task_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_task_keys(cfg: Any, spec: Any, errs: list[str]) -> None:
    """`labels` and `columns` against the task's fields (shared by both configs)."""
    valid_fields = set(spec.input_fields) | set(spec.label_fields)
    if cfg.labels:
        try:
            spec.select_labels(tuple(cfg.labels))
        except ConfigError as e:
            errs.append(f"`labels`: {e}")
    bad_cols = [k for k in cfg.columns if k not in valid_fields]
    if bad_cols:
        errs.append(f"`columns` maps unknown task fields {bad_cols}; task `{spec.name}` fields are "
                    f"{sorted(valid_fields)}")


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None, *,
                kind: type = CookConfig) -> Any:
    """TOML file (optional) + overrides (flag values; None means "not given") -> validated config of type `kind`
    (`CookConfig`, or `CorpusConfig` for `adnanny-cook corpus`)."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file `{p}` does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file `{p}` is not valid TOML: {e}") from None
        # allow one optional [cook] (or [corpus]) table
        for table in ("cook", "corpus"):
            if set(data) == {table} and isinstance(data[table], dict):
                data = data[table]
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    known = {f.name: f for f in fields(kind)}
    errs: list[str] = []
    unknown = sorted(k for k in data if k not in known)
    for k in unknown:
        close = difflib.get_close_matches(k.replace("-", "_"), list(known), n=1)
        errs.append(f"unknown key `{k}`" + (f"; did you mean `{close[0]}`?" if close else ""))
    kwargs = {}
    for k, v in data.items():
        if k in known:
            val = _coerce(k, known[k].type, v, errs)
            if val is not None:
                kwargs[k] = val
    what = "cook" if kind is CookConfig else "corpus"
    try:
        cfg = kind(**kwargs)
    except ConfigError as e:  # report key/type errors and value errors together
        errs += str(e).split("\n  ")[1:]
    if errs:
        raise ConfigError(f"invalid {what} config:\n  " + "\n  ".join(errs))
    return cfg
