"""A thin adapter from the engine contract to vLLM's offline ``LLM.generate`` (GPU only).

UNTESTED HERE: vLLM cannot be installed on the machines this project is built and tested on (CPU, and
GPU boxes without it). Only the request/response translation (:func:`to_vllm_sampling_kwargs`,
:func:`from_vllm_output`) is unit-tested, against plain objects shaped like vLLM's ``RequestOutput``.
Install with the ``adnanny-serve[vllm]`` extra. FP8 checkpoints written by ``adnanny-serve quantize``
carry DeepSeek's ``quantization_config`` and load in vLLM as DeepSeek's own release does.
"""

from __future__ import annotations

from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams
from adnanny_serve.errors import EngineError

__all__ = ["VLLMEngine", "from_vllm_output", "to_vllm_sampling_kwargs"]


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
