"""Forward-only label scores: P(value) of a labeling task's primary field, without generating.

For a label-only prompt the model's answer starts with the primary field's open tag (``<Label>``), so the
distribution of the value that follows is one forward pass over ``prompt + open tag``: the logits at the last
position, read at the first token of each allowed value (``Bad``/``Fair``/``Good``) and renormalised over the
allowed values — the same quantity adnanny-serve's ``score`` reads from generation log-probabilities, computed
here without a decoding loop (teacher-forced on the open tag). ``score = Σ_{v ∉ defect} p_v`` is P(non-defect).

Tokenisation is exact: each candidate is the full text ``rendered prompt + open tag + value`` tokenised as a
whole (as training tokenised it), and the scored position is the first token where the candidates differ;
values whose first differing tokens coincide cannot be told apart and are refused rather than split.

Only the first field of the task's output is scored this way (the tags of earlier fields would have to be
generated first); that is the primary field of every built-in labeling task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adnanny_sft.errors import ConfigError

__all__ = ["ScoringPlan", "plan_scoring", "score_rows", "value_probs"]


class ScoringPlan:
    """Where to read each value's probability for one prompt: context ids and one candidate token per value."""

    def __init__(self, context: list[int], candidates: dict[Any, int]) -> None:
        self.context = context
        self.candidates = candidates


def plan_scoring(tokenizer: Any, spec: Any, field: str, messages: Sequence[Mapping[str, str]]) -> ScoringPlan:
    """The context (prompt + open tag, tokenised jointly) and the candidate token of each allowed value."""
    from adnanny_sft.formatting import _render

    if field not in spec.label_fields:
        raise ConfigError(f"task `{spec.name}` has no label field {field!r}; its fields are {list(spec.label_fields)}.")
    if spec.field_order[0] != field:
        raise ConfigError(f"task `{spec.name}`: field {field!r} is not the first output tag ({spec.field_order[0]!r}); "
                          "forward-only scoring reads the first tag only.")
    prompt = _render(tokenizer, messages, generation_prompt=True)
    values = list(spec.label_fields[field])
    ids = {v: list(tokenizer(prompt + spec.open_tag(field) + spec.render_value(field, v),
                             add_special_tokens=False)["input_ids"]) for v in values}
    seqs = list(ids.values())
    d = 0
    while all(d < len(s) for s in seqs) and len({s[d] for s in seqs}) == 1:
        d += 1
    if any(d >= len(s) for s in seqs):
        raise ConfigError(f"task `{spec.name}` field {field!r}: the values {values} are not distinguishable "
                          "after the open tag (one is a prefix of another).")
    cand = {v: s[d] for v, s in ids.items()}
    if len(set(cand.values())) < len(cand):
        raise ConfigError(f"task `{spec.name}` field {field!r}: two values start with the same token "
                          f"({cand}); their probabilities cannot be read from one position.")
    return ScoringPlan(seqs[0][:d], cand)


def value_probs(model: Any, plans: Sequence[ScoringPlan], *, batch_size: int = 32) -> list[dict[Any, float]]:
    """Per plan, {value: probability renormalised over the allowed values} from one forward pass each."""
    import torch

    if not plans:
        return []
    if hasattr(model, "value_probs"):  # adnanny_sft.backend.BackendScorer: any backend, via token_logprobs
        return model.value_probs(plans, batch_size=batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    decoder = getattr(model, "get_decoder", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    out: list[dict[Any, float]] = []
    try:
        with torch.no_grad():
            order = sorted(range(len(plans)), key=lambda i: len(plans[i].context))
            res: dict[int, dict[Any, float]] = {}
            for k in range(0, len(order), batch_size):
                idx = order[k:k + batch_size]
                ctx = [plans[i].context for i in idx]
                t = max(len(c) for c in ctx)
                ids = torch.zeros((len(ctx), t), dtype=torch.long)
                attn = torch.zeros((len(ctx), t), dtype=torch.long)
                for r, c in enumerate(ctx):
                    ids[r, :len(c)] = torch.tensor(c)
                    attn[r, :len(c)] = 1
                pos = (attn.cumsum(dim=1) - 1).clamp_min(0)
                last = attn.sum(dim=1) - 1
                ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
                if decoder is not None and head is not None:
                    h = decoder(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
                    logits = head(h[torch.arange(len(ctx), device=device), last.to(device)]).float()
                else:
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
                    logits = logits[torch.arange(len(ctx), device=device), last.to(device)].float()
                for r, i in enumerate(idx):
                    vals = list(plans[i].candidates)
                    lp = torch.log_softmax(logits[r, [plans[i].candidates[v] for v in vals]], dim=-1).exp()
                    res[i] = {v: float(p) for v, p in zip(vals, lp.tolist(), strict=True)}
            out = [res[i] for i in range(len(plans))]
    finally:
        model.train(was_training)
    return out


def score_rows(model: Any, tokenizer: Any, spec: Any, inputs: Sequence[Mapping[str, Any]], *,
               field: str | None = None, mode: str = "label", batch_size: int = 32
               ) -> tuple[list[dict[Any, float]], list[float]]:
    """(value distributions, scores = P(non-defect)) of ``field`` (default: the primary field) for task inputs."""
    field = field or spec.primary_field
    if field is None:
        raise ConfigError(f"task `{spec.name}` has no label field with defect values; there is no score to compute.")
    defect = set(spec.defect_values.get(field, ()))
    plans = [plan_scoring(tokenizer, spec, field, spec.render_messages(dict(r), mode)) for r in inputs]
    probs = value_probs(model, plans, batch_size=batch_size)
    scores = [sum(p for v, p in d.items() if v not in defect) for d in probs]
    return probs, scores
