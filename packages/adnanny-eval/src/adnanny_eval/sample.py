"""Built-in, seeded sample predictions for the demo report (no other adnanny package needed).

The datasets mirror the paper's shapes — A–F query–ad sets (1.5k / 900 rows, the gold rates of Tables 1–4)
and G–H ad–user sets (2.5k / 1.3k rows, RR of Table 5) — but the rows are synthetic: each model reads a
noisy copy of a latent relevance and thresholds it, the candidate with less noise than the baseline. They
exercise every code path (three-way labels, two binary attributes, ad–user grades with scores, messy label
spelling) and are fully determined by the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["SampleDataset", "make_sample_datasets"]

# name, rows, P(bad), P(bad or fair), P(location bad), P(quality bad), baseline noise, candidate noise
_QUERY_AD = (
    ("Dataset A", 1500, 0.566, 0.952, 0.026, 0.129, 0.62, 0.50),
    ("Dataset B", 1500, 0.266, 0.780, 0.023, 0.052, 0.70, 0.60),
    ("Dataset C", 900, 0.598, 0.948, 0.015, 0.126, 0.80, 0.52),
    ("Dataset D", 900, 0.595, 0.957, 0.018, 0.168, 0.62, 0.52),
    ("Dataset E", 900, 0.693, 0.901, 0.015, 0.036, 0.64, 0.58),
    ("Dataset F", 900, 0.574, 0.911, 0.023, 0.107, 0.76, 0.58),
)
# name, rows, P(grade 0), baseline noise, candidate noise
_AD_USER = (("Dataset G", 2500, 0.316, 0.75, 0.55), ("Dataset H", 1300, 0.418, 0.80, 0.62))


@dataclass(frozen=True)
class SampleDataset:
    """One dataset: gold rows and two prediction files (same ids), plus which views apply."""

    name: str
    kind: str  # "query_ad" | "ad_user"
    gold: pl.DataFrame
    baseline: pl.DataFrame
    candidate: pl.DataFrame


def _messy(labels: np.ndarray, rng: np.random.Generator, share: float = 0.03) -> list[str]:
    """Real gold files mix spellings ("Bad ", "GOOD"); normalization must absorb them."""
    out = labels.astype(object)
    pick = rng.random(labels.shape[0]) < share
    out[pick] = [f" {str(v).upper()} " for v in labels[pick]]
    return out.tolist()


def _binary_pred(latent: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A binary attribute prediction: a noisy read of the attribute's latent, thresholded at 0."""
    seen = latent + rng.normal(0.0, noise * 0.9, latent.shape[0])
    return np.where(seen < 0.0, "bad", "good")


def make_sample_datasets(seed: int = 0) -> list[SampleDataset]:
    """All demo datasets (A–F query–ad, G–H ad–user) from one seed; same seed, same bytes."""
    rng = np.random.default_rng(seed)
    out: list[SampleDataset] = []
    classes = np.array(["bad", "fair", "good"])
    for name, n, p_bad, p_badfair, p_loc, p_qual, s_base, s_cand in _QUERY_AD:
        ids = [f"{name[-1].lower()}-{i:05d}" for i in range(n)]
        u = rng.random(n)
        grade = np.where(u < p_bad, 0, np.where(u < p_badfair, 1, 2))
        # latent relevance: class centre plus spread; models threshold a noisy copy at 0.5 / 1.5
        latent = grade + rng.uniform(-0.5, 0.5, n)
        loc_bad = rng.random(n) < p_loc
        qual_bad = rng.random(n) < p_qual
        loc_latent = np.where(loc_bad, -1.0, 1.0) * rng.gamma(2.0, 0.5, n)
        qual_latent = np.where(qual_bad, -1.0, 1.0) * rng.gamma(2.0, 0.5, n)
        gold = pl.DataFrame(
            {
                "id": ids,
                "label": _messy(classes[grade], rng),
                "location_label": np.where(loc_bad, "bad", "good"),
                "quality_label": np.where(qual_bad, "bad", "good"),
            }
        )
        preds = []
        for noise in (s_base, s_cand):
            seen = latent + rng.normal(0.0, noise, n)
            pred_grade = np.digitize(seen, [0.5, 1.5])
            p_nd = 1.0 / (1.0 + np.exp(-3.0 * (seen - 0.5)))
            preds.append(
                pl.DataFrame(
                    {
                        "id": ids,
                        "label": classes[pred_grade],
                        "location_label": _binary_pred(loc_latent, noise * 0.9, rng),
                        "quality_label": _binary_pred(qual_latent, noise * 1.1, rng),
                        "p_non_defect": np.round(p_nd, 4),
                    }
                )
            )
        out.append(SampleDataset(name, "query_ad", gold, preds[0], preds[1]))
    for name, n, p0, s_base, s_cand in _AD_USER:
        ids = [f"{name[-1].lower()}-{i:05d}" for i in range(n)]
        u = rng.random(n)
        grade = np.where(u < p0, 0, 1 + rng.integers(0, 3, n))
        latent = np.where(grade == 0, -1.0, 1.0) * rng.gamma(2.0, 0.45, n) + (grade - 1.5) * 0.05
        gold = pl.DataFrame({"id": ids, "label": grade})
        preds = []
        for noise in (s_base, s_cand):
            seen = latent + rng.normal(0.0, noise, n)
            pred = np.where(seen < 0.0, 0, np.clip(np.round(1 + seen), 1, 3)).astype(np.int64)
            score = 1.0 / (1.0 + np.exp(-2.5 * seen))
            preds.append(pl.DataFrame({"id": ids, "label": pred, "score": np.round(score, 4)}))
        out.append(SampleDataset(name, "ad_user", gold, preds[0], preds[1]))
    return out
