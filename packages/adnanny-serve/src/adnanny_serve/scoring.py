"""``score`` = P(non-defect) from the label tokens' log-probabilities (the predictions-file contract).

The model writes a label as text between tags (``<Label>Good</Label>``). At the generation step where the
label value starts, the engine returned the log-probabilities of the top-k next tokens. For each allowed
value ``v`` of a field we take the log-probability of the first token of ``v`` written in that context,
renormalize over the allowed values (``p_v = exp(lp_v) / sum_u exp(lp_u)``, a value outside the top-k
counts as probability 0) and sum over the non-defect values (``TaskSpec.defect_values``). So under query_ad's
"Bad defect" view ``score = P(fair) + P(good)``: the continuous score the AUC needs, from the same forward
passes that produced the label.

Limitations (said, not hidden): only the value's first token is scored, so two values sharing a first token
cannot be told apart (we then return None rather than a made-up split; no task has such values today);
and a field whose value step is not found (parse failure) gets None, never a default.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["field_value_probs", "value_token_index"]


def value_token_index(engine: Any, token_ids: list[int], char_pos: int) -> tuple[int, int] | None:
    """(index of the token that covers character ``char_pos`` of the decoded completion, char offset where
    that token starts). Decoded lengths grow with the token count, so a binary search finds it."""
    if not token_ids:
        return None
    tok = engine.tokenizer

    def dec_len(i: int) -> int:
        return len(tok.decode(token_ids[:i], skip_special_tokens=False))

    lo, hi = 0, len(token_ids)  # smallest i with dec_len(i + 1) > char_pos
    if dec_len(hi) <= char_pos:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if dec_len(mid + 1) > char_pos:
            hi = mid
        else:
            lo = mid + 1
    return lo, dec_len(lo)


def field_value_probs(
    engine: Any, task: Any, field: str, text: str, token_ids: list[int], top_logprobs: list[dict[int, float]] | None
) -> dict[Any, float] | None:
    """Distribution over ``task.label_fields[field]`` at the step where the field's value starts in ``text``.

    ``text`` must be the decoded completion of ``token_ids`` (stop strings kept). Returns None when the
    value cannot be located or scored.
    """
    allowed = task.label_fields.get(field) or ()
    if not allowed or top_logprobs is None:
        return None
    open_tag = task.open_tag(field)
    think_end = text.rfind("</think>")
    start = text.find(open_tag, think_end + 1 if think_end >= 0 else 0)
    if start < 0:
        return None
    vpos = start + len(open_tag)
    loc = value_token_index(engine, token_ids, vpos)
    if loc is None or loc[0] >= len(top_logprobs):
        return None
    i = loc[0]
    decoded_prefix = engine.tokenizer.decode(token_ids[:i], skip_special_tokens=False)
    # Text the value's first token would continue from (the token may start before the value, e.g. ">Go").
    lead = text[len(decoded_prefix):vpos] if len(decoded_prefix) <= vpos else ""
    first: dict[Any, int] = {}
    for v in allowed:
        ids = engine.tokenizer(lead + task.render_value(field, v), add_special_tokens=False)["input_ids"]
        if not ids:
            return None
        first[v] = ids[0]
    if len(set(first.values())) < len(first):
        return None
    step = top_logprobs[i]
    lps = {v: step.get(t, -math.inf) for v, t in first.items()}
    m = max(lps.values())
    if not math.isfinite(m):
        return None
    z = sum(math.exp(lp - m) for lp in lps.values())
    return {v: math.exp(lp - m) / z for v, lp in lps.items()}
