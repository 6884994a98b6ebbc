"""Golden-set prompt validation (paper §3.3).

Run the task's reasoning prompt and its variations (rephrased question, reordered steps, in-prompt example) on
the golden set and score, per variant:
* format adherence: the output parses strictly (``<think>`` + every tag, well formed);
* label faithfulness: the tags repeat the given labels AND no label stated in the reasoning contradicts them;
* reference agreement (reported, not gated): cosine of the reasoning to the golden reference rationale;
and, per example across variants, consistency: every variant is faithful and the traces agree (mean pairwise
cosine >= `self_consistency_min_sim`). The prompt passes when format >= `gate_format`, faithfulness >=
`gate_faithful` (each variant) and consistency >= `gate_consistency`. The report is JSON + Markdown.

The paper inspects these by hand; we compute the same checks so a gate can run in CI, and keep the report for
the manual look.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from adnanny_cook.config import CookConfig
from adnanny_cook.corpus import atomic_write_bytes
from adnanny_cook.filters import Candidate, contradiction_reason, schema_parse
from adnanny_cook.loaders import load_items

__all__ = ["validate_prompts"]


def validate_prompts(cfg: CookConfig, *, embedder: Any = None, golden: str | None = None) -> dict[str, Any]:
    return asyncio.run(_validate(cfg, embedder, golden or cfg.golden))


async def _validate(cfg: CookConfig, embedder: Any, golden: str) -> dict[str, Any]:
    import numpy as np

    from adnanny_cook.cook import make_clients
    from adnanny_cook.embed import Embedder

    spec = cfg.spec
    embedder = embedder or Embedder(cfg.embed_model)
    items, _ = load_items(golden, cfg.base_spec, on_bad_row="error", labels=list(spec.label_fields))
    refs = {}
    for line in Path(golden).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            refs[str(d.get("id"))] = d.get("reference_reasoning")
    variants = list(cfg.golden_variants) or [v.id for v in spec.reasoning_variants]
    teacher, _ = make_clients(cfg)
    try:
        async def one(it: Any, v: str) -> Candidate:
            msgs = spec.reasoning_messages(it.input, it.labels, variant=v, answer=cfg.teacher_answer)
            params: dict[str, Any] = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                      "max_tokens": cfg.max_tokens, "seed": 0}
            if cfg.stop:
                params["stop"] = list(cfg.stop)
            comp = await teacher.complete(msgs, params=params, variant=f"golden/{v}")
            # the gate judges exactly what a run at scale would keep (the same request, the same assembly)
            text = (spec.assemble_explanation(it.labels, comp.text) if cfg.teacher_answer == "explanation"
                    else comp.text)
            return Candidate(it.id, 0, 0, v, text, comp.key, dict(it.labels))

        cands = await asyncio.gather(*(one(it, v) for it in items for v in variants))
    finally:
        await teacher.aclose()
    per_variant: dict[str, dict[str, Any]] = {v: {"n": 0, "format": 0, "faithful": 0, "ref_sim": []} for v in variants}
    by_item: dict[str, list[Candidate]] = {}
    examples = []
    for c in cands:
        pv = per_variant[c.variant]
        pv["n"] += 1
        fmt = schema_parse(spec, c) is None
        faithful = fmt and contradiction_reason(spec, c) is None
        pv["format"] += fmt
        pv["faithful"] += faithful
        c.scores["ok"] = float(faithful)
        by_item.setdefault(c.item_id, []).append(c)
        if fmt and refs.get(c.item_id):
            e = embedder.encode([c.reasoning or "", refs[c.item_id]])
            pv["ref_sim"].append(float(e[0] @ e[1]))
        if not faithful:
            examples.append({"id": c.item_id, "variant": c.variant, "problem": c.detail, "output": c.text[:400]})
    consistent = 0
    for _iid, cs in by_item.items():
        ok = all(c.scores["ok"] for c in cs)
        if ok and len(cs) > 1:
            e = embedder.encode([c.reasoning or "" for c in cs])
            sim = e @ e.T
            mean = float((sim.sum() - np.trace(sim)) / (len(cs) * (len(cs) - 1)))
            ok = mean >= cfg.self_consistency_min_sim
        consistent += ok
    report_variants = {}
    failures = []
    for v, pv in per_variant.items():
        fr = pv["format"] / max(1, pv["n"])
        fa = pv["faithful"] / max(1, pv["n"])
        report_variants[v] = {"n": pv["n"], "format": round(fr, 4), "faithful": round(fa, 4),
                              "reference_similarity": round(float(np.mean(pv["ref_sim"])), 4) if pv["ref_sim"]
                              else None}
        if fr < cfg.gate_format:
            failures.append(f"variant {v}: format {fr:.1%} < gate_format {cfg.gate_format:.0%}")
        if fa < cfg.gate_faithful:
            failures.append(f"variant {v}: faithful {fa:.1%} < gate_faithful {cfg.gate_faithful:.0%}")
    cons = consistent / max(1, len(by_item))
    if cons < cfg.gate_consistency:
        failures.append(f"consistency {cons:.1%} < gate_consistency {cfg.gate_consistency:.0%}")
    report = {"task": spec.name, "golden": golden, "examples": len(items), "variants": report_variants,
              "consistency": round(cons, 4), "passed": not failures, "failures": failures,
              "gate": {"format": cfg.gate_format, "faithful": cfg.gate_faithful, "consistency": cfg.gate_consistency},
              "teacher_answer": cfg.teacher_answer,
              "problems": examples[:50], "teacher": teacher.stats.as_dict()}
    out = Path(cfg.out)
    atomic_write_bytes(out / "golden_report.json", json.dumps(report, indent=2, sort_keys=True).encode())
    md = [f"# Golden-set prompt validation: {spec.name}", "",
          f"{len(items)} golden examples x {len(variants)} prompt variants. "
          f"**{'PASSED' if report['passed'] else 'FAILED'}**", "",
          "| variant | format | faithful | ref. similarity |", "|---|---|---|---|"]
    for v, r in report_variants.items():
        rs = "-" if r["reference_similarity"] is None else f"{r['reference_similarity']:.2f}"
        md.append(f"| {v} | {r['format']:.1%} | {r['faithful']:.1%} | {rs} |")
    md += ["", f"Consistency across variants: {cons:.1%} (gate {cfg.gate_consistency:.0%})", ""]
    md += [f"- {f}" for f in failures]
    if examples:
        md += ["", "## Problems (first 10)", ""] + [f"- `{e['id']}` / {e['variant']}: {e['problem']}"
                                                    for e in examples[:10]]
    atomic_write_bytes(out / "golden_report.md", ("\n".join(md) + "\n").encode())
    return report
