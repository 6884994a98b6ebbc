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

Any task's label field can also be read through the **generic defect view** (`defect_view`, or
``get_view("defect", defect=("bad", "fair"), field="label")``; CLI ``--view defect --defect bad,fair``): the
given values are defects and every other label is a non-defect (or, with ``values=``, every other *listed*
value, so a typo is still an error). It is how other packages evaluate a task they define themselves, and each
built-in view is the generic view of its defect values (the tests check they agree).

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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.errors import MAX_SHOWN, AdNannyEvalError, LabelError, shown

__all__ = [
    "GENERIC_VIEW",
    "VIEWS",
    "VIEW_NAMES",
    "EncodedLabels",
    "View",
    "defect_view",
    "encode_labels",
    "get_view",
    "implicit_score_column",
    "normalize_label",
    "predicted_positive",
    "score_column_conflict",
    "to_positive",
]


@dataclass(frozen=True)
class View:
    """A mapping of normalized labels to non-defect (positive) and defect (negative).

    `rate_name` is what the paper calls the defect rate for this view (``DR`` for query–ad, ``RR`` for
    ad–user); `field` is the task-schema label column the view reads by default (and the key of
    ``label_probs`` it reads P(non-defect) from). `other_positive` marks a generic view built from defect
    values alone: every label outside `negative` (but not a missing one) is a non-defect, because eval does
    not know the task's value set.
    """

    name: str
    negative: frozenset[str]
    positive: frozenset[str]
    rate_name: str = "DR"
    field: str = "label"
    other_positive: bool = False

    def __post_init__(self) -> None:
        overlap = self.negative & self.positive
        if overlap:
            raise AdNannyEvalError(
                f"view `{self.name}`: labels {sorted(overlap)} are both defect and non-defect; "
                "each label must be on exactly one side"
            )
        if not self.negative:
            raise AdNannyEvalError(f"view `{self.name}` has no defect label; give at least one defect value")
        if not self.positive and not self.other_positive:
            raise AdNannyEvalError(
                f"view `{self.name}` has no non-defect label; every label would be a defect"
            )
        if self.rate_name not in ("DR", "RR"):
            raise AdNannyEvalError(
                f"view `{self.name}`: `rate_name` must be 'DR' or 'RR', got {self.rate_name!r}"
            )

    @property
    def known(self) -> tuple[str, ...]:
        """All labels this view accepts, sorted (for error messages and docs)."""
        known = tuple(sorted(self.negative | self.positive))
        return (*known, "(any other label: non-defect)") if self.other_positive else known

    def side(self, label: str | None) -> int:
        """1 non-defect, 0 defect, -1 unknown or missing, for one *normalized* label."""
        if label is None:
            return -1
        if label in self.negative:
            return 0
        if label in self.positive or self.other_positive:
            return 1
        return -1

    @property
    def title(self) -> str:
        """A one-line description for report headings: field, defect values, the rest."""
        rest = "every other label" if self.other_positive else ", ".join(sorted(self.positive))
        return f"`{self.field}`: defect = {', '.join(sorted(self.negative))}; non-defect = {rest}"

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
# The name that selects the generic view (with `defect=` values) in `get_view` and `--view`.
GENERIC_VIEW = "defect"

# Canonical spellings (already normalized) take the fast Enum path; everything else is normalized per
# distinct value.
_CANONICAL: tuple[str, ...] = tuple(sorted(set().union(*(v.negative | v.positive for v in VIEWS.values()))))
_INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")


def _normalized_values(values: Any, what: str) -> tuple[str, ...]:
    """Defect/value lists as normalized labels: ``"bad,fair"``, ``("bad", "fair")`` or ``(0,)``."""
    items = [p for p in values.split(",")] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        norm = normalize_label(item)
        if norm is None or norm == "":
            raise AdNannyEvalError(f"`{what}` has an empty value in {values!r}; list labels like 'bad,fair'")
        if norm not in out:
            out.append(norm)
    if not out:
        raise AdNannyEvalError(f"`{what}` is empty; give at least one label (e.g. 'bad' or 'bad,fair')")
    return tuple(out)


def defect_view(
    defect: str | Sequence[Any],
    *,
    field: str = "label",
    values: str | Sequence[Any] | None = None,
    rate_name: str = "DR",
) -> View:
    """The generic view of any task's label field: `defect` labels are defects, the rest non-defects.

    `defect` is a sequence (``("bad", "fair")``, ``(0,)``) or comma-separated text; values are normalized
    like labels, so ``0``, ``"0"`` and ``0.0`` are one value. Without `values` every other non-missing label
    is a non-defect (eval is standalone and does not know the task's value set); with `values` (the field's
    whole value set) any other label is an error, like a built-in view. `rate_name` is ``DR`` or ``RR``.
    """
    neg = _normalized_values(defect, "defect")
    name = f"{GENERIC_VIEW}:{','.join(neg)}" + ("" if field == "label" else f"@{field}")
    if values is None:
        return View(name, frozenset(neg), frozenset(), rate_name=rate_name, field=field, other_positive=True)
    allowed = _normalized_values(values, "values")
    missing = [d for d in neg if d not in allowed]
    if missing:
        raise AdNannyEvalError(
            f"defect value(s) {missing} are not among `values` {list(allowed)}; list every label of `{field}`"
        )
    return View(name, frozenset(neg), frozenset(allowed) - frozenset(neg), rate_name=rate_name, field=field)


def get_view(
    view: str | View,
    *,
    defect: str | Sequence[Any] | None = None,
    field: str | None = None,
    values: str | Sequence[Any] | None = None,
    rate_name: str | None = None,
) -> View:
    """Return the `View` for a name (``bad``, ``fair``, ``location``, ``quality``, ``ad-user``, ``defect``).

    ``"defect"`` is the generic view and needs `defect` values (see `defect_view`; `values` and `rate_name`
    apply to it only). `field` makes any view read another label field (default: the view's own).
    """
    if isinstance(view, View):
        if defect is not None or values is not None or rate_name is not None:
            raise AdNannyEvalError(
                f"`defect`/`values`/`rate_name` build a generic view; view `{view.name}` is already built"
            )
        return view if field is None or field == view.field else replace(view, field=field)
    key = str(view).strip().lower().replace("_", "-")
    if key == "aduser":
        key = "ad-user"
    if key == GENERIC_VIEW:
        if defect is None:
            raise AdNannyEvalError(
                "view `defect` needs its defect values: pass `defect=('bad', 'fair')` (CLI: --defect bad,fair)"
            )
        return defect_view(defect, field=field or "label", values=values, rate_name=rate_name or "DR")
    if key not in VIEWS:
        raise AdNannyEvalError(
            f"unknown `view` {view!r}; choose one of {', '.join(VIEW_NAMES)}, or `{GENERIC_VIEW}` with "
            "defect values (--view defect --defect bad,fair)"
        )
    if defect is not None or values is not None or rate_name is not None:
        v = VIEWS[key]
        raise AdNannyEvalError(
            f"`defect`/`values`/`rate_name` go with view `{GENERIC_VIEW}`; the built-in view `{v.name}` has "
            f"its own defect values ({', '.join(sorted(v.negative))}) — use `--view defect --defect ...`"
        )
    v = VIEWS[key]
    return v if field is None or field == v.field else replace(v, field=field)


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


def _side_codes(enc: EncodedLabels, v: View) -> np.ndarray:
    """[n] int8 per row: 1 non-defect, 0 defect, -1 unknown or missing (one lookup over the vocab)."""
    lut = np.array([v.side(label) for label in enc.vocab], dtype=np.int8)
    return lut[enc.codes]


def _raise_bad_labels(enc: EncodedLabels, v: View, ids: Any, what: str, *, rows: np.ndarray) -> None:
    """A `LabelError` for `rows` (unknown or missing labels), naming the ids and the labels `v` knows."""
    null_code = enc.vocab.index(None) if None in enc.vocab else -1
    missing = enc.codes[rows] == null_code
    unknown_rows = rows[~missing]
    if len(unknown_rows) == 0:
        raise LabelError(
            f"`{what}` is missing for {len(rows)} row(s) (ids: {format_ids(ids, rows)}); a missing label "
            "cannot be mapped to a side — fill it in (gold labels are never guessed)"
        )
    seen = sorted({str(enc.vocab[c]) for c in np.unique(enc.codes[unknown_rows])})
    extra = f" ({int(missing.sum())} more row(s) have no label at all)" if missing.any() else ""
    raise LabelError(
        f"`{what}` has {len(unknown_rows)} row(s) with label(s) {seen} that view `{v.name}` does not "
        f"know (ids: {format_ids(ids, unknown_rows)}){extra}; known labels: {', '.join(v.known)} "
        "(case and surrounding spaces are ignored) — fix the labels or choose another `view`"
    )


def _encoded(values: Any, ids: Any, what: str) -> EncodedLabels:
    enc = values if isinstance(values, EncodedLabels) else encode_labels(values)
    if ids is not None and len(ids) != len(enc):
        raise AdNannyEvalError(
            f"`ids` has {len(ids)} entries but `{what}` has {len(enc)}; pass one id per label"
        )
    return enc


def to_positive(
    values: Any,
    view: str | View,
    *,
    ids: Sequence[Any] | pl.Series | np.ndarray | None = None,
    what: str = "label",
) -> np.ndarray:
    """Map labels to a boolean array: True = non-defect (positive), False = defect (negative).

    `values` are raw labels or an `EncodedLabels`; `ids` (same length) name offending rows in errors, and
    `what` names the column (e.g. ``pred label``). Raises `LabelError` for unknown or missing labels — use
    this for gold labels; predictions go through `predicted_positive`, where a missing label is a parse error.
    """
    v = get_view(view)
    enc = _encoded(values, ids, what)
    side = _side_codes(enc, v)
    bad_mask = side < 0
    if bad_mask.any():
        _raise_bad_labels(enc, v, ids, what, rows=np.flatnonzero(bad_mask))
    return side.astype(bool)


def predicted_positive(
    values: Any,
    view: str | View,
    *,
    unparsed: Any | None = None,
    ids: Sequence[Any] | pl.Series | np.ndarray | None = None,
    what: str = "pred label",
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels -> (non-defect bool array, unparsed bool array).

    A row is *unparsed* when `unparsed` marks it (the predictions' ``parse_error`` is set) or its label is
    missing; its side in the first array is meaningless (the caller applies the parse-error rule). A label
    that is present, on a parsed row, and unknown to the view is still a `LabelError` naming the ids: that is
    a wrong file or view, not a model that failed to answer.
    """
    v = get_view(view)
    enc = _encoded(values, ids, what)
    side = _side_codes(enc, v)
    null_code = enc.vocab.index(None) if None in enc.vocab else -1
    mask = enc.codes == null_code
    if unparsed is not None:
        extra = np.asarray(unparsed, dtype=bool)
        if extra.shape != mask.shape:
            raise AdNannyEvalError(
                f"`unparsed` has {extra.shape[0]} entries but `{what}` has {mask.shape[0]}; pass one per row"
            )
        mask = mask | extra
    bad_mask = (side < 0) & ~mask
    if bad_mask.any():
        _raise_bad_labels(enc, v, ids, what, rows=np.flatnonzero(bad_mask))
    return side > 0, mask


# The predictions-file contract's score columns: ``score`` is P(non-defect) of the primary field (``label``
# for the built-in tasks) under its task's defect values, ``score_<field>`` the same for another field. The
# built-in tasks' defect values are ``bad`` (query_ad) and ``0`` (ad_user), so those columns describe a view
# exactly when its defect set is within these; a view that also calls one of the contract's non-defect values
# a defect (``fair``: bad + fair) must not read them.
_SCORE_DEFECTS = frozenset({"0", "bad"})
_SCORE_NON_DEFECTS = frozenset({"1", "2", "3", "fair", "good", "other", "others"})
# Label fields of the built-in tasks that are not the primary one (their scores are ``score_<field>``).
_SECONDARY_FIELDS = frozenset({"location_label", "quality_label"})


def implicit_score_column(view: str | View) -> str | None:
    """The predictions column that holds P(non-defect) of exactly this view, or None when no column does.

    ``score`` for a view on ``label`` whose defects are ``bad``/``0`` (the bad and ad-user views);
    ``score_<field>`` likewise on another field (location, quality); None otherwise — the fair view and a
    generic view with other defect values take P(non-defect) from ``label_probs`` only.
    """
    v = get_view(view)
    if not v.negative <= _SCORE_DEFECTS:
        return None
    return "score" if v.field == "label" else f"score_{v.field}"


def score_column_conflict(view: str | View, column: str) -> str | None:
    """Why a named score column cannot be this view's P(non-defect), or None when it may be.

    Only the contract's own columns (``score``, ``score_<field>``) are judged; any other column name is the
    user's and taken as given.
    """
    v = get_view(view)
    if column == "score":
        owner = "label"
        if v.field in _SECONDARY_FIELDS:
            return (
                f"`score` is P(non-defect) of the primary label field, not of `{v.field}`; use "
                f"`score_{v.field}` or `label_probs`"
            )
    elif column.startswith("score_"):
        owner = column[len("score_") :]
        if owner != v.field:
            return (
                f"`{column}` is P(non-defect) of the field `{owner}`, but view `{v.name}` reads `{v.field}`"
            )
    else:
        return None
    if owner == v.field or column == "score":
        clash = sorted(v.negative & _SCORE_NON_DEFECTS)
        if clash:
            return (
                f"`{column}` is P(non-defect) of the bad view (defect = bad / 0), but view `{v.name}` also "
                f"counts {', '.join(clash)} as a defect; its AUC needs P(non-defect) from `label_probs` "
                "(for the fair view: P(good))"
            )
    return None
