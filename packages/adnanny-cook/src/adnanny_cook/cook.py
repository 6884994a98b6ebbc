"""The cooking work on one chunk of inputs (paper §3.1-3.4): generation, reasoning candidates, filters, choice.

`ChunkCooker.cook(items)` is pure with respect to its inputs plus the teacher responses (which the cache makes
replayable), so the local and the Ray executor run the same code, and a resumed run rebuilds exactly what an
uninterrupted run would have produced.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from adnanny_cook.client import TeacherClient
from adnanny_cook.config import CookConfig
from adnanny_cook.embed import Embedder
from adnanny_cook.errors import ParseError, TeacherError
from adnanny_cook.filters import (Candidate, boilerplate_reason, contradiction_reason, keyword_rules, mmr_select,
                                  query_tokens, schema_parse, self_consistency)
from adnanny_cook.loaders import Item
from adnanny_cook.verifier import parse_verdict, verifier_messages

__all__ = ["ChunkCooker", "make_clients", "open_cooker"]

_MEMORY = 64  # rationales remembered per (task, labels) for MMR diversity


def make_clients(cfg: CookConfig) -> tuple[TeacherClient, TeacherClient | None]:
    teacher = TeacherClient(base_url=cfg.base_url, model=cfg.model, api_key=cfg.api_key, cache_path=cfg.cache_path,
                            concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm, max_retries=cfg.max_retries,
                            timeout_s=cfg.timeout_s, max_wait_s=cfg.max_wait_s, backoff_base_s=cfg.backoff_base_s,
                            backoff_max_s=cfg.backoff_max_s, price_in_per_mtok=cfg.price_in_per_mtok,
                            price_out_per_mtok=cfg.price_out_per_mtok, seed=cfg.seed)
    verifier = None
    if cfg.verifier_base_url:
        verifier = TeacherClient(base_url=cfg.verifier_base_url, model=cfg.verifier_model, api_key=cfg.api_key,
                                 cache_path=cfg.cache_path, concurrency=cfg.concurrency,
                                 max_retries=cfg.max_retries, timeout_s=cfg.timeout_s, max_wait_s=cfg.max_wait_s,
                                 backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s, seed=cfg.seed)
    return teacher, verifier


@asynccontextmanager
async def open_cooker(cfg: CookConfig, embedder: Embedder) -> AsyncIterator[ChunkCooker]:
    """A `ChunkCooker` with its teacher (and verifier) clients, closed on exit: the one lifecycle the local and
    the Ray executor share."""
    teacher, verifier = make_clients(cfg)
    try:
        yield ChunkCooker(cfg, teacher, verifier, embedder)
    finally:
        await teacher.aclose()
        if verifier is not None:
            await verifier.aclose()



def _teacher_reason(e: TeacherError) -> str:
    """Drop reason of a failed teacher call: "teacher_error" (retryable: the chunk is redone on rerun) or
    "teacher_rejected" (the teacher refused this request; the input is quarantined to rejects.jsonl)."""
    return "teacher_error" if e.retryable else "teacher_rejected"

class ChunkCooker:
    def __init__(self, cfg: CookConfig, teacher: TeacherClient, verifier: TeacherClient | None,
                 embedder: Embedder) -> None:
        self.cfg = cfg
        self.spec = cfg.spec
        self.teacher, self.verifier, self.embedder = teacher, verifier, embedder
        self.variants = cfg.variant_ids()
        self.memory: dict[str, Any] = {}
        self.kw_seen: dict[str, list[tuple[frozenset[str], Any]]] = {}
        self.counts: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        """Teacher (and verifier) call accounting for the manifest."""
        out = {"teacher": self.teacher.stats.as_dict()}
        if self.verifier is not None:
            out["verifier"] = self.verifier.stats.as_dict()
        return out

    # ------------------------------------------------------------------ state replay (resume)
    def replay(self, results: Sequence[dict[str, Any]]) -> None:
        """Rebuild MMR memory and keyword near-duplicate state from already finished item results."""
        for res in results:
            for sub in res["subs"]:
                texts = [c["reasoning"] for c in sub["chosen"]]
                if texts:
                    self._remember(sub["labels"], self.embedder.encode(texts))
                if self.spec.name == "keyword_query" and sub["origin"] == "generated":
                    q = sub["labels"]["query"]
                    self.kw_seen.setdefault(res["input"]["keyword"].lower(), []).append(
                        (query_tokens(q), self.embedder.encode([q])[0]))

    def _mem_key(self, labels: dict[str, Any]) -> str:
        if self.spec.kind == "generation":
            return self.spec.name
        return json.dumps(labels, sort_keys=True)

    def _remember(self, labels: dict[str, Any], emb: Any) -> None:
        import numpy as np

        k = self._mem_key(labels)
        old = self.memory.get(k)
        self.memory[k] = (np.concatenate([old, emb]) if old is not None else emb)[-_MEMORY:]

    # ------------------------------------------------------------------ the work
    def params(self, j: int) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
                             "max_tokens": self.cfg.max_tokens, "seed": j}
        if self.cfg.stop:  # only when set, so the cache keys of runs without `stop` are unchanged
            p["stop"] = list(self.cfg.stop)
        return p

    async def _generate(self, item: Item, drops: list[dict[str, Any]]) -> list[dict[str, str]]:
        msgs = self.spec.generation_messages(item.input, n=self.cfg.n_generate)
        try:
            comp = await self.teacher.complete(msgs, params=self.params(0), variant="generation")
        except TeacherError as e:
            if not e.retryable and not e.per_request:
                raise
            drops.append({"reason": _teacher_reason(e), "stage": "generation", "detail": str(e)})
            return []
        try:
            return self.spec.parse_generation_items(comp.text)
        except ParseError as e:
            drops.append({"reason": "schema", "stage": "generation", "detail": f"{e.kind}: {e}", "key": comp.key,
                          "text": comp.text})
            return []

    def _keyword_filter(self, keyword: str, queries: list[str], context: str, drops: list[dict[str, Any]]
                        ) -> list[str]:
        seen = self.kw_seen.setdefault(keyword.lower(), [])
        reasons = keyword_rules(keyword, queries, context, emb_fn=self.embedder.encode,
                                off_topic_min_sim=self.cfg.off_topic_min_sim,
                                near_dup_threshold=self.cfg.near_dup_threshold, seen=seen)
        kept = []
        for q, r in zip(queries, reasons, strict=True):
            if r is None:
                kept.append(q)
            else:
                drops.append({"reason": r, "stage": "keyword_rules", "detail": f"query {q!r} for keyword "
                                                                                f"{keyword!r}"})
        return kept

    async def _candidate(self, item: Item, sub: int, labels: dict[str, Any], j: int) -> Candidate:
        variant = self.variants[j % len(self.variants)]
        msgs = self.spec.reasoning_messages(item.input, labels, variant=variant, answer=self.cfg.teacher_answer)
        try:
            comp = await self.teacher.complete(msgs, params=self.params(j), variant=variant)
        except TeacherError as e:
            if not e.retryable and not e.per_request:
                raise
            c = Candidate(item.id, sub, j, variant, "", "", labels)
            c.drop, c.detail = _teacher_reason(e), str(e)
            return c
        return Candidate(item.id, sub, j, variant, self._answer_text(labels, comp.text), comp.key, labels)

    def _answer_text(self, labels: dict[str, Any], text: str) -> str:
        """The candidate's tagged text: the response itself, or (teacher_answer = "explanation") the explanation
        wrapped with the given labels' tags (`TaskSpec.assemble_explanation`; the filters judge the result)."""
        if self.cfg.teacher_answer == "explanation":
            return self.spec.assemble_explanation(labels, text)
        return text

    async def _verify(self, item: Item, c: Candidate) -> None:
        assert self.verifier is not None
        msgs = verifier_messages(self.spec, item.input, c.labels, c.reasoning or "")
        try:
            comp = await self.verifier.complete(msgs, params={"temperature": 0.0, "max_tokens": 64},
                                                variant="verifier")
            verdict = parse_verdict(comp.text)
        except TeacherError as e:
            if not e.retryable and not e.per_request:
                raise
            # an outage is not a judgment: counted as a teacher error, so the chunk is redone on rerun
            c.drop, c.detail = _teacher_reason(e), f"verifier unavailable: {e}"
            return
        except ParseError as e:
            c.drop, c.detail = "verifier", f"unparsable verdict: {e}"
            return
        c.scores.update({f"verifier_{k.lower()}": float(v) for k, v in verdict.items()})
        failed = [k for k, v in verdict.items() if not v]
        if failed:
            c.drop, c.detail = "verifier", f"verifier says no to {failed}"

    async def cook(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        cfg, spec = self.cfg, self.spec
        drops: dict[str, list[dict[str, Any]]] = {it.id: [] for it in items}
        # 1. generation (generation tasks without a given output), then keyword rules
        subs: dict[str, list[tuple[dict[str, Any], str]]] = {}
        need_gen = [it for it in items if it.labels is None]
        gens = await asyncio.gather(*(self._generate(it, drops[it.id]) for it in need_gen))
        gen_map = {it.id: g for it, g in zip(need_gen, gens, strict=True)}
        field0 = spec.field_order[0]
        for it in items:
            if it.labels is None:
                outs = gen_map[it.id]
                if spec.name == "keyword_query":
                    ctx = " ".join(str(it.input[f]) for f in ("ad_title", "ad_description", "landing_page"))
                    kept = set(self._keyword_filter(it.input["keyword"], [o[field0] for o in outs], ctx,
                                                    drops[it.id]))
                    outs = [o for o in outs if o[field0] in kept]
                    outs = [o for n, o in enumerate(outs) if o[field0] not in {x[field0] for x in outs[:n]}]
                subs[it.id] = [(dict(o), "generated") for o in outs]
            else:
                subs[it.id] = [(dict(it.labels), "given")]
        # 2. k reasoning candidates per (item, label set), all requests in flight together
        by_id = {it.id: it for it in items}
        jobs = [(it, s, labels, j) for it in items for s, (labels, _o) in enumerate(subs[it.id])
                for j in range(cfg.k)]
        cands: list[Candidate] = list(await asyncio.gather(*(self._candidate(*job) for job in jobs)))
        # 3. schema, contradiction, boilerplate
        for c in cands:
            if c.drop:
                continue
            c.drop = (schema_parse(spec, c) or contradiction_reason(spec, c)
                      or boilerplate_reason(c, by_id[c.item_id].input, cfg.boilerplate_min_overlap,
                                            cfg.boilerplate_min_words))
        # 4. self-consistency on one batched embedding of every survivor in the chunk
        alive = [c for c in cands if not c.drop]
        emb_all = self.embedder.encode([c.reasoning or "" for c in alive])
        row_of = {id(c): i for i, c in enumerate(alive)}
        groups: dict[tuple[str, int], list[Candidate]] = {}
        for c in alive:
            groups.setdefault((c.item_id, c.sub), []).append(c)
        for g in groups.values():
            reasons = self_consistency(g, emb_all[[row_of[id(c)] for c in g]], cfg.self_consistency_min_sim)
            for c, r in zip(g, reasons, strict=True):
                c.drop = r
        # 5. verifier on the survivors
        if self.verifier is not None:
            await asyncio.gather(*(self._verify(by_id[c.item_id], c) for c in cands if not c.drop))
        # 6. MMR choice per (item, label set), in item order so the memory evolves deterministically
        results = []
        for it in items:
            res_subs = []
            for s, (labels, origin) in enumerate(subs[it.id]):
                surv = [c for c in groups.get((it.id, s), []) if not c.drop]
                chosen_idx: list[int] = []
                if surv:
                    e = emb_all[[row_of[id(c)] for c in surv]]
                    chosen_idx = mmr_select(surv, e, self.memory.get(self._mem_key(labels)), cfg.mmr_lambda,
                                            cfg.keep_per_input)
                    self._remember(labels, e[chosen_idx])
                    for i, c in enumerate(surv):
                        if i not in chosen_idx:
                            c.drop, c.detail = "not_chosen", "a survivor, not picked by MMR"
                chosen = [surv[i] for i in chosen_idx]
                res_subs.append({"labels": labels, "origin": origin, "chosen": [
                    {"reasoning": c.reasoning, "variant": c.variant, "idx": c.idx, "key": c.key,
                     "scores": {k: v for k, v in c.scores.items() if not k.startswith("_")}} for c in chosen]})
            for c in cands:
                if c.item_id == it.id and c.drop:
                    drops[it.id].append({"reason": c.drop, "stage": "candidates", "sub": c.sub, "idx": c.idx,
                                         "variant": c.variant, "key": c.key, "detail": c.detail,
                                         "text": c.text})
            results.append({"id": it.id, "input": it.input, "subs": res_subs, "drops": drops[it.id]})
        return results
