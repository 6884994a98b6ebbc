"""Files by extension, the `id` join (missing/duplicate ids named), atomic writes."""

from __future__ import annotations

import os

import polars as pl
import pytest

from adnanny_eval import InputFileError, JoinError, evaluate_files, join_on_id, read_table
from adnanny_eval.errors import ScoreSourceWarning
from adnanny_eval.io import atomic_write_text


@pytest.fixture
def frames():
    gold = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "label": ["bad", "good", "fair", "bad"],
            "location_label": ["good", "good", "bad", "good"],
        }
    )
    pred = pl.DataFrame(
        {
            "id": ["d", "c", "b", "a"],
            "label": ["bad", "bad", "good", "good"],
            "location_label": ["good", "bad", "good", "bad"],
            "score": [0.1, 0.2, 0.9, 0.6],
        }
    )
    return gold, pred


@pytest.mark.parametrize("ext", [".parquet", ".csv", ".jsonl"])
def test_formats_round_trip_and_join_reorders(tmp_path, frames, ext):
    gold, pred = frames
    writers = {".parquet": "write_parquet", ".csv": "write_csv", ".jsonl": "write_ndjson"}
    gp, pp = tmp_path / f"gold{ext}", tmp_path / f"pred{ext}"
    getattr(gold, writers[ext])(gp)
    getattr(pred, writers[ext])(pp)
    m = evaluate_files(gp, pp, "bad")
    # aligned on id: a bad->good (fn for defect), b good->good, c fair->bad, d bad->bad
    assert (m.counts.tp, m.counts.fn, m.counts.fp, m.counts.tn) == (1, 1, 1, 1)
    assert m.auc == 0.75  # non-defect b (0.9), c (0.2) vs defect a (0.6), d (0.1)
    # the location view reads `location_label` by default; `score` is the label field's score, so AUC is
    # left out with a warning that names it rather than reporting the wrong column's AUC
    with pytest.warns(ScoreSourceWarning, match=r"`score` is P\(non-defect\) of the primary label field"):
        loc = evaluate_files(gp, pp, "location")
    assert loc.n_defect == 1 and loc.counts.tn == 1 and loc.auc is None


def test_int_ids_join_string_ids(tmp_path):
    pl.DataFrame({"id": [1, 2], "label": ["bad", "good"]}).write_csv(tmp_path / "g.csv")
    pl.DataFrame({"id": ["1", "2"], "label": ["bad", "good"]}).write_ndjson(tmp_path / "p.jsonl")
    assert evaluate_files(tmp_path / "g.csv", tmp_path / "p.jsonl", "bad").acc == 1.0


def test_missing_ids_on_both_sides_are_named(frames):
    gold, pred = frames
    gold2 = gold.filter(pl.col("id") != "b").vstack(
        pl.DataFrame({"id": ["zz"], "label": ["bad"], "location_label": ["good"]})
    )
    with pytest.raises(
        JoinError,
        match=r"1 id\(s\) in `gold` but not in `pred`: 'zz'; 1 id\(s\) in `pred` but not in `gold`: 'b'",
    ):
        join_on_id(gold2, pred)


def test_duplicate_ids_are_named(frames):
    gold, pred = frames
    with pytest.raises(JoinError, match=r"`pred` repeats id\(s\) 'd'; each id must appear once"):
        join_on_id(gold, pred.vstack(pred.head(1)))


def test_missing_columns_and_files(tmp_path, frames):
    gold, pred = frames
    with pytest.raises(InputFileError, match=r"`pred` has no column 'quality_label'.*`--pred-col`"):
        join_on_id(gold, pred, gold_col="label", pred_col="quality_label")
    with pytest.raises(InputFileError, match=r"`gold` has no `id` column"):
        join_on_id(gold.drop("id"), pred)
    with pytest.raises(InputFileError, match=r"does not exist"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("id,label\n")
    with pytest.raises(InputFileError, match=r"extension '.txt'; use .parquet, .csv or .jsonl"):
        read_table(tmp_path / "x.txt")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputFileError, match=r"cannot read `.*bad.parquet` as parquet"):
        read_table(tmp_path / "bad.parquet")


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "r.md"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["r.md"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    from adnanny_eval.io import atomic_open

    target = tmp_path / "r.md"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.md"]
