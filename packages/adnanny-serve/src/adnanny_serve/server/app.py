"""The OpenAI-compatible HTTP server (FastAPI) on any :class:`~adnanny_serve.engines.base.Engine`.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /health``,
``GET /metrics`` (Prometheus text: queue depth, batch size, tokens/s, 429s, cancellations).

A request whose client disconnects is cancelled: the handler watches the connection (ASGI
``http.disconnect``) while it waits, and cancelling its wait drops the request from the queue or stops the
engine on it at the next decoding step (see :mod:`adnanny_serve.server.batcher`). Chat templates and token
counting run on a helper thread, never on the event loop, so a long prompt does not stall other clients.
Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: 400 malformed or out-of-limit
requests, 401 missing/wrong API key, 404 unknown model, 413 body too large, 429 queue full (with
``Retry-After``), 503 engine not running (with ``Retry-After``), 500 only for a real engine failure.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' ``Request`` annotations at
runtime, and ``Request`` is imported inside :func:`create_app` to keep fastapi a lazy import.)
"""



import asyncio
import concurrent.futures
import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Any

from adnanny_serve.server.batcher import Batcher, Overloaded, Unavailable
from adnanny_serve.server.protocol import (
    ApiError,
    Limits,
    chat_response,
    completion_response,
    parse_chat,
    parse_completion,
    parse_stream,
)

__all__ = ["create_app"]


def create_app(engine: Any, *, model_name: str, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 8, max_queue: int = 64, batch_wait_s: float = 0.005, batching: str = "static",
               max_queue_tokens: int | None = None) -> Any:
    """A FastAPI app serving ``engine`` under the name ``model_name`` (what clients pass as ``model``).

    ``batching``: "static" (:class:`Batcher`: batches of requests with equal parameters, any engine) or
    "continuous" (:class:`ContinuousBatcher`: sequences join and leave the running batch every step; the
    transformers engine only)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    lim = limits or Limits()
    if batching == "continuous":
        from adnanny_serve.server.continuous_batcher import ContinuousBatcher

        batcher: Any = ContinuousBatcher(engine, max_batch=max_batch, max_queue=max_queue,
                                         max_queue_tokens=max_queue_tokens)
    elif batching == "static":
        batcher = Batcher(engine, max_batch=max_batch, max_queue=max_queue, batch_wait_s=batch_wait_s,
                          max_queue_tokens=max_queue_tokens)
    else:
        from adnanny_serve.errors import ConfigError

        raise ConfigError(f"`batching` must be 'static' or 'continuous'; got {batching!r}.")
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            tok_pool.shutdown(wait=False)

    app = FastAPI(title="adnanny-serve", lifespan=lifespan)
    app.state.batcher = batcher

    def err(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return err(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return err(ApiError(400, f"malformed request: {e.errors()[:1]}"))

    @app.exception_handler(404)
    async def _not_found(request: Request, e: Exception) -> JSONResponse:
        return err(ApiError(404, f"no route {request.method} {request.url.path}; see /v1/models, "
                            "/v1/chat/completions, /v1/completions.", code="not_found"))

    @app.exception_handler(405)
    async def _bad_method(request: Request, e: Exception) -> JSONResponse:
        return err(ApiError(405, f"method {request.method} is not allowed on {request.url.path}."))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key; send `Authorization: Bearer <key>`.",
                           type_="authentication_error", code="invalid_api_key")

    async def read_json(request: Request) -> Any:
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > lim.max_body_bytes:
            raise ApiError(413, f"request body is {cl} bytes; at most {lim.max_body_bytes} allowed.")
        raw = await request.body()
        if len(raw) > lim.max_body_bytes:
            raise ApiError(413, f"request body is {len(raw)} bytes; at most {lim.max_body_bytes} allowed.")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}.") from None

    tok_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adnanny-tokenize")

    def _check_prompt_len(prompt: str) -> int:
        n = engine.count_tokens(prompt) if hasattr(engine, "count_tokens") else len(prompt) // 4
        if n > lim.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {n} tokens; this server accepts at most {lim.max_prompt_tokens}. "
                           "Shorten it.", param="messages", code="context_length_exceeded")
        return n

    async def off_loop(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(tok_pool, fn, *args)

    async def check_prompt_len(prompts: list[str]) -> list[int]:
        return await off_loop(lambda: [_check_prompt_len(p) for p in prompts])

    def cost(counts: list[int], n: int, params: Any) -> int:
        """Tokens a request asks of the engine: each prompt n times, plus its generation budget."""
        return n * (sum(counts) + len(counts) * params.max_tokens)

    async def disconnected(request: Request) -> None:
        """Returns when the client has gone (the body is read, so the next ASGI message is the disconnect)."""
        while True:
            msg = await request.receive()
            if msg.get("type") == "http.disconnect":
                return

    def admission_error(e: Exception) -> ApiError:
        if isinstance(e, Overloaded):
            return ApiError(429, str(e), type_="rate_limit_error", code="overloaded",
                            headers={"Retry-After": str(e.retry_after)})
        return ApiError(503, str(e), type_="server_error", code="unavailable", headers={"Retry-After": "5"})

    def stream(kind: str, prompts: list[str], params: Any, include_usage: bool, n_prompts: int, cost: int) -> Any:
        """Admit now (429/503 before any byte of the 200 stream), then stream Server-Sent Events."""
        from fastapi.responses import StreamingResponse

        from adnanny_serve.server.streaming import TextStream, sse_events

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, list[int]]] = asyncio.Queue()
        tok = getattr(engine, "tokenizer", None)
        decode = None if tok is None else (lambda ids: tok.decode(ids, skip_special_tokens=False))
        eos = set(getattr(engine, "eos_ids", set()))
        streams = [TextStream(decode, params, eos) for _ in prompts]

        def on_tokens(j: int, ids: list[int]) -> None:  # engine thread -> event loop
            loop.call_soon_threadsafe(queue.put_nowait, (j, ids))

        try:
            req = batcher.admit(prompts, params, on_tokens=on_tokens if decode is not None else None, cost=cost)
        except (Overloaded, Unavailable) as e:
            raise admission_error(e) from None
        return StreamingResponse(sse_events(kind, model_name, req, batcher.wait, queue, streams, include_usage,
                                            n_prompts), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def run(request: Request, prompts: list[str], params: Any, cost: int = 0) -> Any:
        """All of ``prompts`` generated (admitted together or refused together), cancelled if the client leaves."""
        work = asyncio.ensure_future(batcher.submit_many(prompts, params, cost=cost))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()  # the batcher drops it from the queue or stops the engine on it
            gone.cancel()
        if not work.done() or work.cancelled():
            raise ApiError(499, "client disconnected; request cancelled.", code="client_closed_request")
        try:
            return work.result()
        except Overloaded as e:
            raise ApiError(429, str(e), type_="rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except Unavailable as e:
            raise ApiError(503, str(e), type_="server_error", code="unavailable",
                           headers={"Retry-After": "5"}) from None
        except Exception as e:
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queued": batcher.queued, "batches": batcher.batches, "served": batcher.served,
                "cancelled": batcher.cancelled, "refused": batcher.refused}

    @app.get("/metrics")
    async def metrics() -> Any:
        from fastapi.responses import PlainTextResponse

        tps = batcher.completion_tokens / batcher.engine_seconds if batcher.engine_seconds > 0 else 0.0
        rows = [
            ("adnanny_serve_queue_prompts", "gauge", "Prompts waiting for the engine.", batcher.queued),
            ("adnanny_serve_running_prompts", "gauge", "Prompts in the running engine batch.", batcher.running_prompts),
            ("adnanny_serve_last_batch_size", "gauge", "Prompts in the last finished batch.", batcher.last_batch_size),
            ("adnanny_serve_batches_total", "counter", "Engine batches run.", batcher.batches),
            ("adnanny_serve_prompts_served_total", "counter", "Prompts answered.", batcher.served),
            ("adnanny_serve_completion_tokens_total", "counter", "Tokens generated.", batcher.completion_tokens),
            ("adnanny_serve_engine_seconds_total", "counter", "Seconds the engine spent generating.",
             round(batcher.engine_seconds, 6)),
            ("adnanny_serve_tokens_per_second", "gauge", "Generated tokens per engine second.", round(tps, 3)),
            ("adnanny_serve_overloaded_total", "counter", "Requests answered 429 (queue full).", batcher.refused),
            ("adnanny_serve_cancelled_prompts_total", "counter", "Prompts cancelled (client disconnected).",
             batcher.cancelled),
        ]
        text = "".join(f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {v}\n" for n, t, h, v in rows)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                             "owned_by": "adnanny"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        check_key(request)
        body = await read_json(request)
        messages, params, want_lp, n = parse_chat(body, model_name, lim)
        streaming, include_usage = parse_stream(body)
        try:
            prompt = await off_loop(engine.apply_chat_template, messages)
        except Exception as e:
            raise ApiError(400, f"`messages` cannot be rendered with the model's chat template: {e}",
                           param="messages") from None
        counts = await check_prompt_len([prompt])
        if streaming:
            return stream("chat", [prompt] * n, params, include_usage, 1, cost(counts, n, params))
        gens = await run(request, [prompt] * n, params, cost(counts, n, params))
        info = [lp_info(g) if want_lp else None for g in gens]
        return chat_response(gens, model_name, info)

    def lp_info(g: Any) -> Any:
        return (engine.token_strings(g.token_ids),
                [{engine.token_strings([t])[0]: v for t, v in d.items()} for d in (g.top_logprobs or [])])

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        check_key(request)
        body = await read_json(request)
        prompts, params, n = parse_completion(body, model_name, lim)
        streaming, include_usage = parse_stream(body)
        counts = await check_prompt_len(prompts)
        expanded = [p for p in prompts for _ in range(n)]  # choice i*n+j: prompt i, sample j
        if streaming:
            return stream("completion", expanded, params, include_usage, len(prompts), cost(counts, n, params))
        gens = await run(request, expanded, params, cost(counts, n, params))  # choice i*n+j: prompt i, sample j
        info = [None if params.logprobs is None else lp_info(g) for g in gens]
        return completion_response(list(gens), model_name, info)

    return app
