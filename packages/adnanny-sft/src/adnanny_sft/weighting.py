"""Adaptive weights of paper §4.2.2–4.2.3: instance weights (eq. 3–5) and task weights (eq. 6–7).

Pure Python (no torch): the loop feeds per-sample NLLs in and reads weights out, whatever the backend.

Instance weights (eq. 3–5)
    ppl_i(θ) = exp(mean target-token NLL) (eq. 3); Δ_i = ppl_i(θ^(k−1)) − ppl_i(θ^(k)) (eq. 4);
    w_i = clip(exp(−β Δ_i), w_min, w_max) (eq. 5). Two estimators of the pair of "consecutive checkpoints":

    * ``"epoch"`` (exact): at the end of every epoch k the loop scores *every* training sample with the
      frozen θ^(k) (``per_sample_nll``, an extra forward pass over the training set; θ^(0) is scored before
      the first step), and the weights for epoch k+1 come from ppl(θ^(k−1)) − ppl(θ^(k)).
    * ``"minibatch"`` (the paper's approximation; our default): no extra pass. The summed loss that
      ``forward_backward`` returns for a sample already gives its perplexity under the parameters of the
      step at which it was visited. Δ_i is the difference between its two most recent visits (one epoch
      apart under a shuffled sampler, i.e. θ at "consecutive checkpoints" per sample rather than per
      dataset), and the resulting weight is used at the sample's *next* visit (the weight of a step must be
      known before its backward). Samples not yet visited twice keep w = 1.

    Deviation, stated: with ``normalize=True`` (default) the weights used in the loss are w̃_i = w_i / mean_t(w),
    the mean over the current weights of the sample's task (unvisited samples count as 1). Eq. 5 alone scales
    the whole task by the average progress (early in training every Δ ≫ 0 and every w → w_min), which would
    silently act as a learning-rate and task-weight change; the paper reweights "within each task", so we keep
    each task's mean weight at 1, leave the ratios of eq. 5 (and its clip range) untouched, and let λ_t alone
    decide the task's share. The raw w_i are what we log.

Task weights (eq. 6–7)
    d_t = 1 − M_t with M_t ∈ [0, 1] from a pluggable evaluator; λ_t = d_t^α / Σ d^α (α ≥ 1). If every task
    is perfect (all d_t = 0) the ratio is undefined and λ falls back to uniform. Before the first evaluation
    λ is the natural data proportion p_t (so every mode starts from the plain mixture), or uniform on request.
    Applied either by **weighted task sampling** (default: a sample's task is drawn with probability λ_t and
    the sample uniformly within the task, which is exactly the expectation of eq. 2 with unit loss factors,
    so rare tasks get more *distinct gradient steps* instead of a few samples with huge weights) or by
    **loss weighting** (the natural mixture is kept and a sample of task t gets the importance factor
    λ_t / p_t, an unbiased estimate of eq. 2 whose mean factor over the data is 1, but whose variance grows
    with λ_t/p_t — a 10× rarer task can get factors ≫ 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adnanny_sft.errors import ConfigError, DataError

__all__ = [
    "perplexity",
    "progress",
    "instance_weight",
    "task_weights",
    "InstanceWeighter",
    "TaskWeighter",
]

_EXP_MAX = 700.0  # exp(700) is finite in float64; beyond, eq. 5 is clipped anyway


def perplexity(mean_nll: float) -> float:
    """Eq. (3): exp of the token-mean NLL (inf when the NLL overflows; NaN stays NaN)."""
    if math.isnan(mean_nll):
        return math.nan
    return math.exp(mean_nll) if mean_nll < _EXP_MAX else math.inf


def progress(ppl_old: float, ppl_new: float) -> float:
    """Eq. (4): Δ = ppl(θ^(k−1)) − ppl(θ^(k)); positive when the sample got easier."""
    return ppl_old - ppl_new


def instance_weight(delta: float, *, beta: float, w_min: float, w_max: float) -> float:
    """Eq. (5): clip(exp(−β Δ), w_min, w_max), overflow-safe (a NaN Δ gives the neutral weight 1 clipped)."""
    if math.isnan(delta):
        return min(max(1.0, w_min), w_max)
    x = -beta * delta
    raw = math.exp(x) if x < _EXP_MAX else math.inf
    return min(max(raw, w_min), w_max)


def task_weights(metrics: Mapping[str, float], *, alpha: float) -> dict[str, float]:
    """Eq. (6)–(7): λ_t = (1 − M_t)^α / Σ_t' (1 − M_t')^α; uniform if every d_t is 0."""
    if alpha < 1:
        raise ConfigError(f"`task_alpha` must be >= 1 (paper eq. 7); got {alpha}.")
    if not metrics:
        raise DataError("task_weights needs at least one task metric; got none.")
    powered: dict[str, float] = {}
    for task, m in metrics.items():
        if not (isinstance(m, (int, float)) and 0.0 <= m <= 1.0):
            raise DataError(f"validation metric of task `{task}` must be a fraction in [0, 1]; got {m!r}.")
        powered[task] = (1.0 - float(m)) ** alpha
    total = sum(powered.values())
    if total <= 0:
        return {t: 1.0 / len(powered) for t in powered}
    return {t: v / total for t, v in powered.items()}


@dataclass
class InstanceWeighter:
    """State of eq. 3–5 over a training set: per-sample perplexities and weights, keyed by sample id.

    ``estimator`` is ``"minibatch"`` or ``"epoch"`` (module docstring); ``tasks`` maps sample id -> task.
    """

    tasks: dict[str, str]
    beta: float = 1.0
    w_min: float = 0.5
    w_max: float = 2.0
    estimator: str = "minibatch"
    normalize: bool = True
    enabled: bool = True
    last_ppl: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    _task_sum: dict[str, float] = field(default_factory=dict, repr=False)
    _task_count: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"`instance_beta` must be > 0 (paper eq. 5); got {self.beta}.")
        if not 0 < self.w_min <= 1.0 <= self.w_max:
            raise ConfigError(f"`instance_w_min` / `instance_w_max` must satisfy 0 < w_min <= 1 <= w_max; "
                              f"got {self.w_min} / {self.w_max}.")
        if self.estimator not in ("minibatch", "epoch"):
            raise ConfigError(f"`instance_estimator` must be 'minibatch' or 'epoch'; got {self.estimator!r}.")
        self._task_count = {}
        for t in self.tasks.values():
            self._task_count[t] = self._task_count.get(t, 0) + 1
        self._recompute_sums()

    def _recompute_sums(self) -> None:
        sums = {t: float(n) for t, n in self._task_count.items()}  # every sample starts at w = 1
        for sid, w in self.weights.items():
            sums[self.tasks[sid]] += w - 1.0
        self._task_sum = sums

    def _set(self, sid: str, w: float) -> None:
        old = self.weights.get(sid, 1.0)
        self.weights[sid] = w
        self._task_sum[self.tasks[sid]] += w - old

    def raw(self, sid: str) -> float:
        """The eq.-5 weight w_i (1 before the sample has a Δ, and always 1 when disabled)."""
        return self.weights.get(sid, 1.0) if self.enabled else 1.0

    def loss_weight(self, sid: str) -> float:
        """The factor used in the loss: w_i, divided by its task's mean weight when ``normalize``."""
        if not self.enabled:
            return 1.0
        w = self.weights.get(sid, 1.0)
        if not self.normalize:
            return w
        task = self.tasks[sid]
        return w * self._task_count[task] / self._task_sum[task]

    def observe(self, sample_ids: Iterable[str], mean_nll: Iterable[float]) -> None:
        """Minibatch estimator: record the per-sample mean NLL seen at a training visit (eq. 3–5)."""
        if not self.enabled or self.estimator != "minibatch":
            return
        self._update(sample_ids, mean_nll)

    def end_of_epoch(self, sample_ids: Iterable[str], mean_nll: Iterable[float]) -> None:
        """Exact estimator: the NLL of every training sample under the checkpoint θ^(k) (or θ^(0))."""
        if not self.enabled or self.estimator != "epoch":
            return
        self._update(sample_ids, mean_nll)

    def _update(self, sample_ids: Iterable[str], mean_nll: Iterable[float]) -> None:
        for sid, nll in zip(sample_ids, mean_nll, strict=True):
            if sid not in self.tasks:
                raise DataError(f"sample id {sid!r} is not in the training set the weighter was built on.")
            ppl = perplexity(float(nll))
            if math.isnan(ppl):
                continue  # no target token: eq. 3 undefined, the weight stays
            prev = self.last_ppl.get(sid)
            if prev is not None:
                self._set(sid, instance_weight(progress(prev, ppl), beta=self.beta, w_min=self.w_min,
                                               w_max=self.w_max))
            self.last_ppl[sid] = ppl

    def per_task_stats(self) -> dict[str, dict[str, float]]:
        """Mean / min / max raw weight per task (samples without a Δ count as 1), for the logs."""
        out: dict[str, dict[str, float]] = {}
        for task, n in self._task_count.items():
            ws = [w for sid, w in self.weights.items() if self.tasks[sid] == task]
            unset = n - len(ws)
            vals = ws + ([1.0] if unset else [])
            out[task] = {"mean": self._task_sum[task] / n, "min": min(vals), "max": max(vals),
                         "with_delta": float(len(ws))}
        return out

    def state_dict(self) -> dict[str, Any]:
        # the running per-task sums are saved as they are: recomputing them would round differently and
        # break bit-exact resumption
        return {"last_ppl": dict(self.last_ppl), "weights": dict(self.weights), "task_sum": dict(self._task_sum)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = (set(state.get("weights", {})) | set(state.get("last_ppl", {}))) - set(self.tasks)
        if unknown:
            raise DataError(f"weighting state names {len(unknown)} sample ids absent from the training set "
                            f"(e.g. {sorted(unknown)[:3]}); the checkpoint was made on other data.")
        self.last_ppl = {k: float(v) for k, v in state["last_ppl"].items()}
        self.weights = {k: float(v) for k, v in state["weights"].items()}
        self._recompute_sums()
        saved = state.get("task_sum")
        if saved is not None:
            if set(saved) != set(self._task_sum):
                raise DataError(f"weighting state covers tasks {sorted(saved)}, training has {sorted(self._task_sum)}.")
            self._task_sum = {k: float(v) for k, v in saved.items()}


@dataclass
class TaskWeighter:
    """State of eq. 6–7: the current λ_t, the data proportions p_t, and the metric history."""

    counts: dict[str, int]
    alpha: float = 1.0
    mode: str = "sampling"
    initial: str = "natural"
    enabled: bool = True
    lambdas: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.alpha < 1:
            raise ConfigError(f"`task_alpha` must be >= 1 (paper eq. 7); got {self.alpha}.")
        if self.mode not in ("sampling", "loss"):
            raise ConfigError(f"`task_weighting_mode` must be 'sampling' or 'loss'; got {self.mode!r}.")
        if self.initial not in ("natural", "uniform"):
            raise ConfigError(f"`task_initial` must be 'natural' or 'uniform'; got {self.initial!r}.")
        if not self.counts or any(n <= 0 for n in self.counts.values()):
            raise DataError(f"every task needs at least one training sample; got counts {self.counts}.")
        if not self.lambdas:
            self.lambdas = self.initial_lambdas()

    @property
    def proportions(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {t: n / total for t, n in self.counts.items()}

    def initial_lambdas(self) -> dict[str, float]:
        if self.initial == "uniform":
            return {t: 1.0 / len(self.counts) for t in self.counts}
        return self.proportions

    def update(self, metrics: Mapping[str, float], step: int) -> dict[str, float]:
        """Eq. 6–7 from the evaluator's metrics; tasks the evaluator did not score keep their share."""
        unknown = set(metrics) - set(self.counts)
        if unknown:
            raise DataError(f"evaluator returned metrics for tasks not in training: {sorted(unknown)}.")
        self.history.append({"step": step, "metrics": dict(metrics)})
        if not self.enabled or not metrics:
            return dict(self.lambdas)
        new = task_weights(metrics, alpha=self.alpha)
        scored_mass = sum(self.lambdas[t] for t in metrics)
        lambdas = dict(self.lambdas)
        for t, lam in new.items():
            lambdas[t] = lam * scored_mass  # unscored tasks keep their mass; scored ones share the rest
        self.lambdas = lambdas
        return dict(self.lambdas)

    def sampling_probs(self) -> dict[str, float]:
        """Task draw probabilities for the sampler: λ_t in sampling mode, p_t otherwise."""
        if self.enabled and self.mode == "sampling":
            return dict(self.lambdas)
        return self.proportions

    def loss_factor(self, task: str) -> float:
        """Per-sample loss factor c_t: λ_t / p_t in loss mode, 1 otherwise (module docstring)."""
        if not self.enabled or self.mode != "loss":
            return 1.0
        return self.lambdas[task] / self.proportions[task]

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": dict(self.lambdas), "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["lambdas"]) != set(self.counts):
            raise DataError(f"task-weight state covers tasks {sorted(state['lambdas'])}, training has "
                            f"{sorted(self.counts)}; the checkpoint was made on other data.")
        self.lambdas = {k: float(v) for k, v in state["lambdas"].items()}
        self.history = list(state["history"])
