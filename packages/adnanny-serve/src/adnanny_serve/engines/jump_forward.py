"""Jump-forward decoding of a tagged answer's fixed skeleton, verified so greedy outputs are unchanged.

A label-only answer is ``<Label>Good</Label>\\n<LocationLabel>Good</LocationLabel>\\n<AdQuality>Bad</AdQuality>``:
of its 11 tokens on the fixture's tokenizer only the 3 values are the model's choice; the tags and separators
are fixed by the task. Plain decoding spends one forward pass per token. Here the known text after the current
point (up to the next value slot) is tokenized and fed as a *draft* in the same forward pass as the pending
token, as in speculative decoding with the task format as the draft model: a draft token is kept only while it
equals the greedy choice at its position (the logits of the whole draft come from that one pass), and the
greedy token after the last kept one comes from the same pass. So the output is exactly what greedy decoding
would write — a model that leaves the format only loses the speed-up, never gets a forced token — and a
label-only answer takes 4 passes (prefill + 3 values) instead of 12.

Why not constrain the values too: a constrained value would change the output of a model that writes an
unknown value (a parse error today, reported as one), and the label's score reads the unconstrained
log-probabilities anyway.

The batch keeps one KV cache with a 2-D attention mask: each pass appends as many columns as the longest
``pending + draft`` of the batch (rows left-padded inside the pass, so every row's last fed token is the last
column), rejected draft columns are masked out afterwards (their KV stays in the cache, unseen), positions come
from each row's count of real tokens, and finished rows leave the batch. Greedy only: sampling would need
rejection sampling to keep the distribution, and labeling is greedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adnanny_serve.engines.base import Generation, SamplingParams
from adnanny_serve.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["JumpStats", "TagSkeleton", "generate_jump_forward"]


@dataclass(frozen=True)
class TagSkeleton:
    """The fixed text of a tagged answer around its value slots.

    ``pieces[i]`` is the text before slot ``i`` (after slot ``i - 1``); ``pieces[-1]`` follows the last slot, so
    ``len(pieces) == len(values) + 1``. ``values[i]`` are the texts slot ``i`` may hold (what the parser accepts).
    ``after``: the skeleton starts after the first occurrence of this text in the completion (reasoning mode:
    ``</think>``), or at the completion's start when empty.
    """

    pieces: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    after: str = ""

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.values) + 1:
            raise ConfigError(f"`TagSkeleton` needs one piece more than value slots; got {len(self.pieces)} pieces "
                              f"for {len(self.values)} slots.")
        if any(not vs or any(not v for v in vs) for vs in self.values):
            raise ConfigError("`TagSkeleton` value slots need at least one non-empty allowed value each.")

    @classmethod
    def from_task(cls, task: Any, mode: str) -> TagSkeleton | None:
        """The skeleton of ``task``'s answer in ``mode`` (adnanny-cook's ``format_target``), or None for a task
        whose fields are free text (generation tasks: nothing but the tags would be known)."""
        fields = list(getattr(task, "field_order", ()))
        allowed = getattr(task, "label_fields", {})
        if getattr(task, "kind", "label") != "label" or not fields or any(not allowed.get(f) for f in fields):
            return None
        pieces = [("\n" if mode == "reasoning" else "") + task.open_tag(fields[0])]
        for a, b in zip(fields, fields[1:]):
            pieces.append(task.close_tag(a) + "\n" + task.open_tag(b))
        pieces.append(task.close_tag(fields[-1]))
        values = tuple(tuple(task.render_value(f, v) for v in allowed[f]) for f in fields)
        return cls(pieces=tuple(pieces), values=values, after="</think>" if mode == "reasoning" else "")

    def normalized(self, tokenizer: Any) -> TagSkeleton:
        """The skeleton as the tokenizer writes it back (a lower-casing normalizer turns ``<Label>`` into
        ``<label>``): drafts are matched against decoded completions."""

        def rt(s: str) -> str:
            return tokenizer.decode(tokenizer(s, add_special_tokens=False)["input_ids"], skip_special_tokens=False)

        return TagSkeleton(pieces=tuple(rt(p) if p else p for p in self.pieces),
                           values=tuple(tuple(rt(v) for v in vs) for vs in self.values),
                           after=rt(self.after) if self.after else "")

    def draft(self, text: str) -> str:
        """The fixed text that must follow ``text`` (a completion so far) up to the next value the model chooses;
        "" when the model must choose now, the completion has left the format, or the answer is complete."""
        if self.after:
            k = text.find(self.after)
            if k < 0:
                return ""
            text = text[k + len(self.after):]
        pos = 0
        for i, piece in enumerate(self.pieces):
            rest = text[pos:]
            if len(rest) < len(piece):
                return piece[len(rest):] if piece.startswith(rest) else ""
            if not rest.startswith(piece):
                return ""
            pos += len(piece)
            if i == len(self.values):
                return ""  # complete
            rest = text[pos:]
            nxt = self.pieces[i + 1]
            done = [v for v in self.values[i] if rest.startswith(v) and _consistent(rest[len(v):], nxt)]
            if len(done) == 1 and len(rest) > len(done[0]):
                pos += len(done[0])
                continue
            growing = [v for v in self.values[i] if v.startswith(rest)]
            if rest and len(growing) == 1:  # the value is decided: finish it and the piece after it
                return growing[0][len(rest):] + nxt
            return ""
        return ""


def _consistent(tail: str, piece: str) -> bool:
    return piece.startswith(tail) or tail.startswith(piece)


@dataclass
class JumpStats:
    """What the last jump-forward call did: forward passes, draft tokens fed and kept, tokens written."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"passes": self.passes, "drafted": self.drafted, "accepted": self.accepted, "tokens": self.tokens,
                "acceptance": self.accepted / self.drafted if self.drafted else 0.0}


class _Row:
    __slots__ = ("i", "prompt_len", "gen", "lps", "tops", "draft", "finish", "stop_at")

    def __init__(self, i: int, prompt_len: int):
        self.i = i
        self.prompt_len = prompt_len
        self.gen: list[int] = []
        self.lps: list[float] = []
        self.tops: list[dict[int, float]] = []
        self.draft: list[int] = []
        self.finish: str | None = None


def _draft_ids(tokenizer: Any, skel: TagSkeleton, gen: list[int], max_new: int) -> list[int]:
    text = tokenizer.decode(gen, skip_special_tokens=False)
    d = skel.draft(text)
    if not d:
        return []
    whole = tokenizer(text + d, add_special_tokens=False)["input_ids"]
    ids = whole[len(gen):] if whole[:len(gen)] == gen else tokenizer(d, add_special_tokens=False)["input_ids"]
    return list(ids[:max(0, max_new)])


def generate_jump_forward(engine: Any, ids: list[list[int]], params: SamplingParams, n_prefix: int = 0,
                          cancelled: Any = None, on_tokens: Any = None, stats: JumpStats | None = None
                          ) -> list[Generation]:
    """Greedy generation of one batch with the skeleton ``params.skeleton`` drafted and verified.

    Same contract as the engine's static batch: token ids up to the ending token, text cut at the first stop
    string, raw-logit log-probabilities, ``finish_reason``; ``n_prefix`` tokens shared by every row come from
    the engine's prefix cache.
    """
    import torch

    from adnanny_serve._compat import cache_kwarg

    if params.temperature != 0:
        raise ConfigError("jump-forward decoding is greedy only (`temperature` 0).")
    skel = params.skeleton
    assert skel is not None
    tok, model, dev = engine.tokenizer, engine.model, engine.device
    skel = engine.normalized_skeleton(skel)
    stats = stats if stats is not None else JumpStats()
    pad = int(tok.pad_token_id)
    eos = engine.eos_ids
    k_top = params.logprobs
    tail = max((len(s) for s in params.stop), default=0) + 8
    rows = [_Row(i, len(x)) for i, x in enumerate(ids)]
    for r in rows:
        r.draft = _draft_ids(tok, skel, [], params.max_tokens - 1)

    # ---- prefill: prefix (cached) | left pads | own suffix + first draft
    feeds = [x[n_prefix:] + r.draft for x, r in zip(ids, rows)]
    width = max(len(f) for f in feeds)
    inp = torch.full((len(rows), width), pad, dtype=torch.long)
    new_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, f in enumerate(feeds):
        inp[j, width - len(f):] = torch.tensor(f, dtype=torch.long)
        new_mask[j, width - len(f):] = 1
    if n_prefix:
        cache = engine.prefix_cache_copy(ids[0][:n_prefix], len(rows))
        mask = torch.cat([torch.ones((len(rows), n_prefix), dtype=torch.long), new_mask], 1)
    else:
        cache = engine._new_cache()
        mask = new_mask
    pos = (mask.cumsum(1) - 1).clamp(min=0)[:, -width:]
    active = list(rows)
    fed_counts = [len(r.draft) + 1 for r in rows]  # positions whose logits are read: last prompt token + draft
    with torch.inference_mode():
        while True:
            keep_n = max(fed_counts)
            out = model(input_ids=inp.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                        logits_to_keep=keep_n, **{cache_kwarg(model): cache})
            stats.passes += 1
            logits = out.logits[:, -keep_n:].float()  # [B, keep_n, V]
            lsm = logits.log_softmax(-1) if k_top is not None else None
            greedy = logits.argmax(-1).cpu()  # [B, keep_n]
            keep_rows: list[int] = []
            for b, r in enumerate(active):
                m = fed_counts[b]
                off = keep_n - m  # row b's fed positions are the last m columns
                d = r.draft
                a = 0
                while a < len(d) and int(greedy[b, off + a]) == d[a]:
                    a += 1
                stats.drafted += len(d)
                stats.accepted += a
                new = d[:a] + [int(greedy[b, off + a])]
                if a < len(d):  # rejected draft columns: their KV stays in the cache, masked out from now on
                    mask[b, mask.shape[1] - (len(d) - a):] = 0
                for t_i, t in enumerate(new):
                    r.gen.append(t)
                    if lsm is not None:
                        lp = lsm[b, off + t_i]
                        r.lps.append(float(lp[t]))
                        if k_top:
                            v, ix = lp.topk(min(k_top, lp.shape[-1]))
                            r.tops.append({int(x): float(y) for x, y in zip(ix.tolist(), v.tolist())
                                           if math.isfinite(y)})
                        else:
                            r.tops.append({})
                    reason = _stopped(tok, r.gen, t, params, eos, tail)
                    if reason is not None:
                        r.finish = reason
                        break
                if r.finish is None and cancelled is not None and cancelled(r.i):
                    r.finish = "cancelled"
                if on_tokens is not None:
                    on_tokens(r.i, list(r.gen))
                if r.finish is None:
                    keep_rows.append(b)
            if not keep_rows:
                break
            if len(keep_rows) < len(active):  # finished rows leave the batch (and the cache)
                idx = torch.tensor(keep_rows, dtype=torch.long)
                mask = mask[idx]
                dev_idx = idx.to(dev)
                first = int(mask.any(0).long().argmax())
                for layer in cache.layers:
                    layer.keys = layer.keys.index_select(0, dev_idx)[:, :, first:]
                    layer.values = layer.values.index_select(0, dev_idx)[:, :, first:]
                mask = mask[:, first:]
                active = [active[b] for b in keep_rows]
            # ---- next pass: pending token + its draft, left-padded inside the pass
            for r in active:
                r.draft = _draft_ids(tok, skel, r.gen, params.max_tokens - len(r.gen) - 1)
            fed_counts = [1 + len(r.draft) for r in active]
            width = max(fed_counts)
            inp = torch.full((len(active), width), pad, dtype=torch.long)
            new_mask = torch.zeros((len(active), width), dtype=torch.long)
            pos = torch.zeros((len(active), width), dtype=torch.long)
            base = mask.sum(1)
            for b, r in enumerate(active):
                f = [r.gen[-1]] + r.draft
                inp[b, width - len(f):] = torch.tensor(f, dtype=torch.long)
                new_mask[b, width - len(f):] = 1
                pos[b, width - len(f):] = base[b] + torch.arange(len(f))
            mask = torch.cat([mask, new_mask], 1)
    gens = []
    for r in rows:
        toks = r.gen
        stats.tokens += len(toks)
        text_ids = toks[:-1] if toks and toks[-1] in eos else toks
        text = tok.decode(text_ids, skip_special_tokens=False)
        finish = r.finish or "length"
        hit = [(text.find(s), s) for s in params.stop if s in text]
        if hit:
            p, s = min(hit)
            text = text[: p + len(s)] if params.include_stop_str_in_output else text[:p]
        g = Generation(text=text, prompt_tokens=r.prompt_len, completion_tokens=len(toks), finish_reason=finish,
                       token_ids=list(toks))
        if k_top is not None:
            g.logprobs = r.lps[:len(toks)]
            g.top_logprobs = r.tops[:len(toks)]
        gens.append(g)
    return gens


def _stopped(tok: Any, gen: list[int], t: int, params: SamplingParams, eos: set[int], tail: int) -> str | None:
    """Why the row ends at token ``t`` (just appended), as the static engine decides it step by step."""
    if t in eos:
        return "stop"
    if params.stop:
        text = tok.decode(gen[-tail:], skip_special_tokens=False)
        if any(s in text for s in params.stop):
            return "stop"
    if len(gen) >= params.max_tokens:
        return "length"
    return None
