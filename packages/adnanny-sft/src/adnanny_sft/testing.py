"""A conformance kit for :class:`adnanny_sft.backend.TrainingBackend` implementations.

Subclass :class:`TrainingBackendConformance` in a pytest module (class name starting with ``Test``) and
implement ``make_backend`` (a *fresh* backend, identically initialised on every call, with weight decay 0)
and set ``vocab_size``; every ``test_*`` method then checks one clause of the protocol through the protocol
alone (no logits, no parameters), so the same tests hold the HF backend here and the Megatron backend in
adnanny-megatron to the same numerics. ``atol`` loosens float comparisons for backends that reorder sums.

The kit also hands out the shared fine-tuned tiny model: ``fine_tuned_fixture()`` (a Path, built once and
cached, see ``adnanny_sft.fixture``) and the session-scoped pytest fixture ``fine_tuned_model`` (import it
into a ``conftest.py``).
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

__all__ = ["TrainingBackendConformance", "fine_tuned_fixture", "fine_tuned_model", "make_batch",
           "tiny_llama_config"]


def tiny_llama_config(vocab_size: int = 64) -> dict[str, Any]:
    """A 2-layer Llama ``config.json`` mapping: the cheapest real HF causal LM for numerics tests."""
    return dict(model_type="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                tie_word_embeddings=False)


def make_batch(vocab_size: int, *, seed: int = 0, batch: int = 3, length: int = 12, pad_last: int = 3,
               weights: Any = None) -> Any:
    """A deterministic batch: random ids, the last sample right-padded by ``pad_last``, targets at 6..T-1."""
    import torch

    from adnanny_sft.backend import Batch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    attn = torch.ones(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length)
    mask[:, length // 2:] = 1.0
    if pad_last:
        attn[-1, length - pad_last:] = 0
        mask[-1, length - pad_last:] = 0.0
        ids[-1, length - pad_last:] = 0
    w = torch.ones(batch) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=mask, sample_weights=w,
                 task=tuple("t" for _ in range(batch)), sample_ids=tuple(f"s{i}" for i in range(batch)))


class TrainingBackendConformance:
    """Protocol clauses every backend must satisfy (see ``adnanny_sft.backend``)."""

    vocab_size: int = 64
    atol: float = 1e-5

    def make_backend(self) -> Any:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _close(self, a: Any, b: Any) -> bool:
        import torch

        return bool(torch.allclose(a, b, atol=self.atol, rtol=self.atol))

    def test_returns_detached_float32_cpu_per_sample(self) -> None:
        be = self.make_backend()
        out = be.forward_backward(make_batch(self.vocab_size))
        assert tuple(out.shape) == (3,) and str(out.dtype) == "torch.float32" and out.device.type == "cpu"
        assert not out.requires_grad
        assert all(math.isfinite(v) and v > 0 for v in out.tolist())

    def test_sum_loss_is_token_mean_times_count(self) -> None:
        """ℓ_b (eq. 1, a sum) equals the eq.-3 token mean times the number of target tokens."""
        be = self.make_backend()
        batch = make_batch(self.vocab_size)
        mean = be.per_sample_nll(batch)
        total = be.forward_backward(batch)
        counts = (batch.loss_mask[:, 1:] != 0).sum(dim=1).float()
        assert self._close(total, mean * counts)

    def test_padding_and_batchmates_do_not_change_a_sample(self) -> None:
        be = self.make_backend()
        batch = make_batch(self.vocab_size, pad_last=3)
        alone = make_batch(self.vocab_size, pad_last=3)
        n = int(alone.attention_mask[-1].sum())
        from adnanny_sft.backend import Batch

        single = Batch(input_ids=alone.input_ids[-1:, :n], attention_mask=alone.attention_mask[-1:, :n],
                       loss_mask=alone.loss_mask[-1:, :n], sample_weights=alone.sample_weights[-1:],
                       task=("t",), sample_ids=("s2",))
        assert self._close(be.per_sample_nll(batch)[-1:], be.per_sample_nll(single))

    def test_loss_mask_selects_target_tokens_causally(self) -> None:
        """Changing a token after the last target changes nothing; changing a context token does."""
        be = self.make_backend()
        base = make_batch(self.vocab_size, pad_last=0)
        base.loss_mask[:, -2:] = 0.0  # the last two tokens carry no loss
        ref = be.per_sample_nll(base)
        after = make_batch(self.vocab_size, pad_last=0)
        after.loss_mask[:, -2:] = 0.0
        after.input_ids[:, -1] = (after.input_ids[:, -1] + 1) % self.vocab_size
        assert self._close(be.per_sample_nll(after), ref)
        ctx = make_batch(self.vocab_size, pad_last=0)
        ctx.loss_mask[:, -2:] = 0.0
        ctx.input_ids[:, 1] = (ctx.input_ids[:, 1] + 1) % self.vocab_size
        assert not self._close(be.per_sample_nll(ctx), ref)

    def test_no_target_token_gives_nan_mean(self) -> None:
        be = self.make_backend()
        batch = make_batch(self.vocab_size)
        batch.loss_mask[0] = 0.0
        out = be.per_sample_nll(batch)
        assert math.isnan(float(out[0])) and math.isfinite(float(out[1]))

    def test_zero_weights_give_no_update(self) -> None:
        be = self.make_backend()
        probe = make_batch(self.vocab_size, seed=1)
        before = be.per_sample_nll(probe)
        be.forward_backward(make_batch(self.vocab_size, weights=[0.0, 0.0, 0.0]))
        be.optimizer_step()
        assert self._close(be.per_sample_nll(probe), before)

    def test_weights_scale_the_gradient(self) -> None:
        """Weight 2 on one call == weight 1 on two accumulated calls (the gradient is Σ s_b ℓ_b)."""
        a, b = self.make_backend(), self.make_backend()
        batch2 = make_batch(self.vocab_size, weights=[2.0, 2.0, 2.0])
        batch1 = make_batch(self.vocab_size, weights=[1.0, 1.0, 1.0])
        a.forward_backward(batch2)
        b.forward_backward(batch1)
        b.forward_backward(batch1)
        sa, sb = a.optimizer_step(), b.optimizer_step()
        assert math.isclose(sa["grad_norm"], sb["grad_norm"], rel_tol=1e-5)
        probe = make_batch(self.vocab_size, seed=1)
        assert self._close(a.per_sample_nll(probe), b.per_sample_nll(probe))

    def test_non_finite_gradient_is_not_applied(self) -> None:
        be = self.make_backend()
        probe = make_batch(self.vocab_size, seed=1)
        before = be.per_sample_nll(probe)
        be.forward_backward(make_batch(self.vocab_size, weights=[float("nan"), 1.0, 1.0]))
        stats = be.optimizer_step()
        assert stats["skipped"] == 1.0 and not math.isfinite(stats["grad_norm"])
        assert self._close(be.per_sample_nll(probe), before)
        be.forward_backward(make_batch(self.vocab_size))  # gradients were zeroed: training goes on
        assert be.optimizer_step()["skipped"] == 0.0

    # -- the custom-objective extension (RL) -------------------------------------------------------
    def test_token_logprobs_match_the_loss(self) -> None:
        """Σ_t token_logprobs = −ℓ_b; zero off the mask; no gradient and parameters untouched."""
        import torch

        be = self.make_backend()
        batch = make_batch(self.vocab_size)
        probe = be.per_sample_nll(batch)
        lp = be.token_logprobs(batch)
        assert tuple(lp.shape) == tuple(batch.input_ids.shape) and lp.dtype == torch.float32
        assert not lp.requires_grad and lp.device.type == "cpu"
        off = batch.loss_mask == 0
        assert bool((lp[off] == 0).all()) and bool((lp[~off] <= 0).all())
        counts = (batch.loss_mask[:, 1:] != 0).sum(dim=1).float()
        assert self._close(-lp.sum(dim=1), probe * counts)
        assert self._close(be.per_sample_nll(batch), probe)

    def test_forward_backward_fn_equals_forward_backward(self) -> None:
        """A callback loss −Σ w_b Σ_t logp equals the SFT objective: same update, rows cover the batch once."""
        import torch

        w = [0.5, 2.0, 1.0]
        a, b = self.make_backend(), self.make_backend()
        batch = make_batch(self.vocab_size, weights=w)
        a.forward_backward(batch)
        seen: list[int] = []
        wt = torch.tensor(w)

        def loss_fn(logp: Any, rows: Any) -> Any:
            seen.extend(int(r) for r in rows)
            return -(logp.sum(dim=1) * wt[rows.cpu()].to(logp)).sum()

        value = b.forward_backward_fn(batch, loss_fn)
        assert sorted(seen) == [0, 1, 2]
        ref = float((a.per_sample_nll(batch) * (batch.loss_mask[:, 1:] != 0).sum(dim=1) * wt).sum())
        assert math.isclose(value, ref, rel_tol=1e-4, abs_tol=self.atol)
        sa, sb = a.optimizer_step(), b.optimizer_step()
        assert math.isclose(sa["grad_norm"], sb["grad_norm"], rel_tol=1e-4)
        probe = make_batch(self.vocab_size, seed=1)
        assert self._close(a.per_sample_nll(probe), b.per_sample_nll(probe))

    def test_save_load_continues_exactly(self) -> None:
        import torch

        a = self.make_backend()
        for s in range(2):
            a.forward_backward(make_batch(self.vocab_size, seed=s))
            a.optimizer_step()
        with tempfile.TemporaryDirectory() as d:
            a.save(d)
            b = self.make_backend()
            b.load(d)
        nxt = make_batch(self.vocab_size, seed=5)
        la, lb = a.forward_backward(nxt), b.forward_backward(nxt)
        assert torch.equal(la, lb)
        sa, sb = a.optimizer_step(), b.optimizer_step()
        assert sa == sb
        probe = make_batch(self.vocab_size, seed=6)
        assert torch.equal(a.per_sample_nll(probe), b.per_sample_nll(probe))


# -- the shared fine-tuned model (see adnanny_sft.fixture) -------------------------------------------------
def fine_tuned_fixture(**kwargs: Any) -> Any:
    """Path of the shared fine-tuned tiny model directory (built once, cached by content hash);
    see :func:`adnanny_sft.fixture.fine_tuned_fixture`."""
    from adnanny_sft.fixture import fine_tuned_fixture as build

    return build(**kwargs)


try:  # a pytest fixture for test suites: `from adnanny_sft.testing import fine_tuned_model` in a conftest.py
    import pytest as _pytest
except ImportError:  # pragma: no cover - pytest is a test-time dependency only
    _pytest = None

if _pytest is not None:

    @_pytest.fixture(scope="session")
    def fine_tuned_model() -> Any:
        """Session-scoped: the exported model dir of :func:`fine_tuned_fixture` (``model.parent / "sample"``
        holds the sample world it was trained on, with its held-out ``eval`` split and golden sets)."""
        return fine_tuned_fixture()
