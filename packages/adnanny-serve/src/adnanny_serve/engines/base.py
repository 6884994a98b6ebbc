"""The generation-engine contract (design.md: "generation engine", owned by adnanny-serve).

Every engine takes fully rendered prompt strings (chat templates already applied) and one
:class:`SamplingParams`, and returns one :class:`Generation` per prompt, in order. rl uses it for
rollouts, cook's teacher and eval's bench call it through the server; labeling uses it directly. The
field names follow vLLM's ``SamplingParams`` (``max_tokens``, ``stop``, ``include_stop_str_in_output``,
``logprobs``) so the vLLM adapter is a field-for-field translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from adnanny_serve.errors import ConfigError

__all__ = ["Engine", "Generation", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature == 0`` means greedy (deterministic, what labeling uses).

    ``stop``: strings that end a completion; the text is cut before the first one unless
    ``include_stop_str_in_output`` (label-only mode keeps the closing tag so the parser sees it).
    ``logprobs``: ``None`` for none, ``k >= 0`` for the sampled token's log-probability plus the
    ``k`` most likely alternatives at every step (the score column reads those).
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None

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
