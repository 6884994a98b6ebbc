"""The verifier (§3.4): a second, possibly smaller model judges each surviving trace.

It checks the three aspects the paper lists — faithfulness (the reasoning supports the given label without
contradicting the input), logical soundness, and adherence to the task guidelines — and answers with three
yes/no tags. The answer is parsed strictly; an unparsable verdict counts as a rejection (`verifier`), never as
a silent pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adnanny_cook.errors import MalformedOutputError
from adnanny_cook.tasks import TaskSpec, defang

__all__ = ["VERIFIER_ASPECTS", "parse_verdict", "verifier_messages"]

VERIFIER_ASPECTS = ("Faithful", "Sound", "Guidelines")


def verifier_messages(spec: TaskSpec, inp: Mapping[str, Any], labels: Mapping[str, Any], reasoning: str
                      ) -> list[dict[str, str]]:
    given = "\n".join(f"{f}: {spec.render_value(f, labels[f])}" for f in spec.field_order)
    system = ("You verify reasoning traces written to justify ads labels. Judge three aspects: Faithful = the "
              "reasoning is supported by the input and supports the given labels without contradiction; Sound = "
              "each step follows logically; Guidelines = it follows the task guidelines below.\n"
              f"Task: {spec.description}\nGuidelines: {spec.label_guidelines}\n"
              "Answer exactly: <Faithful>yes|no</Faithful><Sound>yes|no</Sound><Guidelines>yes|no</Guidelines>")
    user = f"{spec.render_input(inp)}\nGiven labels:\n{given}\n\nReasoning to verify:\n{defang(reasoning)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_ITEM = re.compile(r"<(Faithful|Sound|Guidelines)>\s*(yes|no)\s*</\1>", re.IGNORECASE)


def parse_verdict(text: str) -> dict[str, bool]:
    body = text
    if "</think>" in body:
        body = body[body.rfind("</think>") + len("</think>"):]
    found: dict[str, bool] = {}
    for m in _ITEM.finditer(body):
        name = m.group(1).capitalize()
        if name in found:
            raise MalformedOutputError(f"verifier output repeats <{name}>", text=text)
        found[name] = m.group(2).lower() == "yes"
    rest = _ITEM.sub("", body).strip()
    missing = [a for a in VERIFIER_ASPECTS if a not in found]
    if missing or rest:
        raise MalformedOutputError(f"verifier output is not three yes/no tags (missing {missing}, extra "
                                   f"{rest[:60]!r})", text=text)
    return found
