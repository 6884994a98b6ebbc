"""The generation-engine contract (design.md: "generation engine", owned by adnanny-serve).

Every engine takes fully rendered prompt strings (chat templates already applied) and one
:class:`SamplingParams`, and returns one :class:`Generation` per prompt, in order. rl uses it for
rollouts, cook's teacher and eval's bench call it through the server; labeling uses it directly. The
field names follow vLLM's ``SamplingParams`` (``max_tokens``, ``stop``, ``include_stop_str_in_output``,
``logprobs``) so the vLLM adapter is a field-for-field translation.

Log-likelihood scoring (:meth:`Engine.loglikelihood`): the log-probability of a continuation given a
context, what multiple-choice benchmarks (adnanny-eval's ``bench``) rank choices by. Context and
continuation are tokenized as lm-evaluation-harness does (:func:`encode_pair`), so a score here can be set
beside one from that harness on the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from adnanny_serve.errors import ConfigError

__all__ = ["Engine", "Generation", "LogLikelihood", "SamplingParams", "encode_pair"]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature == 0`` means greedy (deterministic, what labeling uses).

    ``stop``: strings that end a completion; the text is cut before the first one unless
    ``include_stop_str_in_output`` (label-only mode keeps the closing tag so the parser sees it).
    ``logprobs``: ``None`` for none, ``k >= 0`` for the sampled token's log-probability plus the
    ``k`` most likely alternatives at every step (the score column reads those).
    ``skeleton``: the answer's fixed tag text (:class:`~adnanny_serve.engines.jump_forward.TagSkeleton`), a
    speed hint for greedy decoding — the transformers engine feeds it as a verified draft (jump-forward), so
    outputs are unchanged; engines without it (vLLM, continuous batching) ignore it.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None
    skeleton: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a bare string is a common slip: treat it as one stop string
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` must be an integer >= 1; got {self.max_tokens!r}.")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ConfigError(f"`temperature` must be a finite number >= 0; got {self.temperature!r}.")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"`top_p` must be in (0, 1]; got {self.top_p!r}.")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"`stop` entries must be non-empty strings; got {s!r}.")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ConfigError(f"`logprobs` must be None or an integer >= 0; got {self.logprobs!r}.")


@dataclass
class Generation:
    """One completion.

    ``token_ids`` are the completion's tokens up to and including the one that ended it (stop string or
    EOS), so ``completion_tokens == len(token_ids)``. With ``logprobs`` requested, ``logprobs[i]`` is
    the log-probability of ``token_ids[i]`` under the model (before temperature/top-p), and
    ``top_logprobs[i]`` maps token id -> log-probability for the ``k`` most likely tokens at step ``i``.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens reached)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass(frozen=True)
class LogLikelihood:
    """Score of one (context, continuation) request.

    ``logprob``: sum over the continuation's tokens of log P(token | context, earlier tokens).
    ``is_greedy``: every continuation token was the most likely next token (greedy decoding would
    produce the continuation). ``n_tokens``: how many continuation tokens were scored.
    """

    logprob: float
    is_greedy: bool
    n_tokens: int


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                empty_context_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, split the way lm-evaluation-harness does.

    Trailing whitespace of the context moves to the continuation (``"Answer: "`` + ``"x"`` scores
    ``" x"``), the pair is tokenized whole, and the continuation is what follows the context's own
    tokenization: a BPE merge across the boundary therefore stays in the continuation, which is what
    makes scores comparable with that harness. An empty context is replaced by ``empty_context_ids``
    (the BOS or EOS token), so the first continuation token has something to be predicted from.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(encode(context + continuation))
    ctx = list(encode(context)) if context else []
    cont = whole[len(ctx):]
    if not cont:
        raise ConfigError(f"the continuation {continuation!r} tokenized to zero tokens after context "
                          f"{context[-40:]!r}; every choice needs at least one token.")
    if not ctx:
        if not empty_context_ids:
            raise ConfigError("the context is empty and the tokenizer has no BOS/EOS token to start from.")
        ctx = list(empty_context_ids)
    return ctx, cont


@runtime_checkable
class Engine(Protocol):
    """Anything that turns rendered prompts into generations (transformers, vLLM)."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Generate one completion per prompt, in the prompts' order."""
        ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render chat messages into the prompt string this engine's model expects."""
        ...

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Decoded text of each token (for locating a label value among the generated tokens)."""
        ...

    def load_weights(self, weights: Any = None) -> None:
        """Install new weights (``(name, tensor)`` pairs or a mapping; ``None`` = already updated in place) and
        invalidate every cached prefix, which would otherwise serve KV computed by the old weights."""
        ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[LogLikelihood]:
        """Score each ``(context, continuation)`` pair (see :func:`encode_pair`), in the requests' order."""
        ...
