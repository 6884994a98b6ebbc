"""A thin adapter from the engine contract to vLLM's offline ``LLM.generate`` (GPU only).

UNTESTED HERE: vLLM cannot be installed on the machines this project is built and tested on (CPU, and
GPU boxes without it). Only the request/response translation (:func:`to_vllm_sampling_kwargs`,
:func:`from_vllm_output`, and for log-likelihood scoring :func:`to_vllm_prompt_request` /
:func:`from_vllm_prompt_logprobs`) is unit-tested, against plain objects shaped like vLLM's ``RequestOutput``.
Install with the ``adnanny-serve[vllm]`` extra. FP8 checkpoints written by ``adnanny-serve quantize``
carry DeepSeek's ``quantization_config`` and load in vLLM as DeepSeek's own release does.

Log-likelihood scoring maps to vLLM's *prompt* log-probabilities: the context + continuation token ids go
in as one prompt with ``prompt_logprobs=1`` and ``max_tokens=1``; vLLM then returns, at every prompt
position, the log-probability of the actual token (and its rank), which summed over the continuation
positions is the score; the continuation is greedy when every one of its tokens has rank 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adnanny_serve.engines.base import Generation, LogLikelihood, SamplingParams, encode_pair
from adnanny_serve.errors import EngineError

__all__ = ["VLLMEngine", "from_vllm_output", "from_vllm_prompt_logprobs", "to_vllm_prompt_request",
           "to_vllm_sampling_kwargs", "to_vllm_weight_items"]


def to_vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` equivalent to ``params``."""
    kw: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "stop": list(params.stop),
        "include_stop_str_in_output": params.include_stop_str_in_output,
    }
    if params.seed is not None:
        kw["seed"] = params.seed
    if params.logprobs is not None:
        # vLLM returns the sampled token's log-prob plus the top-k; k=0 gives just the sampled one.
        kw["logprobs"] = params.logprobs
    return kw


def _lp_value(x: Any) -> float:
    """vLLM wraps each log-prob in a ``Logprob`` object (``.logprob``); accept bare floats too."""
    return float(getattr(x, "logprob", x))


def from_vllm_output(output: Any, params: SamplingParams) -> Generation:
    """Our :class:`Generation` from one vLLM ``RequestOutput`` (its first completion)."""
    comp = output.outputs[0]
    toks = list(comp.token_ids)
    g = Generation(
        text=comp.text,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(toks),
        finish_reason="length" if comp.finish_reason == "length" else "stop",
        token_ids=toks,
    )
    if params.logprobs is not None:
        if comp.logprobs is None:
            raise EngineError("vLLM returned no logprobs although `logprobs` was requested.")
        g.logprobs = [_lp_value(step[t]) for step, t in zip(comp.logprobs, toks)]
        k = params.logprobs
        g.top_logprobs = [
            dict(sorted(((int(t), _lp_value(v)) for t, v in step.items()), key=lambda kv: -kv[1])[:k])
            if k else {}
            for step in comp.logprobs
        ]
    return g


def to_vllm_prompt_request(encode: Callable[[str], list[int]], context: str, continuation: str,
                           empty_context_ids: list[int] | None = None
                           ) -> tuple[list[int], list[int], dict[str, Any]]:
    """(context ids, continuation ids, the vLLM ``TokensPrompt`` dict) of one scoring request.

    The split is :func:`~adnanny_serve.engines.base.encode_pair`'s, so both engines score the same tokens.
    """
    ctx, cont = encode_pair(encode, context, continuation, empty_context_ids)
    return ctx, cont, {"prompt_token_ids": ctx + cont}


#: ``vllm.SamplingParams`` keyword arguments of a scoring request (one dummy generated token).
VLLM_SCORING_KWARGS: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1}


def from_vllm_prompt_logprobs(output: Any, *, n_context: int, continuation: list[int]) -> LogLikelihood:
    """Our :class:`LogLikelihood` from a ``RequestOutput`` whose prompt was context + continuation.

    ``output.prompt_logprobs[p]`` maps token id -> ``Logprob`` (``.logprob``, ``.rank``) for position ``p``
    (``None`` at position 0); it always holds the prompt's actual token.
    """
    plp = getattr(output, "prompt_logprobs", None)
    if plp is None:
        raise EngineError("vLLM returned no prompt logprobs; the request needs `prompt_logprobs` set.")
    total, greedy = 0.0, True
    for j, tok in enumerate(continuation):
        p = n_context + j
        step = plp[p] if p < len(plp) else None
        if not step or tok not in step:
            raise EngineError(f"vLLM's prompt logprobs lack token {tok} at position {p}.")
        v = step[tok]
        total += _lp_value(v)
        rank = getattr(v, "rank", None)
        if rank is not None:
            greedy = greedy and rank == 1
        else:
            greedy = greedy and _lp_value(v) >= max(_lp_value(x) for x in step.values())
    return LogLikelihood(logprob=total, is_greedy=greedy, n_tokens=len(continuation))


_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")


def to_vllm_weight_items(weights: Any) -> list[tuple[str, Any]]:
    """``(name, tensor)`` pairs in the HF checkpoint names vLLM's ``load_weights`` expects.

    A policy trained with peft/torch.compile/DDP carries wrapper prefixes (``base_model.model.``,
    ``_orig_mod.``, ``module.``) that vLLM's loader does not know; LoRA adapter tensors are refused (merge the
    adapter first: vLLM loads plain weights) rather than silently ignored.
    """
    items = list(weights.items() if hasattr(weights, "items") else weights)
    out = []
    for name, t in items:
        if ".lora_A." in name or ".lora_B." in name:
            raise EngineError(f"`load_weights`: `{name}` is a LoRA adapter tensor; merge the adapter "
                              f"(merge_and_unload) before sending weights to vLLM.")
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        out.append((name.replace(".base_layer.", "."), t))
    return out


class VLLMEngine:
    """The engine contract on ``vllm.LLM`` (one process, tensor parallel inside vLLM)."""

    def __init__(self, model: str, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise EngineError(
                "the vLLM engine needs vllm (`pip install adnanny-serve[vllm]`, GPU only); "
                "use `--engine transformers` on CPU."
            ) from e
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:  # pragma: no cover
        sp = self._vllm.SamplingParams(**to_vllm_sampling_kwargs(params))
        outs = self.llm.generate(list(prompts), sp, use_tqdm=False)
        return [from_vllm_output(o, params) for o in outs]

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:  # pragma: no cover
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def token_strings(self, token_ids: list[int]) -> list[str]:  # pragma: no cover
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]

    def load_weights(self, weights: Any = None) -> None:  # pragma: no cover - needs vLLM on a GPU
        """Load new weights into the running model, then reset vLLM's prefix cache (stale otherwise)."""
        if weights is not None:
            items = to_vllm_weight_items(weights)
            engine = self.llm.llm_engine
            executor = getattr(engine, "model_executor", None)
            worker = getattr(executor, "driver_worker", None)
            if worker is not None:  # in-process engine: load straight into the model
                worker.model_runner.model.load_weights(items)
            else:  # multiprocess engine: every worker loads the same tensors
                self.llm.collective_rpc(lambda w: w.model_runner.model.load_weights(items))
        self.llm.reset_prefix_cache()

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[LogLikelihood]:  # pragma: no cover
        enc = lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        start = [t for t in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) if t is not None][:1]
        reqs = [to_vllm_prompt_request(enc, c, x, start) for c, x in requests]
        sp = self._vllm.SamplingParams(**VLLM_SCORING_KWARGS)
        outs = self.llm.generate([r[2] for r in reqs], sp, use_tqdm=False)
        return [from_vllm_prompt_logprobs(o, n_context=len(r[0]), continuation=r[1]) for o, r in zip(outs, reqs)]
