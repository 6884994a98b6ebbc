"""The HF backend: protocol conformance (shared kit), agreement with the reference objective, LoRA, resume."""

from __future__ import annotations

import math

import pytest
import torch

from adnanny_sft.backend import TrainingBackend
from adnanny_sft.errors import CheckpointError, ConfigError
from adnanny_sft.hf_backend import HFBackend, LoraSettings, build_hf_backend, load_causal_lm, lr_multiplier
from adnanny_sft.objective import per_sample_loss
from adnanny_sft.testing import TrainingBackendConformance, make_batch, tiny_llama_config


class TestHFBackendConformance(TrainingBackendConformance):
    vocab_size = 64

    def make_backend(self) -> HFBackend:
        return build_hf_backend(tiny_llama_config(self.vocab_size), seed=0, lr=1e-2, total_steps=10,
                                lr_schedule="constant")


class TestHFBackendLoraConformance(TrainingBackendConformance):
    vocab_size = 64

    def make_backend(self) -> HFBackend:
        return build_hf_backend(tiny_llama_config(self.vocab_size), seed=0, lr=1e-2, total_steps=10,
                                lora=LoraSettings(r=4, alpha=8), lr_schedule="constant")


class TestHFBackendFullHeadConformance(TrainingBackendConformance):
    vocab_size = 64

    def make_backend(self) -> HFBackend:
        return build_hf_backend(tiny_llama_config(self.vocab_size), seed=0, lr=1e-2, total_steps=10,
                                selective_head=False)


def test_is_a_training_backend() -> None:
    assert isinstance(build_hf_backend(tiny_llama_config(), seed=0), TrainingBackend)


@pytest.mark.parametrize("selective", [True, False])
def test_matches_reference_objective_and_its_gradient(selective: bool) -> None:
    """forward_backward == eq. 1 on the model's own logits, and its gradient == autograd of Σ s_b ℓ_b."""
    be = build_hf_backend(tiny_llama_config(), seed=0, selective_head=selective)
    ref = load_causal_lm(tiny_llama_config(), seed=0)
    batch = make_batch(64, weights=[0.5, 2.0, 1.0])
    got = be.forward_backward(batch)
    logits = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = per_sample_loss(logits, batch)
    assert torch.allclose(got, expected.detach(), atol=1e-5)
    (expected * batch.sample_weights).sum().backward()
    for (name, p), (_, q) in zip(be.model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_lora_trains_only_the_adapter_and_saves_only_it(tmp_path) -> None:
    be = build_hf_backend(tiny_llama_config(), seed=0, lora=LoraSettings(r=4, alpha=8), lr=1e-2)
    trainable = [n for n, p in be.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in be.model.named_parameters() if not p.requires_grad}
    be.forward_backward(make_batch(64))
    be.optimizer_step()
    for n, p in be.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
    be.save(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "trainable.safetensors"))) == set(trainable)
    out = be.export(tmp_path / "merged")
    merged = load_causal_lm(out)
    batch = make_batch(64)
    with torch.no_grad():
        a = be.per_sample_nll(batch)
        b = HFBackend(merged).per_sample_nll(batch)
    assert torch.allclose(a, b, atol=1e-5)  # the merged export computes what the adapter model computes


def test_load_refuses_other_model(tmp_path) -> None:
    be = build_hf_backend(tiny_llama_config(), seed=0)
    be.save(tmp_path)
    other = build_hf_backend(tiny_llama_config(), seed=0, lora=LoraSettings(r=4))
    with pytest.raises(CheckpointError, match="does not match the model"):
        other.load(tmp_path)
    with pytest.raises(CheckpointError, match="lacks `optimizer.pt`"):
        (tmp_path / "optimizer.pt").unlink()
        be.load(tmp_path)


def test_clipping_and_lr_schedule() -> None:
    be = build_hf_backend(tiny_llama_config(), seed=0, lr=1.0, max_grad_norm=1e-3, warmup_steps=2, total_steps=6,
                          lr_schedule="cosine", min_lr_ratio=0.0)
    be.forward_backward(make_batch(64))
    s = be.optimizer_step()
    assert s["lr"] == pytest.approx(0.5)  # warm-up step 1 of 2
    assert s["grad_norm"] > 1e-3
    assert lr_multiplier(2, warmup_steps=2, total_steps=6, schedule="cosine", min_lr_ratio=0.0) == 1.0
    assert lr_multiplier(4, warmup_steps=2, total_steps=6, schedule="cosine", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_multiplier(4, warmup_steps=2, total_steps=6, schedule="linear", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_multiplier(5, warmup_steps=0, total_steps=6, schedule="constant", min_lr_ratio=0.0) == 1.0
    with pytest.raises(ConfigError, match="`lr_schedule` must be"):
        build_hf_backend(tiny_llama_config(), lr_schedule="step")
    with pytest.raises(ConfigError, match="`lr` must be > 0"):
        build_hf_backend(tiny_llama_config(), lr=0.0)


def test_tiny_deepseek_v3_runs_and_learns(tokenizer) -> None:
    """The tiny DeepSeek-V3 (MLA + MoE, random init, cook tokenizer vocabulary): a few steps lower the loss."""
    from adnanny_sft.models import resolve_model

    spec, tok = resolve_model("tiny-deepseek-v3", str(tokenizer.name_or_path), tiny_hidden_size=64)
    assert spec["model_type"] == "deepseek_v3" and spec["vocab_size"] == len(tok)
    be = build_hf_backend(spec, seed=0, lr=1e-2, lr_schedule="constant")
    batch = make_batch(len(tok), length=24)
    first = be.forward_backward(batch)
    be.optimizer_step()
    for _ in range(7):
        be.forward_backward(batch)
        be.optimizer_step()
    last = be.per_sample_nll(batch) * (batch.loss_mask[:, 1:] != 0).sum(1)
    assert all(math.isfinite(v) for v in first.tolist())
    assert float(last.sum()) < 0.7 * float(first.sum())


def _prefixed_batch(vocab: int, prefix: int = 10):
    from adnanny_sft.hf_backend import shared_prefix_length

    b = make_batch(vocab, batch=3, length=20, pad_last=3)
    b.input_ids[:, :prefix] = b.input_ids[0, :prefix]  # a shared "system prompt"
    b.loss_mask[:, :] = 0.0
    b.loss_mask[:, prefix + 2:] = 1.0  # targets start two tokens after the prefix
    b.loss_mask[-1, 17:] = 0.0  # the padded row
    assert shared_prefix_length(b) == prefix - 1  # minus one: the last shared position predicts a differing token
    return b


@pytest.mark.parametrize(("arch", "lora"), [("deepseek_v3", False), ("llama", True)], ids=["v3-full", "llama-lora"])
def test_shared_prefix_equals_the_full_forward(arch: str, lora: bool) -> None:
    """Running the common prefix once (share_prefix) gives the same losses and gradients as the plain pass."""
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    cfg = (tiny_deepseek_v3_config(hidden_size=32, vocab_size=64, fp8=False) if arch == "deepseek_v3"
           else tiny_llama_config(64))
    settings = LoraSettings(r=4, alpha=8) if lora else None
    a = build_hf_backend(cfg, seed=0, lr=1e-2, total_steps=10, lora=settings)
    b = build_hf_backend(cfg, seed=0, lr=1e-2, total_steps=10, lora=settings, share_prefix=True)
    batch = _prefixed_batch(64)
    assert torch.allclose(a.per_sample_nll(batch), b.per_sample_nll(batch), atol=1e-5)
    la, lb = a.forward_backward(batch), b.forward_backward(batch)
    assert torch.allclose(la, lb, atol=1e-5) and la.sum() > 0
    ga = [p.grad for p in a.model.parameters() if p.requires_grad]
    gb = [p.grad for p in b.model.parameters() if p.requires_grad]
    assert all((x is None) == (y is None) for x, y in zip(ga, gb, strict=True))
    assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(ga, gb, strict=True) if x is not None)
    # no common prefix (random rows) falls back to the plain pass
    plain = make_batch(64)
    assert torch.allclose(a.per_sample_nll(plain), b.per_sample_nll(plain), atol=1e-6)
