"""Rejection-sampling filters (paper §3.4). Each returns a drop reason (or None); the pipeline counts every drop.

Order per input: schema -> contradiction -> boilerplate -> self-consistency -> verifier -> MMR choice, then a
corpus-wide cross-input consistency pass. Keyword queries additionally pass `keyword_rules` before reasoning.

* schema: the task's strict parser must accept the output (reasoning mode).
* contradiction: the tags must repeat the given labels, and any label the reasoning *states* ("relevance label
  'Fair'", "score of 2") must equal the given one (label faithfulness).
* boilerplate: the reasoning must have `min_words` words and cite >= `min_overlap` distinct content words of
  the input (the paper: "must reference concrete details in the input").
* self-consistency: embed the candidates of one input; the medoid (highest mean cosine to the others) is the
  consensus, and a candidate whose cosine to it is < `min_sim` is divergent. Needs >= 3 survivors (with two, no
  majority tells which one diverged), so smaller sets pass unchanged.
* MMR: among survivors pick by lambda * centrality - (1 - lambda) * max cosine to rationales already chosen for
  the same task and label (a rolling memory), so the corpus keeps different valid perspectives (§3.4 diversity)
  instead of the single most typical trace each time.
* cross-input: near-duplicate inputs with the same labels whose chosen rationales have cosine < `min_sim` are
  flagged (provenance `flags`), and dropped only if configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adnanny_cook.errors import ParseError
from adnanny_cook.tasks import TaskSpec

__all__ = ["Candidate", "DROP_REASONS", "boilerplate_reason", "contradiction_reason", "cross_input_flags",
           "keyword_rules", "query_tokens", "repetition_reason", "repetition_share",
           "mmr_select", "schema_parse", "self_consistency", "stated_labels"]

DROP_REASONS = ("schema", "contradiction", "boilerplate", "self_consistency", "verifier", "kw_broader",
                "kw_off_topic", "kw_near_duplicate", "not_chosen", "cross_input", "teacher_error",
                "teacher_rejected")

_STOP = frozenset("""the and for with that this from are was were has have had not but you your they them their its
its our out all any can will would should could about into over under than then there here what when where which
while who whom why how also only just more most some such very each other both same does did done being been
given label labels score appropriate therefore because user users query ad ads description title url input
between these those fits fit match matches step steps""".split())
_WORD = re.compile(r"[a-z0-9$]+(?:[-'][a-z0-9]+)*")


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOP}


@dataclass
class Candidate:
    item_id: str
    sub: int            # which label set of the item (generation tasks may have several)
    idx: int            # candidate index (decoding seed)
    variant: str
    text: str
    key: str
    labels: dict[str, Any]
    reasoning: str | None = None
    drop: str | None = None
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    parsed: dict[str, Any] | None = None   # labels the output's tags carry (set by `schema_parse`)


def schema_parse(spec: TaskSpec, c: Candidate) -> str | None:
    try:
        parsed = spec.parse(c.text, mode="reasoning")
    except ParseError as e:
        c.detail = f"{e.kind}: {e}"
        return "schema"
    c.reasoning = parsed.reasoning
    c.parsed = parsed.labels
    return None


def stated_labels(spec: TaskSpec, reasoning: str) -> dict[str, set[Any]]:
    """Label values the reasoning text itself states, e.g. "relevance label 'Fair'" -> {'label': {'fair'}}."""
    out: dict[str, set[Any]] = {}
    # the phrases come from the task definition (`stated_as`, default: the field's title), longest first so
    # "relevance label" wins over "relevance"
    names = {f: "|".join(re.escape(s) for s in sorted(spec.stated_phrases(f), key=len, reverse=True))
             for f, v in spec.label_fields.items() if v}
    for f, pat in names.items():
        vals = "|".join(re.escape(str(v)) for v in spec.label_fields[f])
        rx = re.compile(rf"\b(?:{pat})\s*(?:of|is|=|:)?\s*['\"“‘(]?\s*({vals})\b", re.IGNORECASE)
        for m in rx.finditer(reasoning):
            try:
                out.setdefault(f, set()).add(spec.check_value(f, m.group(1)))
            except ParseError:
                continue
    return out


def contradiction_reason(spec: TaskSpec, c: Candidate) -> str | None:
    parsed = c.parsed or {}
    for f, v in c.labels.items():
        if parsed.get(f) != v:
            c.detail = f"tag {spec.open_tag(f)} says {parsed.get(f)!r}, supervision says {v!r}"
            return "contradiction"
    for f, vals in stated_labels(spec, c.reasoning or "").items():
        wrong = {v for v in vals if v != c.labels.get(f)}
        if wrong:
            c.detail = f"reasoning states {f}={sorted(map(str, wrong))}, supervision says {c.labels.get(f)!r}"
            return "contradiction"
    return None


def boilerplate_reason(c: Candidate, inp: Mapping[str, Any], min_overlap: int, min_words: int) -> str | None:
    r = c.reasoning or ""
    words = len(r.split())
    overlap = content_words(r) & content_words(" ".join(str(v) for v in inp.values()))
    c.scores["input_overlap"] = float(len(overlap))
    if words < min_words or len(overlap) < min_overlap:
        c.detail = f"{words} words, cites {len(overlap)} input words (need {min_words} / {min_overlap})"
        return "boilerplate"
    return None


def repetition_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that repeat an earlier one (0.0 for texts of fewer than n words)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_reason(c: Candidate, max_share: float, n: int = 3) -> str | None:
    """Drop a trace caught in a repetition loop ("best best best ..."), a failure of small teachers and students:
    more than `max_share` of its word n-grams repeat earlier ones. Why separate from `boilerplate_reason`: a loop
    can still cite enough input words to pass that check."""
    share = repetition_share(c.reasoning or "", n)
    c.scores["repetition"] = share
    if share > max_share:
        c.detail = f"{share:.0%} of its word {n}-grams repeat (max {max_share:.0%})"
        return "repetition"
    return None


def self_consistency(cands: Sequence[Candidate], emb: Any, min_sim: float) -> list[str | None]:
    """Drop reasons for candidates that diverge from the medoid (see module docstring)."""
    import numpy as np

    n = len(cands)
    if n < 3:
        for c in cands:
            c.scores["consistency"] = 1.0
        return [None] * n
    sim = emb @ emb.T                                     # [n, n] cosine (rows are unit vectors)
    mean = (sim.sum(1) - np.diag(sim)) / (n - 1)          # [n]
    medoid = int(np.argmax(mean))
    out: list[str | None] = []
    for i, c in enumerate(cands):
        s = 1.0 if i == medoid else float(sim[i, medoid])
        c.scores["consistency"] = round(s, 4)
        c.scores["centrality"] = round(float(mean[i]), 4)
        if s < min_sim:
            c.detail = f"cosine {s:.2f} to the consensus trace < {min_sim}"
            out.append("self_consistency")
        else:
            out.append(None)
    return out


def mmr_select(cands: Sequence[Candidate], emb: Any, memory: Any, lam: float, n_keep: int) -> list[int]:
    """Indices of the `n_keep` candidates chosen by maximal marginal relevance.

    relevance = centrality (mean cosine to the other survivors, 1.0 when alone); redundancy = max cosine to the
    `memory` rows (rationales already chosen for this task+label) and to candidates picked in this call.
    """
    import numpy as np

    n = len(cands)
    if n == 0:
        return []
    if n == 1:
        rel = np.ones(1, dtype=np.float32)
    else:
        sim = emb @ emb.T
        rel = (sim.sum(1) - np.diag(sim)) / (n - 1)
    chosen: list[int] = []
    mem = memory if memory is not None and len(memory) else np.zeros((0, emb.shape[1]), dtype=np.float32)
    for _ in range(min(n_keep, n)):
        best, best_score = -1, -1e9
        for i in range(n):
            if i in chosen:
                continue
            others = np.concatenate([mem, emb[chosen]]) if chosen else mem
            red = float((others @ emb[i]).max()) if len(others) else 0.0
            score = lam * float(rel[i]) - (1 - lam) * red
            if score > best_score + 1e-9:
                best, best_score = i, score
        cands[best].scores["mmr"] = round(best_score, 4)
        chosen.append(best)
    return chosen


def keyword_rules(keyword: str, queries: Sequence[str], context: str, *, emb_fn: Any = None,
                  off_topic_min_sim: float = 0.25, near_dup_threshold: float = 0.8,
                  seen: list[tuple[frozenset[str], Any]] | None = None) -> list[str | None]:
    """§3.4 keyword-query filters, per query: `kw_broader`, `kw_off_topic`, `kw_near_duplicate` or None.

    broader: not more specific than the keyword (no more content words than it) or sharing none of its words
    while also not similar to it. off-topic: no word shared with keyword/ad/landing page and (with embeddings)
    cosine to that context < `off_topic_min_sim`. near-duplicate: token-set Jaccard >= `near_dup_threshold` (or
    cosine >= 0.95) with an earlier kept query of the same keyword (`seen` carries them across calls).
    """
    kw_words = content_words(keyword) or set(_WORD.findall(keyword.lower()))
    ctx_words = content_words(context) | kw_words
    seen = seen if seen is not None else []
    q_emb = emb_fn(list(queries)) if emb_fn is not None and queries else None
    ctx_emb = emb_fn([f"{keyword}. {context}"])[0] if emb_fn is not None and queries else None
    kw_emb = emb_fn([keyword])[0] if emb_fn is not None and queries else None
    out: list[str | None] = []
    for i, q in enumerate(queries):
        qw = set(_WORD.findall(q.lower())) - _STOP
        qcw = content_words(q)
        sim_ctx = float(q_emb[i] @ ctx_emb) if q_emb is not None else None
        sim_kw = float(q_emb[i] @ kw_emb) if q_emb is not None else None
        if not (qcw & ctx_words) and (sim_ctx is None or sim_ctx < off_topic_min_sim):
            out.append("kw_off_topic")
            continue
        shares_kw = bool(_stems(qw) & _stems(kw_words))
        if len(qcw) <= len(kw_words) or (not shares_kw and (sim_kw is None or sim_kw < 0.5)):
            out.append("kw_broader")
            continue
        tok = query_tokens(q)
        dup = False
        for other, oe in seen:
            j = len(tok & other) / max(1, len(tok | other))
            if j >= near_dup_threshold or (q_emb is not None and oe is not None and float(oe @ q_emb[i]) >= 0.95):
                dup = True
                break
        if dup:
            out.append("kw_near_duplicate")
            continue
        seen.append((tok, q_emb[i] if q_emb is not None else None))
        out.append(None)
    return out


def query_tokens(q: str) -> frozenset[str]:
    """Normalized token set of a query for near-duplicate checks (stopwords out, plural -s stripped)."""
    return frozenset(_stems(set(_WORD.findall(q.lower())) - _STOP))


def _stems(words: set[str]) -> set[str]:
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}


def cross_input_flags(keys: Sequence[str], label_keys: Sequence[str], emb: Any, *, min_sim: float,
                      threshold: float = 0.8) -> list[bool]:
    """True for rationales that conflict with a near-duplicate input's rationale under the same labels (§3.4
    "reasoning for similar inputs should not conflict"): inputs whose keys are near-duplicates (token Jaccard >=
    `threshold`) and whose labels are equal, but whose rationales have cosine < `min_sim`."""
    from adnanny_cook.split import near_duplicate_groups

    gids = near_duplicate_groups(list(keys), threshold=threshold)
    members: dict[tuple[int, str], list[int]] = {}
    for n, (g, lk) in enumerate(zip(gids, label_keys, strict=True)):
        members.setdefault((g, lk), []).append(n)
    out = [False] * len(keys)
    for idx in members.values():
        if len(idx) < 2:
            continue
        sim = emb[idx] @ emb[idx].T                                   # [m, m]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if float(sim[a, b]) < min_sim:
                    out[idx[a]] = out[idx[b]] = True
    return out
