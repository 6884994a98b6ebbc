"""OpenAI request validation and response shapes (pure functions, no HTTP).

Only what a labeling / teacher / rollout client needs is supported; everything else is refused with a 400
that names the field, rather than silently ignored: ``echo``, ``tools``, ``response_format``, non-text message
content, and ``logprobs`` together with ``stream``. ``stream: true`` answers Server-Sent Events as OpenAI does
(``chat.completion.chunk`` / ``text_completion`` chunks, then ``data: [DONE]``; ``stream_options.include_usage``
adds a last chunk with ``usage``). ``n`` (1..``Limits.max_n``) samples per prompt are supported: choices are ordered
prompt by prompt, ``index = prompt_index * n + sample``, as OpenAI orders them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams
from adnanny_serve.errors import ConfigError

__all__ = ["ApiError", "Limits", "chat_response", "completion_response", "parse_chat", "parse_completion",
           "parse_stream"]


class ApiError(Exception):
    """An error answered to the client in OpenAI's format."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: longer prompts or budgets are refused with 400, bigger bodies 413."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_n: int = 8  # samples per prompt (`n`)


_UNSUPPORTED = {"echo": (True,), "tools": None, "functions": None, "response_format": None,
                "best_of": None, "suffix": None}


def _check_unsupported(body: dict[str, Any]) -> None:
    for k, bad in _UNSUPPORTED.items():
        v = body.get(k)
        if v is None or v is False:
            continue
        if bad is None or v in bad:
            raise ApiError(400, f"`{k}` is not supported by this server; got {v!r}. Remove it.", param=k)


def _n(body: dict[str, Any], limits: Limits) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limits.max_n:
        raise ApiError(400, f"`n` must be an integer in [1, {limits.max_n}]; got {n!r}.", param="n")
    return n


def _num(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"`{key}` must be a number; got {v!r}.", param=key)
    return float(v)


def _params(body: dict[str, Any], limits: Limits, *, default_max: int, logprobs: int | None) -> SamplingParams:
    mt = body.get("max_completion_tokens", body.get("max_tokens", default_max))
    if mt is None:
        mt = default_max
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise ApiError(400, f"`max_tokens` must be an integer >= 1; got {mt!r}.", param="max_tokens")
    if mt > limits.max_tokens:
        raise ApiError(400, f"`max_tokens` is {mt} but this server allows at most {limits.max_tokens}; "
                       "ask for fewer tokens.", param="max_tokens")
    temperature = _num(body, "temperature", 1.0)
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"`temperature` must be in [0, 2]; got {temperature!r}.", param="temperature")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4:
        stop = tuple(stop)
    else:
        raise ApiError(400, f"`stop` must be a string or a list of up to 4 non-empty strings; got {stop!r}.",
                       param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"`seed` must be an integer; got {seed!r}.", param="seed")
    try:
        return SamplingParams(max_tokens=mt, temperature=temperature, top_p=_num(body, "top_p", 1.0), stop=stop,
                              logprobs=logprobs, seed=seed)
    except ConfigError as e:
        raise ApiError(400, str(e)) from None


def _model(body: dict[str, Any], served: str) -> None:
    m = body.get("model")
    if not isinstance(m, str) or not m:
        raise ApiError(400, f"`model` is required (a string); this server serves {served!r}.", param="model")
    if m != served:
        raise ApiError(404, f"`model` {m!r} does not exist here; this server serves {served!r}.", param="model",
                       code="model_not_found")


def parse_chat(body: Any, served: str, limits: Limits) -> tuple[list[dict[str, str]], SamplingParams, bool, int]:
    """(messages, params, want_logprobs, n) of a /v1/chat/completions body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.")
    _model(body, served)
    _check_unsupported(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, f"`messages` must be a non-empty list of {{role, content}}; got {msgs!r:.80}.",
                       param="messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"`messages[{i}].role` must be system, user, assistant or developer; got "
                           f"{(m.get('role') if isinstance(m, dict) else m)!r}.", param=f"messages[{i}].role")
        c = m.get("content")
        if isinstance(c, list):  # [{"type": "text", "text": ...}] parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
                raise ApiError(400, f"`messages[{i}].content` parts must all be text parts.",
                               param=f"messages[{i}].content")
            c = "".join(p["text"] for p in c)
        if not isinstance(c, str):
            raise ApiError(400, f"`messages[{i}].content` must be a string; got {type(c).__name__}.",
                           param=f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": c})
    want = bool(body.get("logprobs", False))
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise ApiError(400, f"`top_logprobs` must be an integer in [0, 20]; got {top!r}.", param="top_logprobs")
    if top and not want:
        raise ApiError(400, "`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
    params = _params(body, limits, default_max=min(256, limits.max_tokens), logprobs=(top or 0) if want else None)
    return clean, params, want, _n(body, limits)


def parse_completion(body: Any, served: str, limits: Limits) -> tuple[list[str], SamplingParams, int]:
    """(prompts, params, n) of a /v1/completions body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.")
    _model(body, served)
    _check_unsupported(body)
    p = body.get("prompt")
    prompts = [p] if isinstance(p, str) else p
    if not isinstance(prompts, list) or not prompts or not all(isinstance(x, str) and x for x in prompts):
        raise ApiError(400, f"`prompt` must be a non-empty string or a list of them; got {p!r:.80}.", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(400, f"`prompt` holds {len(prompts)} prompts; at most {limits.max_prompts} per request.",
                       param="prompt")
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= 5):
        raise ApiError(400, f"`logprobs` must be an integer in [0, 5]; got {lp!r}.", param="logprobs")
    return prompts, _params(body, limits, default_max=16, logprobs=lp), _n(body, limits)


def _usage(gens: list[Generation]) -> dict[str, int]:
    p = sum(g.prompt_tokens for g in gens)
    c = sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chat_response(gens: list[Generation], model: str,
                  logprob_info: list[tuple[list[str], list[dict[str, float]]] | None]) -> dict[str, Any]:
    """The chat.completion body of ``gens`` (the ``n`` samples of one prompt)."""
    choices = []
    for idx, (g, info) in enumerate(zip(gens, logprob_info)):
        choice: dict[str, Any] = {"index": idx, "message": {"role": "assistant", "content": g.text},
                                  "finish_reason": g.finish_reason, "logprobs": None}
        if info is not None and g.logprobs is not None:
            token_strings, top_strings = info
            choice["logprobs"] = {"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())}
                                  for k, v in (top_strings[i] if top_strings else {}).items()]}
                for i, (t, lp) in enumerate(zip(token_strings, g.logprobs))]}
        choices.append(choice)
    # usage counts the prompt once, as OpenAI does for n > 1
    usage = {"prompt_tokens": gens[0].prompt_tokens if gens else 0,
             "completion_tokens": sum(g.completion_tokens for g in gens)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage}


def completion_response(gens: list[Generation], model: str,
                        logprob_info: list[tuple[list[str], list[dict[str, float]]] | None]) -> dict[str, Any]:
    choices = []
    for i, (g, info) in enumerate(zip(gens, logprob_info)):
        lp = None
        if info is not None and g.logprobs is not None:
            toks, tops = info
            lp = {"tokens": toks, "token_logprobs": g.logprobs, "top_logprobs": tops, "text_offset": []}
        choices.append({"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": lp})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(gens)}


def parse_stream(body: Any) -> tuple[bool, bool]:
    """(stream, include_usage) of a request body (validated; logprobs are not streamed)."""
    if not isinstance(body, dict):
        return False, False
    st = body.get("stream", False)
    if st is None:
        st = False
    if not isinstance(st, bool):
        raise ApiError(400, f"`stream` must be true or false; got {st!r}.", param="stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not st):
        raise ApiError(400, "`stream_options` must be an object and needs `stream: true`.", param="stream_options")
    if st and body.get("logprobs") not in (None, False):
        raise ApiError(400, "`logprobs` cannot be streamed by this server; drop `stream` or `logprobs`.",
                       param="logprobs")
    return st, bool((opts or {}).get("include_usage", False))
