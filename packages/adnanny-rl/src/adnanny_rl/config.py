"""`RLConfig`: every coefficient of a GRPO run, typed, documented, validated; the CLI is generated from it.

One mechanism (pydantic-settings, through adnanny-cook's shared `adnanny_cook.settings.load_settings`): a TOML
file (`--config rl.toml`) is validated against the model with unknown keys refused (every problem reported at once,
each naming its key, nested ones as ``tasks.0.weight``, with the closest known key as a suggestion), and flags of
the same names (``--beta 0.02``; ``--scale_std`` / ``--no-scale-std``) override keys. Cross-field rules sit in the
validator at the bottom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from adnanny_cook.settings import Settings, load_settings
from adnanny_rl.errors import RLConfigError

__all__ = ["RLConfig", "TaskConfig", "load_config"]


class TaskConfig(BaseModel):
    """One task of the run: its definition, its prompts, its weight and its reward."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="adnanny-cook task name (`query_ad`) or a path to a task TOML file")
    data: str = Field(description="rows to draw prompts from: a corpus folder/Parquet (its `split` column is "
                                  "used) or a CSV/JSONL/Parquet of inputs (+ gold labels for labeling tasks)")
    eval_data: str | None = Field(None, description="held-out prompts from this file/corpus instead of `data`'s "
                                                    "held-out split (every row of `data` is then trained on)")
    weight: float = Field(1.0, gt=0, description="sampling weight of this task's prompts")
    reward: Literal["labels", "retrieval", "ctr"] = Field(
        "labels", description="labels = agreement with gold; retrieval = eq. 8 recall gain of a frozen "
                              "retriever; ctr = eq. 8 predicted-CTR uplift of a frozen CTR model")
    mode: Literal["label", "reasoning"] = Field("label", description="output form asked of the policy")
    field_weights: dict[str, float] = Field(default_factory=dict, description="labels: weight per label field")
    format_penalty: float = Field(-1.0, description="reward of an output that does not parse")
    agreement: Literal["exact", "defect"] = Field(
        "exact", description="labels: exact = the parsed value equals gold; defect = scored in each field's "
                             "binary defect view (the paper's Bad view), fields without defect values exact")
    class_balance: bool | None = Field(
        None, description="labels: draw prompts so every gold value of the task's primary field is equally "
                          "likely (None = on for `labels` rewards; an imbalanced set otherwise pulls the policy "
                          "towards its largest class)")
    retriever: Literal["bm25", "dense"] = Field("bm25", description="retrieval: BM25 or all-MiniLM-L6-v2")
    metric: Literal["recall", "ndcg"] = Field("recall", description="retrieval: recall@K or NDCG@K")
    k: int = Field(10, ge=1, description="retrieval: K")
    sample_weight: float = Field(0.0, ge=0, description="retrieval: weight of eq. 8's optional per-sample term "
                                                         "(the completion's own ad alone)")
    batch_weight: float = Field(1.0, ge=0, description="retrieval: weight of eq. 8's batch term (0: the "
                                                        "per-sample term alone)")
    transform: Literal["identity", "scale", "clip", "sign"] = Field("identity", description="g_t of eq. 8")
    transform_scale: float = Field(1.0, description="g_t = scale · Δ when transform = scale")
    world: str | None = Field(None, description="retrieval/ctr: the sample-world folder with the ad catalog "
                                                "and click logs (default: the data's own world)")


class RLConfig(Settings):
    """A GRPO run (paper §4.3). Defaults follow DeepSeekMath's GRPO where it states a value."""

    # adnanny-cook's `Settings` base: unknown keys refused, defaults validated, no environment variables read
    model_config = SettingsConfigDict(cli_implicit_flags=True, cli_prog_name="adnanny-rl train")

    policy: str = Field(description="the policy to align: an HF model dir or a built-in name (`smollm2`)")
    reference: str | None = Field(None, description="frozen reference for the KL term; default: the policy's "
                                                    "initial weights")
    output_dir: str = Field("rl-out", description="checkpoints, logs and the final model")
    tasks: list[TaskConfig] = Field(default_factory=list, description="tasks, each with data and reward")
    steps: int = Field(20, ge=1, description="rollout steps")
    prompts_per_step: int = Field(4, ge=1, description="P: prompts per rollout step (across tasks)")
    group_size: int = Field(4, ge=2, description="G: completions per prompt")
    dynamic_sampling: bool = Field(False, description="DAPO's dynamic sampling: set aside groups whose rewards "
                                                       "are all equal and draw more prompts until P groups "
                                                       "with a reward spread are kept")
    max_draw_rounds: int = Field(4, ge=1, description="dynamic sampling: at most this many draws of P prompts "
                                                      "per step (then the batch is topped up with flat groups)")
    mu: int = Field(1, ge=1, description="policy updates per rollout batch (1 = on-policy)")
    micro_batch: int = Field(8, ge=1, description="completions per forward/backward")
    beta: float = Field(0.04, ge=0, description="KL coefficient β")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="per-token KL estimator (k3: unbiased, "
                                                                      ">= 0, low variance)")
    clip_low: float = Field(0.2, ge=0, description="ε_low of the clipped ratio")
    clip_high: float = Field(0.2, ge=0, description="ε_high of the clipped ratio (> ε_low: 'clip higher')")
    scale_std: bool = Field(True, description="divide group-centred rewards by the group std")
    loss_aggregation: Literal["seq-mean-token-mean", "token-mean", "token-sum-norm"] = Field(
        "seq-mean-token-mean", description="how per-token losses are reduced")
    max_completion_tokens: int = Field(32, ge=1, description="generated tokens per completion")
    max_prompt_tokens: int = Field(1024, ge=8, description="longer prompts are refused by name")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="rollout nucleus sampling")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up over the first N optimizer "
                                                   "steps (Adam's first steps are ~lr per weight whatever the "
                                                   "gradient's noise; a converged SFT policy is hurt by them)")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    eval_prompts: int = Field(16, ge=0, description="held-out prompts per task scored greedily before/after")
    eval_samples: int = Field(0, ge=0, description="0: greedy held-out evaluation; S > 0: S sampled completions "
                                                   "per held-out prompt (rollout temperature), their mean reward")
    eval_every: int = Field(0, ge=0, description="also evaluate every N steps (0 = only before and after)")
    save_every: int = Field(10, ge=1, description="checkpoint every N steps (and at the end)")
    seed: int = Field(0, description="seeds sampling, prompt order and initialisation")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default)")
    tensorboard: bool = Field(False, description="also write TensorBoard event files")

    @model_validator(mode="after")
    def _cross_field(self) -> RLConfig:
        if not self.tasks:
            raise ValueError("`tasks` is empty: name at least one [[tasks]] table with `task` and `data`")
        for i, t in enumerate(self.tasks):
            if t.class_balance and t.reward != "labels":
                raise ValueError(f"`tasks.{i}.class_balance`: only a `labels` reward has gold classes to balance "
                                 f"(task `{t.task}` has reward `{t.reward}`)")
        if (self.prompts_per_step * self.group_size) % self.micro_batch and \
                self.micro_batch < self.prompts_per_step * self.group_size:
            raise ValueError(f"`micro_batch`={self.micro_batch} must divide the rollout batch "
                             f"`prompts_per_step`·`group_size`={self.prompts_per_step * self.group_size}")
        return self


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                cli_args: list[str] | None = None) -> RLConfig:
    """Build the config from a TOML file, then flags (`cli_args` as on the command line), then `overrides`.

    The mechanism is adnanny-cook's shared `load_settings` (the one config loader of every AdNanny package):
    every problem is reported at once in one `RLConfigError` naming the file and the keys.
    """
    return load_settings(RLConfig, path, cli=cli_args, overrides=overrides, error=RLConfigError, what="rl config")
