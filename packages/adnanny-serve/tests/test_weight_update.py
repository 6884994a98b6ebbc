"""`Engine.load_weights`: new weights reach generation and no prefix KV of the old weights survives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adnanny_serve.engines import SamplingParams
from adnanny_serve.engines.transformers_engine import TransformersEngine
from adnanny_serve.engines.vllm_engine import to_vllm_weight_items
from adnanny_serve.errors import EngineError

SYSTEM = "<|im_start|>system\n" + "You label query-ad relevance for a search ads system. " * 6 + "<|im_end|>\n"
PROMPTS = [SYSTEM + f"<|im_start|>user\nQuery: {q}<|im_end|>\n<|im_start|>assistant\n"
           for q in ("red wine", "cheap hotel in downtown paris", "running shoes")]
GREEDY = SamplingParams(max_tokens=8, logprobs=0)


def _perturbed(engine: TransformersEngine, scale: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {n: p + scale * torch.randn(p.shape, generator=g) for n, p in engine.model.state_dict().items()
            if p.is_floating_point() and p.dim() >= 2}


def test_weight_update_invalidates_the_prefix_cache(tiny_bf16: Path) -> None:
    engine = TransformersEngine.from_pretrained(tiny_bf16, batch_size=4)
    fresh = TransformersEngine.from_pretrained(tiny_bf16, batch_size=4, prefix_caching=False)
    engine.generate(PROMPTS, GREEDY)
    assert engine._prefix_cache is not None                      # the shared system prompt is cached
    new = _perturbed(engine)
    # Updating in place WITHOUT telling the engine: a lone prompt reuses the stale prefix KV.
    with torch.no_grad():
        for n, t in new.items():
            engine.model.state_dict()[n].copy_(t)
            fresh.model.state_dict()[n].copy_(t)
    want = fresh.generate(PROMPTS[1:2], GREEDY)[0]
    stale = engine.generate(PROMPTS[1:2], GREEDY)[0]
    assert stale.logprobs != pytest.approx(want.logprobs, abs=1e-4)  # the bug load_weights exists to prevent
    # load_weights(None): "already updated in place" -> caches dropped, outputs equal an uncached engine.
    v = engine.weights_version
    engine.load_weights()
    assert engine._prefix_cache is None and engine.weights_version == v + 1
    got = engine.generate(PROMPTS[1:2], GREEDY)[0]
    assert got.token_ids == want.token_ids and got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_load_weights_copies_named_tensors_and_refuses_bad_ones(tiny_bf16: Path) -> None:
    engine = TransformersEngine.from_pretrained(tiny_bf16, batch_size=4)
    ref = TransformersEngine.from_pretrained(tiny_bf16, batch_size=4, prefix_caching=False)
    engine.generate(PROMPTS, GREEDY)
    new = _perturbed(engine, 0.3)
    engine.load_weights(new)
    ref.load_weights(new.items())
    a, b = engine.generate(PROMPTS, GREEDY), ref.generate(PROMPTS, GREEDY)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    name = next(iter(new))
    with pytest.raises(EngineError, match="unknown tensor names"):
        engine.load_weights({"not.a.weight": new[name]})
    with pytest.raises(EngineError, match=f"`{name}` has shape"):
        engine.load_weights({name: new[name][:1]})


def test_vllm_weight_translation() -> None:
    w = torch.zeros(2, 2)
    items = to_vllm_weight_items({"base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": w,
                                  "_orig_mod.lm_head.weight": w})
    assert [n for n, _ in items] == ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    with pytest.raises(EngineError, match="LoRA adapter"):
        to_vllm_weight_items([("model.layers.0.q_proj.lora_A.default.weight", w)])
