"""The training-step backend protocol (paper §4.2, eq. 1–3): the one contract between the SFT/RL loops
and whatever runs the model (the HF/torch backend here, the Megatron backend in adnanny-megatron).

The loop owns *what* to train on and *how much each sample counts* (formatting, sampling, instance
weights w_{t,i}, task weights λ_t, normalisation); a backend owns *how* a step runs (forward, backward,
optimizer, parallelism, checkpoint files). Everything crosses the boundary as a :class:`Batch`.

Conventions every backend implements identically (the conformance tests in ``adnanny_sft.testing``
check them against a reference computed from the logits):

* **Alignment.** ``loss_mask[b, t]`` weights the prediction *of token* ``input_ids[b, t]``, i.e. the
  logits at position ``t - 1``. ``loss_mask[:, 0]`` is therefore never used (a first token has no
  context); the backend does the shift, callers never do.
* **Per-sample loss (eq. 1).** ``ℓ_b = Σ_t loss_mask[b, t] · CE(logits[b, t-1], input_ids[b, t])``:
  a *sum* over the target tokens, not a mean, exactly as the paper writes it. ``loss_mask`` is float so a
  caller may weight tokens; adnanny-sft itself writes 1.0 on assistant-target tokens and 0.0 elsewhere.
* **Gradient (eq. 2).** ``forward_backward`` accumulates the gradient of ``Σ_b sample_weights[b] · ℓ_b``
  into the parameters' ``.grad`` (added to what is already there: gradient accumulation is just several
  calls before one ``optimizer_step``). There is no hidden normalisation: the caller folds every constant
  (λ_t, w_{t,i}, the 1/N of the expectation, a 1/tokens normaliser) into ``sample_weights``.
* **Return values are detached float32 CPU tensors of shape [B]**, so the loop can log per-task losses and
  estimate perplexities without touching devices.
* **Custom objectives (RL).** ``token_logprobs`` returns ``log p(input_ids[b, t] | input_ids[b, <t])`` at every
  position where ``loss_mask[b, t] != 0`` (0 elsewhere), same alignment as the loss; ``forward_backward_fn``
  hands the same quantity *with gradient* to a caller's ``loss_fn(logp, rows)`` and accumulates the gradient of
  the sum of its values. A backend may split the batch (data-parallel slices, micro-batches): it then calls
  ``loss_fn`` once per piece with ``rows`` = the batch indices of that piece, so ``loss_fn`` must be a *sum over
  rows* (a mean over the whole batch is written with weights computed over the whole batch). GRPO's loss is
  written once in adnanny-rl on top of these two methods.
* **Non-finite updates are never applied.** If the accumulated gradient's norm is NaN/inf,
  ``optimizer_step`` zeroes the gradients, leaves parameters, optimizer and scheduler untouched, and
  reports ``{"grad_norm": nan-or-inf, "skipped": 1.0}``; the loop then stops with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from adnanny_sft.errors import DataError

if TYPE_CHECKING:  # torch stays out of `import adnanny_sft`
    import torch

__all__ = ["BackendScorer", "BackendView", "Batch", "TrainingBackend", "pad_batch"]


@dataclass
class Batch:
    """One micro-batch of tokenised, padded samples, with the loss weights the loop decided.

    Shapes use B = samples, T = padded sequence length.

    Attributes:
        input_ids: ``[B, T]`` int64 token ids (prompt + target + padding).
        attention_mask: ``[B, T]`` int/bool, 1 on real tokens, 0 on padding. Padding may sit on either side;
            backends derive position ids from it.
        loss_mask: ``[B, T]`` float32, the per-token weight of the CE of token ``t`` (1.0 on assistant-target
            tokens, 0.0 on prompt, template and padding tokens). See the module docstring for alignment.
        sample_weights: ``[B]`` float32, the weight of sample b's summed loss in the gradient:
            ``w_{t,i} · λ_t`` (eq. 2) times any normaliser the loop applies. Not used by ``per_sample_nll``.
        task: ``B`` task names (one per sample: batches mix tasks).
        sample_ids: ``B`` corpus row ids, so per-sample statistics (eq. 3–5) can be keyed by row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    sample_weights: torch.Tensor
    task: tuple[str, ...] = field(default=())
    sample_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        import torch

        self.task = tuple(self.task)
        self.sample_ids = tuple(self.sample_ids)
        if self.input_ids.dim() != 2:
            raise DataError(f"`input_ids` must be [B, T]; got shape {tuple(self.input_ids.shape)}.")
        if self.input_ids.dtype != torch.long:
            raise DataError(f"`input_ids` must be int64 (torch.long); got {self.input_ids.dtype}.")
        b, t = self.input_ids.shape
        for name in ("attention_mask", "loss_mask"):
            shape = tuple(getattr(self, name).shape)
            if shape != (b, t):
                raise DataError(f"`{name}` must have the shape of `input_ids` {(b, t)}; got {shape}.")
        if not torch.is_floating_point(self.loss_mask):
            raise DataError(f"`loss_mask` must be a float tensor; got {self.loss_mask.dtype}.")
        if tuple(self.sample_weights.shape) != (b,):
            raise DataError(f"`sample_weights` must be [B]=({b},); got {tuple(self.sample_weights.shape)}.")
        for name in ("task", "sample_ids"):
            n = len(getattr(self, name))
            if n not in (0, b):
                raise DataError(f"`{name}` must list one entry per sample ({b}); got {n}.")

    @property
    def size(self) -> int:
        """Number of samples B."""
        return int(self.input_ids.shape[0])

    @property
    def num_target_tokens(self) -> int:
        """Number of tokens with a non-zero loss weight (position 0 excluded: it is never predicted)."""
        return int((self.loss_mask[:, 1:] != 0).sum())

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor moved to ``device`` (names and ids are shared)."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            sample_weights=self.sample_weights.to(device),
            task=self.task,
            sample_ids=self.sample_ids,
        )


@runtime_checkable
class TrainingBackend(Protocol):
    """What a loop needs from a model runner; see the module docstring for the exact numerics.

    Implementations: :class:`adnanny_sft.hf_backend.HFBackend` (transformers/peft, CPU or one GPU) and the
    Megatron backend of adnanny-megatron. A backend is stateful: it owns the parameters, the optimizer, the
    LR scheduler and any gradient buffers.
    """

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Forward + backward of one micro-batch; returns the per-sample loss ``ℓ_b`` (eq. 1), shape [B].

        Accumulates ∇ Σ_b sample_weights[b]·ℓ_b into the gradients (no zeroing, no optimizer step), in
        training mode. The returned tensor is the *unweighted* ℓ_b (detached, float32, CPU).
        """
        ...

    def per_sample_nll(self, batch: Batch) -> torch.Tensor:
        """Token-mean NLL per sample, ``Σ_t m_bt·CE_bt / Σ_t m_bt`` (the exponent of eq. 3), shape [B].

        No gradient, eval mode, parameters untouched; ``sample_weights`` ignored. A sample with no target
        token returns NaN (its perplexity is undefined) rather than a made-up number.
        """
        ...

    def token_logprobs(self, batch: Batch) -> torch.Tensor:
        """Per-token log-probabilities ``[B, T]`` (float32, CPU) of the batch's own tokens where ``loss_mask`` is
        non-zero, 0 elsewhere; no gradient, eval mode, parameters untouched (old-policy and reference terms)."""
        ...

    def forward_backward_fn(self, batch: Batch,
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        """Forward + backward of a caller-defined objective: ``loss_fn(logp [b, T] with grad, rows [b] int64)``
        returns a scalar that is a sum over its rows; its gradient is accumulated like ``forward_backward``'s.
        Returns the sum of the ``loss_fn`` values (float)."""
        ...

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step optimizer and LR scheduler, zero the gradients; returns at least ``grad_norm`` (before
        clipping) and ``lr`` (the rate used for this step). Never applies a non-finite update (see module
        docstring): then returns ``skipped = 1.0`` and leaves every state untouched except zeroed gradients.
        """
        ...

    def save(self, directory: str | Path) -> None:
        """Write model (or adapter), optimizer and scheduler state into ``directory`` (created if missing),
        such that ``load`` on a freshly built backend of the same configuration continues bit-exactly."""
        ...

    def load(self, directory: str | Path) -> None:
        """Restore what ``save`` wrote; raises an ``AdNannySftError`` naming the missing/incompatible file."""
        ...


# ---------------------------------------------------------------------------------------- any backend
def pad_batch(batch: Batch, multiple: int) -> Batch:
    """``batch`` with rows appended (copies of row 0, no loss, weight 0) up to a multiple of ``multiple``: a
    data-parallel backend splits a batch evenly; the extra rows change no returned value of the real rows."""
    import torch

    extra = (-batch.size) % max(1, multiple)
    if not extra:
        return batch

    def rep(t: torch.Tensor, zero: bool) -> torch.Tensor:
        add = t[:1].expand(extra, *t.shape[1:]).clone()
        return torch.cat([t, torch.zeros_like(add) if zero else add])

    return Batch(input_ids=rep(batch.input_ids, False), attention_mask=rep(batch.attention_mask, False),
                 loss_mask=rep(batch.loss_mask, True), sample_weights=rep(batch.sample_weights, True))


class BackendScorer:
    """Forward-only label-value probabilities through the protocol's ``token_logprobs`` — for backends that
    have no HF model to call (a pipeline-sharded Megatron model).

    ``adnanny_sft.scoring.value_probs(model, plans)`` hands the plans to :meth:`value_probs` when ``model`` is
    one of these. For each plan (the prompt + open tag, and one candidate token per allowed value) it scores the
    sequences ``context + [candidate]`` — log p(candidate | context), one forward pass each, no decoding — and
    renormalises over the values: exactly the softmax over the candidates' logits at the context's last
    position that the HF path reads (log p_v - logsumexp_u log p_u). Every rank of a distributed backend runs
    the same calls (they are collectives) and gets the same numbers.
    """

    def __init__(self, backend: TrainingBackend, *, pad_id: int = 0) -> None:
        self.backend = backend
        self.pad_id = int(pad_id)
        self.multiple = int(getattr(backend, "dp_size", 1) or 1)

    def value_probs(self, plans: Sequence[Any], *, batch_size: int = 32) -> list[dict[Any, float]]:
        import torch

        seqs: list[list[int]] = []
        owner: list[tuple[int, Any]] = []
        for i, plan in enumerate(plans):
            for v, tok in plan.candidates.items():
                seqs.append([*plan.context, int(tok)])
                owner.append((i, v))
        logp = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
        for k in range(0, len(order), max(1, batch_size)):
            idx = order[k:k + batch_size]
            t = max(len(seqs[j]) for j in idx)
            ids = torch.full((len(idx), t), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), t), dtype=torch.long)
            mask = torch.zeros((len(idx), t), dtype=torch.float32)
            for r, j in enumerate(idx):
                n = len(seqs[j])
                ids[r, :n] = torch.tensor(seqs[j])
                attn[r, :n] = 1
                mask[r, n - 1] = 1.0  # the candidate token, predicted from the context
            batch = pad_batch(Batch(input_ids=ids, attention_mask=attn, loss_mask=mask,
                                    sample_weights=torch.zeros(len(idx))), self.multiple)
            lp = self.backend.token_logprobs(batch)[:len(idx)]
            for r, j in enumerate(idx):
                logp[j] = float(lp[r, len(seqs[j]) - 1])
        per: list[dict[Any, float]] = [{} for _ in plans]
        for (i, v), x in zip(owner, logp, strict=True):
            per[i][v] = x
        out: list[dict[Any, float]] = []
        for d in per:
            vals = torch.tensor(list(d.values()), dtype=torch.float64)
            p = torch.softmax(vals, dim=0).tolist()
            out.append(dict(zip(d, p, strict=True)))
        return out


class BackendView:
    """The backend as the evaluator sees it: ``model`` is a :class:`BackendScorer`, and ``per_sample_nll``
    pads each batch to the backend's data-parallel multiple (the evaluator's last chunk may be short)."""

    def __init__(self, backend: TrainingBackend, scorer: BackendScorer) -> None:
        self.backend = backend
        self.model = scorer

    def per_sample_nll(self, batch: Batch) -> torch.Tensor:
        return self.backend.per_sample_nll(pad_batch(batch, self.model.multiple))[:batch.size]
