"""Defect views: how raw labels become the binary positive (non-defect) / negative (defect) split of §5.1.

The paper evaluates one three-way query–ad label (*bad / fair / good*) under two business readings and two
binary attributes, and the ad–user label (0–3) as *Bad vs Others*:

=========== ==================== =========================================== ======
view        defect (negative)    non-defect (positive)                       rate
=========== ==================== =========================================== ======
``bad``     bad                  fair, good                                  DR
``fair``    bad, fair            good                                        DR
``location``bad                  good                                        DR
``quality`` bad                  good                                        DR
``ad-user`` 0, bad               1, 2, 3, fair, good, other, others          RR
=========== ==================== =========================================== ======

Labels are normalized before lookup: surrounding white space is stripped, letters are lower-cased, and
integral numbers lose a trailing ``.0`` (CSV readers turn ``1`` into ``1.0``). Anything else — an unknown
string, a missing label — is an error naming the offending ids, never a silent default.

Speed: labels are encoded once per column (a polars ``Enum`` cast for the canonical spellings, a Python pass
over the *distinct* leftovers only), and a view is a lookup table over the codes, so the same encoded column
serves several views (``bad`` and ``fair`` share ``label``) at ~0.1 s per 10M rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.errors import MAX_SHOWN, AdNannyEvalError, LabelError, shown

__all__ = [
    "VIEWS",
    "VIEW_NAMES",
    "EncodedLabels",
    "View",
    "encode_labels",
    "get_view",
    "normalize_label",
    "to_positive",
]


@dataclass(frozen=True)
class View:
    """A mapping of normalized labels to non-defect (positive) and defect (negative).

    `rate_name` is what the paper calls the defect rate for this view (``DR`` for query–ad, ``RR`` for
    ad–user); `field` is the task-schema label column the view reads by default.
    """

    name: str
    negative: frozenset[str]
    positive: frozenset[str]
    rate_name: str = "DR"
    field: str = "label"

    def __post_init__(self) -> None:
        overlap = self.negative & self.positive
        if overlap:
            raise AdNannyEvalError(
                f"view `{self.name}`: labels {sorted(overlap)} are both defect and non-defect; "
                "each label must be on exactly one side"
            )
        if self.rate_name not in ("DR", "RR"):
            raise AdNannyEvalError(
                f"view `{self.name}`: `rate_name` must be 'DR' or 'RR', got {self.rate_name!r}"
            )

    @property
    def known(self) -> tuple[str, ...]:
        """All labels this view accepts, sorted (for error messages and docs)."""
        return tuple(sorted(self.negative | self.positive))

    @property
    def model_rate_name(self) -> str:
        """The paper's column name for the predicted defect rate (``Model DR`` / ``Model RR``)."""
        return f"Model {self.rate_name}"


VIEWS: dict[str, View] = {
    "bad": View("bad", frozenset({"bad"}), frozenset({"fair", "good"})),
    "fair": View("fair", frozenset({"bad", "fair"}), frozenset({"good"})),
    "location": View("location", frozenset({"bad"}), frozenset({"good"}), field="location_label"),
    "quality": View("quality", frozenset({"bad"}), frozenset({"good"}), field="quality_label"),
    "ad-user": View(
        "ad-user",
        frozenset({"0", "bad"}),
        frozenset({"1", "2", "3", "fair", "good", "other", "others"}),
        rate_name="RR",
    ),
}
VIEW_NAMES: tuple[str, ...] = tuple(VIEWS)

# Canonical spellings (already normalized) take the fast Enum path; everything else is normalized per
# distinct value.
_CANONICAL: tuple[str, ...] = tuple(sorted(set().union(*(v.negative | v.positive for v in VIEWS.values()))))
_INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")


def get_view(view: str | View) -> View:
    """Return the `View` for a name (``bad``, ``fair``, ``location``, ``quality``, ``ad-user``)."""
    if isinstance(view, View):
        return view
    key = str(view).strip().lower().replace("_", "-")
    if key == "aduser":
        key = "ad-user"
    if key not in VIEWS:
        raise AdNannyEvalError(f"unknown `view` {view!r}; choose one of {', '.join(VIEW_NAMES)}")
    return VIEWS[key]


def normalize_label(value: Any) -> str | None:
    """Normalize one raw label: strip, lower-case, ``2.0`` -> ``2``; None/NaN -> None (missing).

    Booleans are not labels (a ``True`` could mean either side), so they normalize to their text and are
    then rejected as unknown by every view.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if np.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip().lower()
    match = _INTEGRAL_FLOAT.match(text)
    if match:
        return str(int(match.group(1)))
    return text


@dataclass(frozen=True)
class EncodedLabels:
    """A label column as small integer codes into `vocab` (normalized labels; None = missing).

    Encode a column once and apply several views to it; `to_positive` accepts this or raw values.
    """

    codes: np.ndarray  # [n] uint8 or int32, index into vocab
    vocab: tuple[str | None, ...]

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def _as_series(values: Any) -> pl.Series:
    if isinstance(values, pl.Series):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        return pl.Series("label", values)
    return pl.Series("label", list(values) if not isinstance(values, np.ndarray) else values, strict=False)


def encode_labels(values: Any) -> EncodedLabels:
    """Encode raw labels (polars Series, numpy array or sequence) into codes over normalized labels.

    Canonical spellings go through one vectorized ``Enum`` cast; only the rows that are not already
    canonical are normalized, one Python call per *distinct* raw value.
    """
    series = _as_series(values)
    if series.dtype != pl.String:
        if series.dtype == pl.Boolean:
            series = series.cast(pl.String).str.to_lowercase()
        else:
            series = series.cast(pl.String, strict=False)
    enum = pl.Enum(list(_CANONICAL))
    fast = series.cast(enum, strict=False)
    physical = fast.to_physical()
    if physical.null_count():
        physical = physical.fill_null(len(_CANONICAL))
    codes = physical.to_numpy()  # [n] uint8 (may be a read-only view)
    vocab: list[str | None] = [*_CANONICAL, None]
    # The cast nulls exactly the existing nulls plus the non-canonical spellings; null counts are O(1).
    has_leftover = fast.null_count() > series.null_count()
    if has_leftover:
        leftover_s = fast.is_null() & series.is_not_null()
        rows = np.flatnonzero(leftover_s.to_numpy())
        raw = series.gather(rows)
        distinct = raw.unique(maintain_order=True).to_list()
        index = {label: i for i, label in enumerate(vocab)}
        raw_to_code: dict[str, int] = {}
        for item in distinct:
            norm = normalize_label(item)
            if norm not in index:
                index[norm] = len(vocab)
                vocab.append(norm)
            raw_to_code[item] = index[norm]
        mapped = raw.replace_strict(list(raw_to_code), list(raw_to_code.values()), return_dtype=pl.Int32)
        codes = codes.astype(np.int32)  # writable copy; the vocab may now exceed 255 entries
        codes[rows] = mapped.to_numpy()
    return EncodedLabels(codes=codes, vocab=tuple(vocab))


def format_ids(ids: Any, rows: np.ndarray) -> str:
    """The first ids (or row numbers) of `rows`, for error messages, with a count of the rest."""
    head = rows[:MAX_SHOWN]
    if ids is None:
        return shown([f"row {int(r)}" for r in head], len(rows))
    id_series = ids if isinstance(ids, pl.Series) else pl.Series("id", ids, strict=False)
    return shown([repr(v) for v in id_series.gather(head).to_list()], len(rows))


def to_positive(
    values: Any,
    view: str | View,
    *,
    ids: Sequence[Any] | pl.Series | np.ndarray | None = None,
    what: str = "label",
) -> np.ndarray:
    """Map labels to a boolean array: True = non-defect (positive), False = defect (negative).

    `values` are raw labels or an `EncodedLabels`; `ids` (same length) name offending rows in errors, and
    `what` names the column (e.g. ``pred label``). Raises `LabelError` for unknown or missing labels.
    """
    v = get_view(view)
    enc = values if isinstance(values, EncodedLabels) else encode_labels(values)
    if ids is not None and len(ids) != len(enc):
        raise AdNannyEvalError(
            f"`ids` has {len(ids)} entries but `{what}` has {len(enc)}; pass one id per label"
        )
    lut = np.full(len(enc.vocab), -1, dtype=np.int8)
    for i, label in enumerate(enc.vocab):
        if label in v.positive:
            lut[i] = 1
        elif label in v.negative:
            lut[i] = 0
    side = lut[enc.codes]  # [n] int8: 1 positive, 0 negative, -1 unknown/missing
    bad_mask = side < 0
    if bad_mask.any():
        rows = np.flatnonzero(bad_mask)
        null_code = enc.vocab.index(None) if None in enc.vocab else -1
        missing = enc.codes[rows] == null_code
        unknown_rows = rows[~missing]
        if len(unknown_rows) == 0:
            raise LabelError(
                f"`{what}` is missing for {len(rows)} row(s) (ids: {format_ids(ids, rows)}); rows whose "
                "prediction failed to parse carry no label — drop or re-label them before evaluating"
            )
        seen = sorted({str(enc.vocab[c]) for c in np.unique(enc.codes[unknown_rows])})
        extra = f" ({int(missing.sum())} more row(s) have no label at all)" if missing.any() else ""
        raise LabelError(
            f"`{what}` has {len(unknown_rows)} row(s) with label(s) {seen} that view `{v.name}` does not "
            f"know (ids: {format_ids(ids, unknown_rows)}){extra}; known labels: {', '.join(v.known)} "
            "(case and surrounding spaces are ignored) — fix the labels or choose another `view`"
        )
    return side.astype(bool)
