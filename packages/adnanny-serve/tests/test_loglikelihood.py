"""Log-likelihood scoring (the benchmark contract): batched, KV-shared sums equal a direct forward."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from adnanny_serve.engines import LogLikelihood, encode_pair
from adnanny_serve.engines.vllm_engine import from_vllm_prompt_logprobs, to_vllm_prompt_request
from adnanny_serve.errors import ConfigError, EngineError


@pytest.fixture(scope="module")
def llama_engine(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight 2-layer Llama on SmolLM2's real tokenizer (byte-level BPE, BOS/EOS set)."""
    from adnanny_ckpt.gguf import smollm2_hf_dir
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    for p in model.parameters():  # larger weights than the default init: sharper, more varied log-probs
        p.data.normal_(0, 0.3)
    return TransformersEngine(model, tok, batch_size=4)

REQUESTS = [
    ("Question: which gas do plants take in?\nAnswer:", " carbon dioxide"),
    ("Question: which gas do plants take in?\nAnswer:", " oxygen"),
    ("Question: which gas do plants take in?\nAnswer:", " nitrogen and a long tail of other words here"),
    ("Pole vault: a woman runs with a pole and", " jumps."),
    ("Pole vault: a woman runs with a pole and", " x"),
    ("hi ", "there"),  # trailing space moves to the continuation
    ("", " starts from the BOS/EOS token"),
]


def _direct(engine, context: str, continuation: str) -> tuple[float, bool, int]:
    """Plain per-token computation on the unbatched, uncached sequence."""
    enc = lambda t: engine.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    start = [t for t in (engine.tokenizer.bos_token_id, engine.tokenizer.eos_token_id) if t is not None][:1]
    ctx, cont = encode_pair(enc, context, continuation, start)
    full = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = engine.model(full).logits[0].float().log_softmax(-1)
    toks = [lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)]
    greedy = all(int(lp[len(ctx) - 1 + j].argmax()) == t for j, t in enumerate(cont))
    return sum(toks), greedy, len(cont)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_loglikelihood_equals_a_direct_per_token_forward(llama_engine, batch_size: int) -> None:
    tiny_engine = llama_engine
    got = tiny_engine.loglikelihood(REQUESTS, batch_size=batch_size)
    assert len(got) == len(REQUESTS) and all(isinstance(g, LogLikelihood) for g in got)
    for g, (ctx, cont) in zip(got, REQUESTS):
        want, greedy, n = _direct(tiny_engine, ctx, cont)
        assert g.logprob == pytest.approx(want, abs=2e-4), (ctx, cont)
        assert g.n_tokens == n and g.is_greedy == greedy
    # the harness' whitespace rule: "hi " + "there" is scored as " there" after "hi"
    assert got[5].logprob == pytest.approx(tiny_engine.loglikelihood([("hi", " there")])[0].logprob, abs=1e-5)


def test_deepseek_mla_engine_too(tiny_engine) -> None:
    """The FP8-exported tiny DeepSeek-V3 (MLA attention, MoE) honours the block mask as Llama does."""
    got = tiny_engine.loglikelihood(REQUESTS[:5], batch_size=8)
    for g, (ctx, cont) in zip(got, REQUESTS[:5]):
        want, greedy, n = _direct(tiny_engine, ctx, cont)
        assert g.logprob == pytest.approx(want, abs=2e-3) and g.n_tokens == n


def test_greedy_continuation_is_flagged(llama_engine) -> None:
    tiny_engine = llama_engine
    from adnanny_serve.engines import SamplingParams

    ctx = "Question: which gas do plants take in?\nAnswer:"
    g = tiny_engine.generate([ctx], SamplingParams(max_tokens=4))[0]
    cont = tiny_engine.tokenizer.decode(g.token_ids)
    ll = tiny_engine.loglikelihood([(ctx, cont)])[0]
    # a greedy generation re-scored is greedy (when it re-tokenizes to the same ids)
    if tiny_engine.tokenizer(ctx + cont, add_special_tokens=False)["input_ids"][-len(g.token_ids):] == g.token_ids:
        assert ll.is_greedy


def test_loglikelihood_errors(llama_engine) -> None:
    tiny_engine = llama_engine
    assert tiny_engine.loglikelihood([]) == []
    with pytest.raises(ConfigError, match="list of \\(context, continuation\\) pairs"):
        tiny_engine.loglikelihood(("a", "b"))
    with pytest.raises(ConfigError, match="request 1 must be a"):
        tiny_engine.loglikelihood([("a", " b"), ("a",)])
    with pytest.raises(ConfigError, match="zero tokens"):
        tiny_engine.loglikelihood([("a", "")])
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_engine.loglikelihood([("a", " b")], batch_size=0)


def test_vllm_prompt_logprobs_translation() -> None:
    enc = {"Answer:": [5, 6], "Answer: yes": [5, 6, 7, 8]}
    ctx, cont, req = to_vllm_prompt_request(lambda t: enc[t], "Answer:", " yes", [0])
    assert (ctx, cont) == ([5, 6], [7, 8]) and req == {"prompt_token_ids": [5, 6, 7, 8]}
    lp = lambda v, rank=None: SimpleNamespace(logprob=v, rank=rank)  # noqa: E731
    out = SimpleNamespace(prompt_logprobs=[None, {6: lp(-1.0, 1)}, {7: lp(-0.5, 1), 3: lp(-2.0, 2)},
                                           {8: lp(-1.5, 2), 9: lp(-0.2, 1)}])
    got = from_vllm_prompt_logprobs(out, n_context=2, continuation=[7, 8])
    assert got == LogLikelihood(logprob=-2.0, is_greedy=False, n_tokens=2)
    out.prompt_logprobs[3] = {8: lp(-0.1, 1), 9: lp(-3.0, 2)}
    assert from_vllm_prompt_logprobs(out, n_context=2, continuation=[7, 8]).is_greedy
    # bare floats (no rank): greedy when the token holds the top value
    out.prompt_logprobs[2] = {7: -0.5, 3: -0.4}
    assert not from_vllm_prompt_logprobs(out, n_context=2, continuation=[7, 8]).is_greedy
    out.prompt_logprobs = None
    with pytest.raises(EngineError, match="no prompt logprobs"):
        from_vllm_prompt_logprobs(out, n_context=2, continuation=[7, 8])
    out.prompt_logprobs = [None, {6: -1.0}, {3: -0.4}, {8: -0.1}]
    with pytest.raises(EngineError, match="token 7 at position 2"):
        from_vllm_prompt_logprobs(out, n_context=2, continuation=[7, 8])
