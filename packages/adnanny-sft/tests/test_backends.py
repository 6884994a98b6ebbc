"""Backends found through the entry-point group `adnanny_sft.backends`, and the forward-only log-likelihood
scorer that evaluates a backend without an HF model (a pipeline-sharded Megatron model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adnanny_sft.backend import BackendScorer, BackendView, pad_batch
from adnanny_sft.config import SFTConfig, installed_backends
from adnanny_sft.errors import ConfigError
from adnanny_sft.testing import make_batch


def test_unknown_backend_names_the_installed_ones(tmp_path: Path) -> None:
    from adnanny_sft.train import build_backend

    names = installed_backends()
    assert names[0] == "hf" and "megatron" in names
    cfg = SFTConfig.model_construct(**{**SFTConfig(corpus="c").model_dump(), "backend": "nope"})  # unvalidated
    with pytest.raises(ConfigError, match=r"`backend` = 'nope' is not installed; installed: \['hf', .*'megatron'"):
        build_backend(cfg, {}, total_steps=1, out=tmp_path)


def test_entry_point_factory_is_what_train_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`backend = "megatron"` loads the factory registered under that name and calls it with the HF factory's
    keywords plus the distributed keys (checked without building megatron: the factory is swapped)."""
    import importlib.metadata as md

    from adnanny_sft.train import build_backend

    seen: dict = {}

    class _EP:
        name, value = "megatron", "fake:factory"

        def load(self):
            return lambda model, **kw: seen.update(model=model, **kw) or "backend"

    monkeypatch.setattr(md, "entry_points", lambda group: [_EP()] if group == "adnanny_sft.backends" else [])
    cfg = SFTConfig(corpus="c", backend="megatron", layout="pp2,ep2", stage_layers="1,3", micro_batch_size=2,
                    timeout_minutes=5, model="/some/hf/dir", device="cpu")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"")
    assert build_backend(cfg, hf, total_steps=7, out=tmp_path) == "backend"
    assert seen["model"] == hf and seen["layout"] == "pp2,ep2" and seen["stage_layers"] == "1,3"
    assert (seen["micro_batch_size"], seen["timeout_minutes"], seen["total_steps"], seen["device"]) == (2, 5, 7, "cpu")
    assert seen["lora"] is None and seen["convert_dir"] == str(tmp_path / "mcore-init")
    # a folder without safetensors would be random-initialised by a converter: refused by name instead
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"converts safetensors weights and `.*pickled` has none"):
        build_backend(cfg, pick, total_steps=7, out=tmp_path)


def test_pad_batch_changes_no_value_of_the_real_rows() -> None:
    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.testing import tiny_llama_config

    be = build_hf_backend(tiny_llama_config(64), seed=0, lr=1e-3, total_steps=2)
    b = make_batch(64, seed=1, batch=3)
    padded = pad_batch(b, 4)
    assert padded.size == 4 and float(padded.loss_mask[3].sum()) == 0.0
    assert torch.allclose(be.per_sample_nll(b), be.per_sample_nll(padded)[:3], atol=1e-6)
    assert torch.allclose(BackendView(be, BackendScorer(be)).per_sample_nll(b), be.per_sample_nll(b), atol=1e-6)


def test_loglik_scores_equal_the_hf_value_distribution(sample_dir: Path, tokenizer) -> None:
    """The scorer's P(value) (one forward per value, log-likelihood of its first token after prompt + open tag,
    renormalised) equals the HF path's softmax over the candidates' logits at the last context position."""
    from adnanny_cook.tasks import get_task
    from adnanny_sft.formatting import pad_token_id
    from adnanny_sft.hf_backend import HFBackend, load_causal_lm
    from adnanny_sft.models import resolve_model
    from adnanny_sft.scoring import score_rows

    spec = get_task("query_ad").select_labels(("label",))
    cfg, _ = resolve_model("tiny-deepseek-v3", str(sample_dir / "tokenizer"), tiny_hidden_size=32, tiny_layers=2)
    model = load_causal_lm(cfg, seed=3)
    inputs = [{"query": "cheap hotel in Paris", "ad_title": "Resort by Calvex", "ad_description": "",
               "ad_url": "www.calvex.com/resort"},
              {"query": "oled tv", "ad_title": "OLED TV by Zenfa", "ad_description": "Thin and bright.",
               "ad_url": "www.zenfa.com/oled-tv"},
              {"query": "running shoes", "ad_title": "Trail runners", "ad_description": "Grip on mud.",
               "ad_url": "www.run.com"}]
    ref, ref_scores = score_rows(model, tokenizer, spec, inputs, batch_size=8)
    scorer = BackendScorer(HFBackend(model, lr=1e-3), pad_id=pad_token_id(tokenizer))
    scorer.multiple = 4  # as a data-parallel backend of 4 ranks would pad
    got, scores = score_rows(scorer, tokenizer, spec, inputs, batch_size=5)
    for p, q in zip(ref, got, strict=True):
        assert set(p) == set(q) == {"bad", "fair", "good"}
        assert all(abs(p[v] - q[v]) <= 1e-5 for v in p), (p, q)
    assert scores == pytest.approx(ref_scores, abs=1e-5)
