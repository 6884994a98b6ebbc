"""The flow's stages, in order. Each module defines one `Stage` object (see `adnanny.stage`).

`STAGES` is filled by the "stages" modules as they land: name -> Stage, in flow order
(cook, train, align, quantize, label, distill).
"""

from __future__ import annotations

from adnanny.stage import Stage

__all__ = ["STAGE_ORDER", "STAGES"]

STAGE_ORDER: tuple[str, ...] = ("cook", "train", "align", "quantize", "label", "distill")
STAGES: dict[str, Stage] = {}
