"""A scripted, deterministic teacher speaking the OpenAI chat-completions protocol over real HTTP (127.0.0.1).

It is a real server (Starlette, FastAPI's core, + uvicorn in a background thread), not a mock of the client: the cook pipeline talks
to it through the official `openai` SDK exactly as it would talk to vLLM or DeepSeek.

Scripted behaviour, all derived from SHA-256 of the request so reruns see the same thing:
* `slots=N`: a server that computes N requests at once (`latency_s` each) and queues the rest FIFO, like vLLM
  or adnanny-serve at capacity; a request whose client went away is still computed (counted in `successes`),
  as a real server does, so duplicate work is visible; `GET /v1/models` answers at once (the liveness probe);
* faults on the FIRST attempt of a request: 429 (with Retry-After), 500, or a stall longer than the client timeout;
* content: cooking prompts ("Given ..." lines) get a reasoning trace that cites the input and repeats the given
  labels; for a fraction of inputs ONE candidate (the one whose `seed` == row hash % k) is bad in a known way:
  malformed (missing tag), contradict (wrong label), boilerplate (no input details), divergent (hallucinated
  off-topic text), unsound (flagged by the verifier);
* generation prompts (keyword -> queries) return 4 compliant queries plus a duplicate, a broader and an off-topic one;
* verifier prompts (system starts with "You verify") answer yes/no tags; "unsound" traces get <Sound>no</Sound>
  (or, with `verdict=...`, that text verbatim); with `diverge_on=TEXT`, prompts containing TEXT get a
  well-formed but divergent trace (one prompt variant disagreeing with the others).
It records every request: attempts per key, successes per key, the kind served per key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from typing import Any

BAD_KINDS = ("malformed", "contradict", "boilerplate", "divergent", "unsound")


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest()[:12], 16)


class StubTeacher:
    def __init__(self, *, k: int = 4, bad_rate: float = 0.5, p429: float = 0.0, p500: float = 0.0,
                 p_timeout: float = 0.0, stall_s: float = 2.0, latency_s: float = 0.0, retry_after: str = "0.01",
                 kinds: tuple[str, ...] = BAD_KINDS, verdict: str | None = None,
                 diverge_on: str | None = None, reject_on: str | None = None, reject_status: int = 400,
                 slots: int = 0) -> None:
        self.k, self.bad_rate = k, bad_rate
        self.verdict = verdict  # when set: the verifier's answer, verbatim (e.g. an unparsable one)
        self.diverge_on = diverge_on  # when this text is in a cooking prompt: a divergent (but well-formed) trace
        self.reject_on, self.reject_status = reject_on, reject_status  # this text in a prompt: refuse the request
        self.p429, self.p500, self.p_timeout, self.stall_s = p429, p500, p_timeout, stall_s
        self.latency_s, self.retry_after, self.kinds = latency_s, retry_after, kinds
        self.slots = slots  # 0: unlimited parallelism; N: N requests computed at once, the rest queued FIFO
        self._slot_sem: asyncio.Semaphore | None = None
        self.queued = 0           # gauge: requests waiting for a slot
        self.queue_peak = 0
        self.probes = 0           # GET /v1/models
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.served: dict[str, str] = {}
        self.status: Counter[int] = Counter()
        self.times: list[float] = []
        self.log: list[tuple[str, int]] = []
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> StubTeacher:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def chat(request):  # type: ignore[no-untyped-def]
            body = await request.json()
            return await self._handle(body, JSONResponse)

        async def models(request):  # type: ignore[no-untyped-def]
            with self.lock:
                self.probes += 1
            return JSONResponse({"object": "list", "data": [{"id": "teacher", "object": "model", "created": 0,
                                                              "owned_by": "stub"}]})

        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                Route("/v1/models", models, methods=["GET"])])

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub teacher did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviour
    @staticmethod
    def request_id(body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    async def _handle(self, body: dict[str, Any], JSONResponse: Any) -> Any:
        rid = self.request_id(body)
        with self.lock:
            self.attempts[rid] += 1
            attempt = self.attempts[rid]
            self.times.append(time.monotonic())
        if self.slots:
            if self._slot_sem is None:  # created in the server's own event loop
                self._slot_sem = asyncio.Semaphore(self.slots)
            with self.lock:
                self.queued += 1
                self.queue_peak = max(self.queue_peak, self.queued)
            async with self._slot_sem:
                with self.lock:
                    self.queued -= 1
                await asyncio.sleep(self.latency_s)
        elif self.latency_s:
            await asyncio.sleep(self.latency_s)
        h = _h(rid) % 1000 / 1000.0
        if self.reject_on is not None and self.reject_on in body["messages"][-1]["content"]:
            return self._status(rid, self.reject_status, JSONResponse)
        if attempt == 1:
            if h < self.p429:
                return self._status(rid, 429, JSONResponse, {"Retry-After": self.retry_after})
            if h < self.p429 + self.p500:
                return self._status(rid, 500, JSONResponse)
            if h < self.p429 + self.p500 + self.p_timeout:
                await asyncio.sleep(self.stall_s)
                return self._status(rid, 504, JSONResponse)
        text, kind = self.respond(body)
        with self.lock:
            self.successes[rid] += 1
            self.served[rid] = kind
            self.status[200] += 1
            self.log.append((rid, 200))
        pt = sum(len(m["content"]) for m in body["messages"]) // 4
        return JSONResponse({
            "id": "cmpl-" + rid[:12], "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": pt, "completion_tokens": len(text) // 4,
                      "total_tokens": pt + len(text) // 4}})

    def _status(self, rid: str, code: int, JSONResponse: Any, headers: dict[str, str] | None = None) -> Any:
        with self.lock:
            self.status[code] += 1
            self.log.append((rid, code))
        return JSONResponse({"error": {"message": f"scripted {code}", "type": "scripted"}}, status_code=code,
                            headers=headers)

    def respond(self, body: dict[str, Any]) -> tuple[str, str]:
        msgs = body["messages"]
        system, user = msgs[0]["content"], msgs[-1]["content"]
        if system.startswith("You verify"):
            if self.verdict is not None:
                return self.verdict, "verifier"
            unsound = "always relevant" in user
            return (f"<Faithful>yes</Faithful><Sound>{'no' if unsound else 'yes'}</Sound>"
                    f"<Guidelines>yes</Guidelines>", "verifier")
        if "different outputs" in user:
            return self._generate(user), "generation"
        if "Given " in user:
            return self._reason(user, int(body.get("seed", 0)))
        return "<think>I think so.</think>", "other"

    @staticmethod
    def _fields(user: str) -> tuple[dict[str, str], list[tuple[str, str]], list[str]]:
        inputs: dict[str, str] = {}
        given: list[tuple[str, str]] = []
        for line in user.splitlines():
            m = re.match(r"Given (.+?): (.+)$", line)
            if m:
                given.append((m.group(1), m.group(2)))
                continue
            m = re.match(r"([A-Z][A-Za-z ]{1,30}): (.+)$", line)
            if m and not given:
                inputs[m.group(1)] = m.group(2)
        tags = re.findall(r"^<(\w+)>[^<]*</\1>$", user, flags=re.M)
        return inputs, given, tags

    def _reason(self, user: str, seed: int) -> tuple[str, str]:
        inputs, given, tags = self._fields(user)
        block = "\n".join(f"{k}: {v}" for k, v in inputs.items())
        hr = _h(block)
        kind = "good"
        if hr % 1000 / 1000.0 < self.bad_rate and seed == hr % self.k:
            kind = self.kinds[(hr // 1000) % len(self.kinds)]
        if self.diverge_on is not None and self.diverge_on in user:
            kind = "divergent"
        vals = [v for _, v in given]
        facts = "; ".join(f"the {k.lower()} is '{v}'" for k, v in inputs.items())
        conclusion = ", ".join(f"{name} '{v}'" for name, v in given)
        lead = ("Looking at the input", "Reading the input carefully", "Considering the details")[seed % 3]
        think = (f"{lead}: {facts}. Comparing these concrete details step by step, the given "
                 f"{conclusion} follow from them. Therefore the given values are appropriate.")
        if kind == "boilerplate":
            think = "This is a good example. The answer is correct. Everything fits well."
        elif kind == "divergent":
            first = ". ".join(list(inputs.values())[:2])
            think = (f"{first}. Medieval castles had thick stone walls and moats; sailing ships carried spices "
                     f"across oceans; volcanic eruptions reshape islands; penguins migrate in the Antarctic "
                     f"winter; baroque composers wrote fugues for the organ.")
        elif kind == "unsound":
            think += " This proves that all ads are always relevant to every query."
        if kind == "contradict" and vals:
            vals = list(vals)
            vals[0] = {"Good": "Bad", "Bad": "Good", "Fair": "Good", "0": "3", "1": "3", "2": "0", "3": "0",
                       "A": "B", "B": "A", "Tie": "A"}.get(vals[0], "Bad")
        body = "\n".join(f"<{t}>{v}</{t}>" for t, v in zip(tags, vals, strict=False))
        if kind == "malformed" and tags:
            body = body.split("\n", 1)[1] if "\n" in body else ""
        return f"<think>\n{think}\n</think>\n{body}", kind

    @staticmethod
    def _generate(user: str) -> str:
        if "<Title>...</Title><Description>...</Description>" in user:
            title = re.search(r"^Ad title: (.+)$", user, flags=re.M)
            t = title.group(1).strip().title() if title else "Ad"
            return "\n".join(f"<Title>{t} {suffix}</Title><Description>{t}: {d}</Description>" for suffix, d in
                             (("Deals", "clear offer, same price."), ("Online", "order online, free returns.")))
        kw = re.search(r"^Keyword: (.+)$", user, flags=re.M)
        k = kw.group(1).strip() if kw else "item"
        cat = re.search(r"^Landing page: [^|]*\| ([^.]+)\.", user, flags=re.M)
        broader = cat.group(1).strip().lower() if cat else k.split()[-1]
        qs = [f"{k} under $500", f"best {k} for beginners", f"{k} reviews 2025", f"{k} deals near me",
              f"{k} under $500", broader,
              "medieval castle tours with penguins"]
        return "\n".join(f"<Query>{q}</Query>" for q in qs)

    # ------------------------------------------------------------------ inspection
    def repeated_successes(self) -> int:
        with self.lock:
            return sum(c - 1 for c in self.successes.values() if c > 1)

    def served_kinds(self) -> Counter[str]:
        with self.lock:
            return Counter(self.served.values())


def by_key(served: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for k, v in served.items():
        out[v].append(k)
    return out


if __name__ == "__main__":  # run standalone: python stub_teacher.py PORTFILE [json-kwargs]
    import sys

    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    s = StubTeacher(**kw).start()
    with open(sys.argv[1], "w") as f:
        f.write(str(s.port))
    while True:
        time.sleep(3600)
