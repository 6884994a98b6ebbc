"""Continuous batching on the transformers engine: sequences join and leave the running batch at every step.

Static batching (``TransformersEngine.generate``) runs a batch until its longest row finishes, and only prompts
with identical sampling parameters share a batch; one long reasoning request then holds up every short label
request behind it. Here each decoding step (:meth:`ContinuousScheduler.step`):

1. *joins* waiting sequences (up to ``max_batch`` running): their prompts are prefilled together (left-padded)
   into a fresh KV cache, which is then merged into the running one — both left-padded to a common length
   along the time axis and concatenated along the batch axis, with the 2-D attention mask marking the pads;
   the prompts' shared prefix (the task's system prompt) comes from the engine's prefix cache, so only each
   prompt's own suffix is prefilled;
2. *samples* one token for every running row from its own last logits with its own parameters (greedy or
   temperature / top-p) and its own ``torch.Generator`` (seeded per sequence, so a seed reproduces a sample
   whatever else shares the batch);
3. *finishes* rows that hit EOS, a stop string, ``max_tokens`` or were cancelled, and drops them from the cache
   (``batch_select_indices``), trimming pad columns no row needs any more;
4. *decodes* one step for the rest (positions from each row's own token count, so a row's pads never shift its
   positions and greedy outputs equal unbatched generation — tested with mixed lengths, budgets and seeds).

Outputs follow the static engine's conventions exactly (token ids up to the ending token, text cut at the stop
string, raw-logit log-probabilities, ``finish_reason``). The scheduler is single-threaded: the server's engine
thread calls :meth:`add` (thread-safe) and :meth:`step`.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adnanny_serve._compat import cache_kwarg
from adnanny_serve.engines.base import Generation, SamplingParams

if TYPE_CHECKING:
    import torch

__all__ = ["ContinuousScheduler", "Sequence", "sample_seed"]


def sample_seed(seed: int, j: int) -> int:
    """The seed of sample ``j`` of a request seeded with ``seed`` (distinct per sample, fixed per request)."""
    return (int(seed) * 1_000_003 + j) % (1 << 63)


@dataclass
class Sequence:
    """One prompt being generated; ``done(generation)`` is called (on the engine thread) when it finishes."""

    prompt_ids: list[int] | None  # None: tokenize ``prompt`` on the engine thread when it joins
    params: SamplingParams
    done: Callable[[Generation], None]
    seed: int | None = None
    cancelled: Callable[[], bool] = lambda: False
    on_tokens: Callable[[list[int]], None] | None = None
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[dict[int, float]] = field(default_factory=list)
    generator: Any = None
    prompt: str = ""
    cost: int = 0  # tokens it will ask of the engine (the server's admission budget)


class ContinuousScheduler:
    """Per-step join/leave batching over a :class:`~adnanny_serve.engines.transformers_engine.TransformersEngine`."""

    def __init__(self, engine: Any, *, max_batch: int = 8):
        self.engine = engine
        self.model = engine.model
        self.tok = engine.tokenizer
        self.eos_ids: set[int] = set(engine.eos_ids)
        self.max_batch = max_batch
        self._inbox: collections.deque[Sequence] = collections.deque()
        self._lock = threading.Lock()
        self.active: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self._next: torch.Tensor | None = None  # [B, V] logits of each row's next token
        self.steps = 0
        self.prefilled_tokens = 0  # prompt tokens prefilled (the shared prefix cached once is not counted)
        self.waiting_cost = 0

    # ------------------------------------------------------------------ queue
    def add(self, seq: Sequence) -> None:
        """Queue ``seq``; it joins the batch at the next step with room (thread-safe)."""
        with self._lock:
            self._inbox.append(seq)
            self.waiting_cost += seq.cost

    @property
    def waiting(self) -> int:
        return len(self._inbox)

    def idle(self) -> bool:
        return not self.active and not self._inbox

    def run_until_idle(self) -> None:
        while not self.idle():
            self.step()

    def generate(self, prompts: list[str], params: SamplingParams | list[SamplingParams],
                 seeds: list[int | None] | None = None) -> list[Generation]:
        """All ``prompts`` through the scheduler at once (one params each or shared), in order (tests, benchmarks)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        out: list[Generation | None] = [None] * len(prompts)
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            ids = self.tok(p, add_special_tokens=self.engine.add_special_tokens)["input_ids"]
            self.add(Sequence(ids, sp, done=lambda g, i=i: out.__setitem__(i, g),
                              seed=None if seeds is None else seeds[i]))
        self.run_until_idle()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        import torch

        with torch.inference_mode():
            self._join()
            if not self.active:
                return
            assert self._next is not None
            keep = []
            for r, seq in enumerate(self.active):
                if seq.cancelled():
                    self._finish(seq, "cancelled")
                    continue
                tok = self._sample(seq, self._next[r])
                seq.out.append(tok)
                if seq.on_tokens is not None:
                    seq.on_tokens(list(seq.out))
                reason = self._stopped(seq, tok)
                if reason is not None:
                    self._finish(seq, reason)
                else:
                    keep.append(r)
            if len(keep) < len(self.active):
                self._select(keep)
            if self.active:
                self._decode()
            self.steps += 1

    # ------------------------------------------------------------------ pieces
    def _join(self) -> None:
        import torch

        with self._lock:
            room = self.max_batch - len(self.active)
            new = [self._inbox.popleft() for _ in range(min(room, len(self._inbox)))]
            self.waiting_cost -= sum(s.cost for s in new)
        new = [s for s in new if not s.cancelled() or self._finish(s, "cancelled")]
        if not new:
            return
        for s in new:
            if s.prompt_ids is None:
                s.prompt_ids = list(self.tok(s.prompt, add_special_tokens=self.engine.add_special_tokens)["input_ids"])
            if s.params.temperature > 0:
                s.generator = torch.Generator(device=self.engine.device)
                if s.seed is not None:
                    s.generator.manual_seed(int(s.seed))
                else:
                    s.generator.seed()
        enc = [list(s.prompt_ids or ()) for s in new]
        # the prompts' shared prefix (system prompt) comes from the engine's prefix cache: only each prompt's own
        # suffix is prefilled, laid out prefix | pads | suffix (positions from the mask, as in the static engine)
        n_prefix = self.engine._shared_prefix_len(enc) if hasattr(self.engine, "prefix_cache_copy") else 0
        width = max(len(x) for x in enc)
        pad = int(self.tok.pad_token_id)
        ids = torch.full((len(new), width), pad, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for r, x in enumerate(enc):
            ids[r, width - len(x) + n_prefix:] = torch.tensor(x[n_prefix:], dtype=torch.long)
            mask[r, width - len(x) + n_prefix:] = 1
            if n_prefix:
                ids[r, :n_prefix] = torch.tensor(x[:n_prefix], dtype=torch.long)
                mask[r, :n_prefix] = 1
        cache = self.engine.prefix_cache_copy(enc[0][:n_prefix], len(new)) if n_prefix else self._new_cache()
        dev = self.engine.device
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        self.prefilled_tokens += int(mask[:, n_prefix:].sum())
        out = self.model(input_ids=ids[:, n_prefix:].to(dev), attention_mask=mask.to(dev),
                         position_ids=pos[:, n_prefix:].to(dev), use_cache=True, logits_to_keep=1,
                         **{cache_kwarg(self.model): cache})
        logits = out.logits[:, -1].float()  # [k, V]
        if not self.active:
            self._cache, self._mask, self._next = cache, mask, logits
        else:
            self._merge(cache, mask, logits)
        self.active.extend(new)

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:
            return DynamicCache()

    def _merge(self, cache: Any, mask: "torch.Tensor", logits: "torch.Tensor") -> None:
        """Append ``cache``'s rows to the running cache, both left-padded to one length along time."""
        import torch
        import torch.nn.functional as F

        assert self._mask is not None and self._next is not None
        ta, tb = self._mask.shape[1], mask.shape[1]
        t = max(ta, tb)
        for la, lb in zip(self._cache.layers, cache.layers):
            la.keys = torch.cat([F.pad(la.keys, (0, 0, t - ta, 0)), F.pad(lb.keys, (0, 0, t - tb, 0))], 0)
            la.values = torch.cat([F.pad(la.values, (0, 0, t - ta, 0)), F.pad(lb.values, (0, 0, t - tb, 0))], 0)
        self._mask = torch.cat([F.pad(self._mask, (t - ta, 0)), F.pad(mask, (t - tb, 0))], 0)
        self._next = torch.cat([self._next, logits], 0)

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (finished rows leave), then drop pad columns no remaining row uses."""
        import torch

        self.active = [self.active[r] for r in keep]
        if not keep:
            self._cache = self._mask = self._next = None
            return
        assert self._mask is not None and self._next is not None
        idx = torch.tensor(keep, dtype=torch.long)
        self._mask = self._mask[idx]
        self._next = self._next[idx]
        alive = self._mask.any(0)  # columns some remaining row still attends to
        first = int(alive.long().argmax())
        dev_idx = idx.to(self.engine.device)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, dev_idx)[:, :, first:]
            layer.values = layer.values.index_select(0, dev_idx)[:, :, first:]
        self._mask, alive = self._mask[:, first:], alive[first:]
        # Columns no row attends to inside the cache (the pads between a shared prefix and a prompt's suffix of
        # rows that left) would otherwise stay for good and every step would expand them again: drop them once
        # they are an eighth of the cache. Positions are counts of a row's real tokens, so they do not move.
        dead = int((~alive).sum())
        if dead and dead * 8 >= alive.numel():
            cols = alive.nonzero().squeeze(1).to(self.engine.device)
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(2, cols)
                layer.values = layer.values.index_select(2, cols)
            self._mask = self._mask[:, alive]

    def _decode(self) -> None:
        import torch

        assert self._mask is not None
        dev = self.engine.device
        last = torch.tensor([[s.out[-1]] for s in self.active], dtype=torch.long)
        pos = self._mask.sum(1, keepdim=True)  # each row's own next position: pads never shift it
        self._mask = torch.cat([self._mask, torch.ones((len(self.active), 1), dtype=torch.long)], 1)
        out = self.model(input_ids=last.to(dev), attention_mask=self._mask.to(dev), position_ids=pos.to(dev),
                         use_cache=True, **{cache_kwarg(self.model): self._cache})  # updates the cache in place
        self._next = out.logits[:, -1].float()

    def _sample(self, seq: Sequence, logits: "torch.Tensor") -> int:
        import torch

        p = seq.params
        if p.logprobs is not None:
            lp = logits.log_softmax(-1)
        if p.temperature == 0:
            tok = int(logits.argmax())
        else:
            scaled = logits / float(p.temperature)
            if p.top_p < 1.0:
                sorted_l, order = scaled.sort(descending=True)
                cum = sorted_l.softmax(-1).cumsum(-1)
                cut = cum - sorted_l.softmax(-1) > p.top_p  # drop tokens once the mass before them exceeds top_p
                sorted_l[cut] = -math.inf
                scaled = torch.full_like(scaled, -math.inf).scatter(0, order, sorted_l)
            tok = int(torch.multinomial(scaled.softmax(-1), 1, generator=seq.generator))
        if p.logprobs is not None:
            seq.logprobs.append(float(lp[tok]))
            if p.logprobs:
                v, i = lp.topk(min(p.logprobs, lp.shape[-1]))
                seq.tops.append({int(t): float(x) for t, x in zip(i.tolist(), v.tolist()) if math.isfinite(x)})
            else:
                seq.tops.append({})
        return tok

    def _stopped(self, seq: Sequence, tok: int) -> str | None:
        if tok in self.eos_ids:
            return "stop"
        if seq.params.stop:
            tail = max(len(s) for s in seq.params.stop) + 8
            text = self.tok.decode(seq.out[-tail:], skip_special_tokens=False)
            if any(s in text for s in seq.params.stop):
                return "stop"
        if len(seq.out) >= seq.params.max_tokens:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> bool:
        toks = list(seq.out)
        text_ids = toks[:-1] if toks and toks[-1] in self.eos_ids else toks
        text = self.tok.decode(text_ids, skip_special_tokens=False)
        p = seq.params
        hit = [(text.find(s), s) for s in p.stop if s in text]
        if hit:
            pos, s = min(hit)
            text = text[: pos + len(s)] if p.include_stop_str_in_output else text[:pos]
        g = Generation(text=text, prompt_tokens=len(seq.prompt_ids or ()), completion_tokens=len(toks),
                       finish_reason=reason, token_ids=toks)
        if p.logprobs is not None:
            g.logprobs = seq.logprobs[: len(toks)]
            g.top_logprobs = seq.tops[: len(toks)]
        seq.done(g)
        return False
