"""Which samples form the next micro-batch: shuffling, weighted task sampling (eq. 7), class balancing and
length bucketing.

An *epoch* is N draws, N = training-set size. Without task probabilities or class balancing every epoch is
one permutation (each sample exactly once). With task probabilities (weighted task sampling,
``adnanny_sft.weighting``) each draw picks a task with probability λ_t, then the next sample of that task's
own shuffled order (reshuffled when used up), so a task is never resampled before all its samples were seen.

Class-balanced sampling (``classes`` given): within a task, each draw first picks one of the task's classes
uniformly (e.g. defect / non-defect of its primary label field), then the next sample of that class's own
shuffled order. WHY: with bad at 45% and fair+good at 55% a small model can reach a low loss by predicting the
prior everywhere; drawing the classes equally removes that shortcut from the gradient (the calibrated threshold
later restores the real prior, ``adnanny_sft.calibration``). Samples without a class (generation tasks, public
data) form one class of their task. Tasks are still drawn by λ_t (or their natural share when no λ is set).

Length bucketing: draws are taken ``bucket_batches`` micro-batches at a time, sorted by token length,
cut into micro-batches and the micro-batches shuffled, so padding shrinks while the batch order stays
random. With ``prefix_groups`` (one id per sample: rows that share a prompt prefix, e.g. a task's system
prompt in one target form) the sort is by group first, so a micro-batch mostly holds one group and the HF
backend runs its common prefix once (``share_prefix``). Megabatches never straddle an epoch boundary, so epoch ends (the checkpoints θ^(k) of eq. 4) are
well defined. The whole state (numpy PCG64 state, per-task orders and cursors, pending micro-batches)
is a JSON-able dict: restoring it continues the exact same sequence of batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adnanny_sft.errors import ConfigError, DataError

__all__ = ["MixtureSampler"]


class MixtureSampler:
    """Yields lists of dataset indices (one micro-batch each), see the module docstring."""

    def __init__(
        self,
        tasks: Sequence[str],
        lengths: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        bucket_batches: int = 8,
        classes: Sequence[str | None] | None = None,
        prefix_groups: Sequence[int] | None = None,
    ) -> None:
        import numpy as np

        if batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1; got {batch_size}.")
        if bucket_batches < 1:
            raise ConfigError(f"`bucket_batches` must be >= 1 (1 disables length bucketing); got {bucket_batches}.")
        if len(tasks) != len(lengths) or not tasks:
            raise DataError(f"sampler needs one task and one length per sample; got {len(tasks)} and {len(lengths)}.")
        if classes is not None and len(classes) != len(tasks):
            raise DataError(f"sampler needs one class per sample; got {len(classes)} for {len(tasks)} samples.")
        self.tasks = list(tasks)
        self.lengths = [int(x) for x in lengths]
        if prefix_groups is not None and len(prefix_groups) != len(tasks):
            raise DataError(f"sampler needs one prefix group per sample; got {len(prefix_groups)} for {len(tasks)}.")
        self.prefix_groups = [int(g) for g in prefix_groups] if prefix_groups is not None else None
        self.class_balanced = classes is not None
        self.classes = [None if c is None else str(c) for c in classes] if classes is not None else None
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.by_task: dict[str, list[int]] = {}
        for i, t in enumerate(self.tasks):
            self.by_task.setdefault(t, []).append(i)
        self.task_names = sorted(self.by_task)
        #: draw groups: (task, class) under class balancing, (task,) otherwise
        self.by_group: dict[str, list[int]] = {}
        self.task_groups: dict[str, list[str]] = {}
        for i, t in enumerate(self.tasks):
            c = self.classes[i] if self.classes is not None else None
            g = t if c is None else f"{t}\x1f{c}"
            if g not in self.by_group:
                self.task_groups.setdefault(t, []).append(g)
            self.by_group.setdefault(g, []).append(i)
        for t in self.task_groups:
            self.task_groups[t].sort()
        self.probs: dict[str, float] | None = None
        self.epoch = 0
        self.drawn_in_epoch = 0
        self._perm: list[int] = []  # plain mode: this epoch's permutation
        self._task_order: dict[str, list[int]] = {}
        self._task_cursor: dict[str, int] = {}
        self._pending: list[tuple[int, list[int]]] = []  # (epoch, indices)

    @property
    def size(self) -> int:
        return len(self.tasks)

    def set_task_probs(self, probs: Mapping[str, float] | None) -> None:
        """Weighted task sampling with these probabilities from the next megabatch on (None: plain epochs)."""
        if probs is None:
            self.probs = None
            return
        missing = set(self.task_names) - set(probs)
        if missing:
            raise DataError(f"task probabilities lack tasks {sorted(missing)}.")
        total = sum(max(0.0, float(probs[t])) for t in self.task_names)
        if total <= 0:
            raise DataError(f"task probabilities must have a positive sum; got {dict(probs)}.")
        self.probs = {t: max(0.0, float(probs[t])) / total for t in self.task_names}

    def peek_epoch(self) -> int:
        """Epoch of the next micro-batch (draws it if needed; the sequence is unchanged by peeking)."""
        if not self._pending:
            self._fill()
        return self._pending[0][0]

    def next_batch(self) -> tuple[int, list[int]]:
        """(epoch, indices) of the next micro-batch."""
        if not self._pending:
            self._fill()
        return self._pending.pop(0)

    def _fill(self) -> None:
        remaining = self.size - self.drawn_in_epoch
        n = min(self.batch_size * self.bucket_batches, remaining)
        if self.probs is None and not self.class_balanced:
            if not self._perm:
                self._perm = self.rng.permutation(self.size).tolist()
            draws = self._perm[self.drawn_in_epoch:self.drawn_in_epoch + n]
        else:
            draws = [self._draw_weighted() for _ in range(n)]
        epoch = self.epoch
        self.drawn_in_epoch += n
        if self.drawn_in_epoch >= self.size:
            self.epoch += 1
            self.drawn_in_epoch = 0
            self._perm = []
        if self.bucket_batches > 1 and self.prefix_groups is not None:
            groups = self.prefix_groups
            draws.sort(key=lambda i: (groups[i], self.lengths[i], i))
        elif self.bucket_batches > 1:
            draws.sort(key=lambda i: (self.lengths[i], i))
        chunks = [draws[k:k + self.batch_size] for k in range(0, len(draws), self.batch_size)]
        order = self.rng.permutation(len(chunks)).tolist() if self.bucket_batches > 1 else range(len(chunks))
        self._pending.extend((epoch, chunks[j]) for j in order)

    def task_share(self) -> dict[str, float]:
        """Probability of drawing each task: λ_t when set, else its natural share of the samples."""
        if self.probs is not None:
            return dict(self.probs)
        return {t: len(self.by_task[t]) / self.size for t in self.task_names}

    def _draw_weighted(self) -> int:
        names = self.task_names
        share = self.task_share()
        task = names[int(self.rng.choice(len(names), p=[share[t] for t in names]))] if len(names) > 1 else names[0]
        groups = self.task_groups[task]
        group = groups[int(self.rng.integers(len(groups)))] if len(groups) > 1 else groups[0]
        order = self._task_order.get(group)
        cur = self._task_cursor.get(group, 0)
        if order is None or cur >= len(order):
            members = self.by_group[group]
            order = [members[j] for j in self.rng.permutation(len(members)).tolist()]
            self._task_order[group] = order
            cur = 0
        self._task_cursor[group] = cur + 1
        return order[cur]

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "probs": self.probs,
            "epoch": self.epoch,
            "drawn_in_epoch": self.drawn_in_epoch,
            "perm": self._perm,
            "task_order": self._task_order,
            "task_cursor": self._task_cursor,
            "pending": [[e, b] for e, b in self._pending],
            "size": self.size,
            "class_balanced": self.class_balanced,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise DataError(f"sampler state was saved for {state['size']} samples; this training set has "
                            f"{self.size}. Resume with the same data.")
        if bool(state.get("class_balanced", False)) != self.class_balanced:
            raise DataError(f"sampler state was saved with class_balanced={state.get('class_balanced', False)}; "
                            f"this run has {self.class_balanced}. Resume with the same `class_balance`.")
        self.rng.bit_generator.state = state["rng"]
        self.probs = None if state["probs"] is None else {k: float(v) for k, v in state["probs"].items()}
        self.epoch = int(state["epoch"])
        self.drawn_in_epoch = int(state["drawn_in_epoch"])
        self._perm = [int(i) for i in state["perm"]]
        self._task_order = {k: [int(i) for i in v] for k, v in state["task_order"].items()}
        self._task_cursor = {k: int(v) for k, v in state["task_cursor"].items()}
        self._pending = [(int(e), [int(i) for i in b]) for e, b in state["pending"]]
