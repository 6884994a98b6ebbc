"""Server-Sent Events for ``stream: true`` (OpenAI's chunk format).

The engine reports each prompt's completion tokens after every decoding step (``generate(..., on_tokens=)``);
:class:`TextStream` turns those into text deltas that are always a prefix of the final text, so the chunks
concatenate exactly to the non-streamed completion: decoded text is held back while it ends in an incomplete
UTF-8 character (``\\ufffd``) or could be the start of a stop string, and it is cut at a stop string as the final
text is. The last chunk of each choice carries what remains of the final text and its ``finish_reason``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams

__all__ = ["TextStream", "sse_events"]


class TextStream:
    """Text deltas of one streamed completion (see the module docstring)."""

    def __init__(self, decode: Callable[[list[int]], str] | None, params: SamplingParams, eos_ids: set[int]):
        self.decode = decode
        self.stops = params.stop
        self.keep_stop = params.include_stop_str_in_output
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.eos_ids = eos_ids
        self.sent = ""

    def update(self, ids: list[int]) -> str:
        """The new safe text after the completion has grown to ``ids`` ("" when nothing is safe yet)."""
        if self.decode is None:
            return ""
        for j, t in enumerate(ids):
            if t in self.eos_ids:
                ids = ids[:j]
                break
        text = self.decode(ids)
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            pos, s = min(hits)
            text = text[: pos + len(s)] if self.keep_stop else text[:pos]
        elif self.hold:
            text = text[: max(0, len(text) - self.hold)]
        text = text.rstrip("\ufffd")
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            return delta
        return ""

    def finish(self, final: str) -> str:
        """What remains of the final text."""
        delta = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent = final
        return delta


def _event(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def sse_events(kind: str, model: str, req: Any, wait: Any, queue: asyncio.Queue[tuple[int, list[int]]],
                     streams: list[TextStream], include_usage: bool, n_prompts: int) -> AsyncIterator[str]:
    """The event stream of one admitted request ``req`` (``wait(req)`` -> generations); ``kind`` is "chat" or
    "completion". Closing the stream early (client gone) cancels the request."""
    chat = kind == "chat"
    cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(j: int, text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                ({} if text is None else {"content": text})
            choice: dict[str, Any] = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": j, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]})

    work = asyncio.ensure_future(wait(req))
    try:
        if chat:
            for j in range(len(streams)):
                yield chunk(j, None, role=True)
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get, work}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            j, ids = get.result()
            delta = streams[j].update(ids)
            if delta:
                yield chunk(j, delta)
        try:
            gens: list[Generation] = work.result()
        except Exception as e:  # the 200 is already sent: report the failure in-band, as OpenAI does
            yield _event({"error": {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                                    "param": None, "code": None}})
            return
        for j, g in enumerate(gens):
            yield chunk(j, streams[j].finish(g.text), finish=g.finish_reason)
        if include_usage:
            per = max(1, len(gens) // max(1, n_prompts))  # gens are prompt-major: gens[i * n + sample]
            p = sum(g.prompt_tokens for g in gens[::per])
            c = sum(g.completion_tokens for g in gens)
            yield _event({"id": cid, "object": obj, "created": created, "model": model, "choices": [],
                          "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
        yield "data: [DONE]\n\n"
    finally:
        if not work.done():
            work.cancel()  # the client went away mid-stream: the batcher cancels the request
