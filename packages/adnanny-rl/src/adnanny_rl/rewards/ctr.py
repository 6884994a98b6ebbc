"""Profiles and rewrites → a frozen CTR model, eq. (8).

`CTRModel` is the downstream ranking model: a logistic click model over hashed features of the (context, ad)
pair — ad-text unigrams and bigrams (the creative), context×ad token overlap (relevance), shape cues (share of
capital letters, placeholder brackets, length) and the display position. It is trained ONCE on click logs
(seeded, deterministic), saved as safetensors with a SHA-256 of its parameters, and then frozen: every parameter
has ``requires_grad=False`` and `CTRReward` checks the hash before and after scoring, so RL can never move it.

`CTRReward` scores a generated text by the predicted-CTR uplift over the baseline text:
``uplift = CTR(context, generated) − CTR(context, original)`` for ad rewrites, and
``CTR(profile, ad) − CTR(baseline profile, ad)`` for user profiles (the profile is the context). Against reward
hacking, a rewrite gets no uplift (0, and ``guarded`` = 1 in the components) unless it stays about its ad — its
embedding cosine to the original ≥ `min_similarity` — and its length is within [`min_len_ratio`,
`max_len_ratio`] of the original's. Completions that do not parse get `format_penalty`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adnanny_rl.errors import RewardError, RLConfigError
from adnanny_rl.rewards.base import RewardOutput

__all__ = ["CTRModel", "CTRReward", "CTRSettings", "hashed_cosine"]

_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _bucket(s: str, n: int) -> int:
    return zlib.crc32(s.encode()) % n          # stable across processes (unlike hash())


@dataclass(frozen=True)
class CTRSettings:
    buckets: int = 4096
    epochs: int = 8
    lr: float = 0.1
    l2: float = 1e-4
    seed: int = 0


class CTRModel:
    """A frozen logistic click model; build with `fit`, persist with `save`/`load`."""

    N_DENSE = 6

    def __init__(self, settings: CTRSettings, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> None:
        self.settings = settings
        n = settings.buckets + self.N_DENSE
        self.weight = (weight if weight is not None else torch.zeros(n)).detach().clone().requires_grad_(False)
        self.bias = (bias if bias is not None else torch.zeros(())).detach().clone().requires_grad_(False)

    # ---------------------------------------------------------------- features
    def features(self, context: str, ad_text: str, position: int = 1) -> tuple[list[int], list[float]]:
        """Sparse hashed indices (value 1 each, de-duplicated) and the dense cues."""
        ad = _tokens(ad_text)
        ctx = set(_tokens(context))
        grams = set(ad) | {f"{a}_{b}" for a, b in zip(ad, ad[1:], strict=False)}
        idx = sorted({_bucket("a:" + g, self.settings.buckets) for g in grams})
        letters = [c for c in ad_text if c.isalpha()]
        caps = sum(c.isupper() for c in letters) / max(len(letters), 1)
        overlap = len(ctx & set(ad)) / max(len(ctx), 1)
        dense = [overlap, float(bool(ctx & set(ad))), caps, float("[" in ad_text or "{" in ad_text),
                 math.log1p(len(ad)) / 5.0, 1.0 / max(position, 1)]
        return idx, dense

    def _design(self, pairs: Sequence[tuple[str, str, int]]) -> torch.Tensor:
        """Sparse ``[B, buckets + N_DENSE]`` design matrix (COO): hashed n-grams scaled by 1/sqrt(count), then the
        dense cues. Sparse because click logs are tens of thousands of rows over thousands of buckets."""
        n = self.settings.buckets
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for i, (c, a, p) in enumerate(pairs):
            idx, dense = self.features(c, a, p)
            w = 1.0 / math.sqrt(len(idx)) if idx else 0.0
            rows += [i] * (len(idx) + self.N_DENSE)
            cols += idx + list(range(n, n + self.N_DENSE))
            vals += [w] * len(idx) + dense
        return torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long), torch.tensor(vals),
                                       (len(pairs), n + self.N_DENSE), check_invariants=True).coalesce()

    @torch.no_grad()
    def predict(self, contexts: Sequence[str], ad_texts: Sequence[str], positions: Sequence[int] | None = None
                ) -> list[float]:
        """P(click) for each (context, ad text) pair at `positions` (default 1: the top slot)."""
        pos = positions or [1] * len(contexts)
        x = self._design(list(zip(contexts, ad_texts, pos, strict=True)))
        return torch.sigmoid(torch.sparse.mm(x, self.weight[:, None])[:, 0] + self.bias).tolist()

    # ---------------------------------------------------------------- training (once) and persistence
    @classmethod
    def fit(cls, contexts: Sequence[str], ad_texts: Sequence[str], clicked: Sequence[bool],
            positions: Sequence[int] | None = None, settings: CTRSettings | None = None) -> CTRModel:
        """Full-batch L2-regularised logistic regression (Adam, fixed epochs, seeded): deterministic."""
        s = settings or CTRSettings()
        if not len(contexts) == len(ad_texts) == len(clicked) or not contexts:
            raise RLConfigError("`contexts`, `ad_texts` and `clicked` must be non-empty and of one length")
        if not any(clicked) or all(clicked):
            raise RLConfigError("click logs need both clicked and unclicked impressions to fit a CTR model")
        torch.manual_seed(s.seed)
        m = cls(s)
        x = m._design(list(zip(contexts, ad_texts, positions or [1] * len(contexts), strict=True)))
        y = torch.tensor([float(c) for c in clicked])
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.full((), math.log(y.mean() / (1 - y.mean())), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=s.lr)
        for _ in range(s.epochs * 10):
            opt.zero_grad()
            logits = torch.sparse.mm(x, w[:, None])[:, 0] + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + s.l2 * (w * w).sum()
            loss.backward()
            opt.step()
        return cls(s, w, b)

    def param_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.weight.numpy().tobytes())
        h.update(self.bias.numpy().tobytes())
        return h.hexdigest()

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.reshape(1)}, str(d / "ctr.safetensors"))
        (d / "ctr.json").write_text(json.dumps({"settings": asdict(self.settings), "sha256": self.param_hash()},
                                               indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> CTRModel:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "ctr.json").read_text())
        t = load_file(str(d / "ctr.safetensors"))
        m = cls(CTRSettings(**meta["settings"]), t["weight"], t["bias"].reshape(()))
        if m.param_hash() != meta["sha256"]:
            raise RewardError(f"`{d / 'ctr.safetensors'}` does not match the SHA-256 in ctr.json")
        return m


def hashed_cosine(a: str, b: str, buckets: int = 2048) -> float:
    """Cosine of hashed bag-of-words vectors: a cheap, dependency-free similarity for the topic guard."""
    va: dict[int, float] = {}
    vb: dict[int, float] = {}
    for t in _tokens(a):
        va[_bucket(t, buckets)] = va.get(_bucket(t, buckets), 0.0) + 1.0
    for t in _tokens(b):
        vb[_bucket(t, buckets)] = vb.get(_bucket(t, buckets), 0.0) + 1.0
    dot = sum(v * vb.get(k, 0.0) for k, v in va.items())
    na = math.sqrt(sum(v * v for v in va.values()))
    nb = math.sqrt(sum(v * v for v in vb.values()))
    return dot / (na * nb) if na and nb else 0.0


class CTRReward:
    """Predicted-CTR uplift of a generated rewrite (`target="ad"`) or profile (`target="context"`).

    For `target="ad"` each row needs the original creative (`ad_title`, `ad_description`) and optionally a
    `context` (a query the ad is shown for); the completion is parsed with the task's generation parser into
    title + description. For `target="context"` each row needs `ad_text` (an ad the user later clicked) and
    `baseline_context` (e.g. the raw history); the parsed profile replaces it as the context.
    """

    def __init__(self, spec: Any, model: CTRModel, *, target: str = "ad", min_similarity: float = 0.3,
                 min_len_ratio: float = 0.5, max_len_ratio: float = 2.0, format_penalty: float = -0.1,
                 similarity: Callable[[str, str], float] = hashed_cosine, scale: float = 1.0) -> None:
        if target not in ("ad", "context"):
            raise RLConfigError(f"`target` must be 'ad' or 'context', got {target!r}")
        if not 0 < min_len_ratio <= 1 <= max_len_ratio:
            raise RLConfigError(f"need 0 < `min_len_ratio` <= 1 <= `max_len_ratio`, got {min_len_ratio}, "
                                f"{max_len_ratio}")
        self.spec, self.model, self.target = spec, model, target
        self.min_similarity, self.min_len, self.max_len = min_similarity, min_len_ratio, max_len_ratio
        self.format_penalty, self.similarity, self.scale = format_penalty, similarity, scale
        self.frozen_hash = model.param_hash()
        self.name = f"ctr:{target}"

    def _parse(self, text: str) -> str | None:
        from adnanny_cook.errors import ParseError

        try:
            items = self.spec.parse_generation_items(text)
        except ParseError:
            return None
        return " ".join(items[0].values())

    def __call__(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *, group_size: int = 1
                 ) -> RewardOutput:
        gen = [self._parse(t) for t in completions]
        base_pairs: list[tuple[str, str]] = []
        new_pairs: list[tuple[str, str]] = []
        guarded: list[float] = []
        for i, (row, g) in enumerate(zip(rows, gen, strict=True)):
            try:
                if self.target == "ad":
                    original = f"{row['ad_title']} {row.get('ad_description') or ''}".strip()
                    ctx = str(row.get("context") or "")
                    new = g or original
                    pair_base, pair_new = (ctx, original), (ctx, new)
                    ratio = len(_tokens(new)) / max(len(_tokens(original)), 1)
                    ok = (g is not None and self.similarity(new, original) >= self.min_similarity
                          and self.min_len <= ratio <= self.max_len)
                else:
                    base = str(row["baseline_context"])
                    pair_base, pair_new = (base, str(row["ad_text"])), (g or base, str(row["ad_text"]))
                    ok = g is not None
            except KeyError as e:
                raise RewardError(f"task `{self.spec.name}`: row {i} lacks {e} needed by the CTR reward") from None
            base_pairs.append(pair_base)
            new_pairs.append(pair_new)
            guarded.append(0.0 if ok else 1.0)
        p_base = self.model.predict([c for c, _ in base_pairs], [a for _, a in base_pairs])
        p_new = self.model.predict([c for c, _ in new_pairs], [a for _, a in new_pairs])
        if self.model.param_hash() != self.frozen_hash:
            raise RewardError("the frozen CTR model's parameters changed during RL")
        uplift = [(pn - pb) if not gd else 0.0 for pn, pb, gd in zip(p_new, p_base, guarded, strict=True)]
        total = [self.scale * u + (0.0 if g is not None else self.format_penalty) for u, g in zip(uplift, gen,
                                                                                               strict=True)]
        return RewardOutput(total=total, components={"ctr_uplift": uplift, "guarded": guarded,
                                                     "parsed": [float(g is not None) for g in gen]})
