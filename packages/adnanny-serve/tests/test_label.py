"""Batch labeling: the predictions-file contract, parse errors flagged, resume after a kill, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.cli import main
from adnanny_serve.errors import ConfigError, LabelError
from adnanny_serve.label import LabelConfig, label_file, predictions_schema

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QA = get_task("query_ad")


@pytest.fixture()
def qa_input(query_ad_rows: pl.DataFrame, tmp_path: Path) -> Path:
    p = tmp_path / "in.parquet"
    query_ad_rows.head(12).select("id", *QA.input_fields).write_parquet(p)
    return p


def _cfg(model: Path, inp: Path, out: Path, **kw) -> LabelConfig:
    base = dict(model=str(model), task="query_ad", input=str(inp), out=str(out), chunk_size=4, progress=False,
                max_tokens=8)
    base.update(kw)
    return LabelConfig(**base)


def test_fp8_tiny_model_labels_sample_set_and_flags_parse_errors(tiny_fp8, tiny_engine, qa_input, tmp_path) -> None:
    out = tmp_path / "pred.parquet"
    stats = label_file(_cfg(tiny_fp8, qa_input, out, mode="reasoning", max_tokens=12), engine=tiny_engine)
    df = pl.read_parquet(out)
    assert df.columns == list(predictions_schema(QA))
    assert df["id"].to_list() == pl.read_parquet(qa_input)["id"].to_list()
    assert stats.rows == 12 and stats.rows_done_now == 12 and stats.chunks_skipped == 0
    # a random-weight model never writes the tags: every row is flagged, no label is invented
    assert df["parse_error"].null_count() == 0 and stats.parse_errors == 12
    for col in ("label", "location_label", "quality_label", "score", "reasoning"):
        assert df[col].null_count() == 12, col
    assert (df["raw"].str.len_chars() > 0).all()
    assert (df["completion_tokens"] == 12).all() and (df["finish_reason"] == "length").all()
    assert (df["prompt_tokens"] > 50).all()
    assert not out.with_name("pred.parquet.parts").exists()


def test_resume_after_kill_does_no_row_twice(tiny_fp8, tiny_engine, qa_input, tmp_path) -> None:
    out = tmp_path / "pred.parquet"
    parts = tmp_path / "pred.parquet.parts"
    seen: list[int] = []

    def kill_after_two(k: int) -> None:
        seen.append(k)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Ctrl-C / a kill between chunks looks like to the loop

    with pytest.raises(KeyboardInterrupt):
        label_file(_cfg(tiny_fp8, qa_input, out), engine=tiny_engine, on_chunk=kill_after_two)
    assert not out.exists()
    assert sorted(p.name for p in parts.glob("chunk-*.parquet")) == ["chunk-000000.parquet", "chunk-000001.parquet"]
    first = pl.concat([pl.read_parquet(p) for p in sorted(parts.glob("chunk-*.parquet"))])
    (parts / ".chunk-000002.parquet.tmp-999").write_bytes(b"torn write")  # a crash mid-write leaves only a temp
    again: list[int] = []
    stats = label_file(_cfg(tiny_fp8, qa_input, out), engine=tiny_engine, on_chunk=again.append)
    assert again == [2]
    assert stats.chunks_skipped == 2 and stats.rows_done_now == 4 and stats.rows == 12
    df = pl.read_parquet(out)
    assert df["id"].to_list() == pl.read_parquet(qa_input)["id"].to_list()
    assert df["id"].n_unique() == 12
    assert df.head(8).equals(first)  # the rows done before the kill were kept, not redone
    assert not parts.exists()


def test_resume_refuses_changed_settings(tiny_fp8, tiny_engine, qa_input, tmp_path) -> None:
    out = tmp_path / "pred.parquet"

    def stop(k: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_file(_cfg(tiny_fp8, qa_input, out), engine=tiny_engine, on_chunk=stop)
    with pytest.raises(LabelError, match=r"different \['chunk_size'\]"):
        label_file(_cfg(tiny_fp8, qa_input, out, chunk_size=5), engine=tiny_engine)
    with pytest.raises(LabelError, match=r"different \['mode'"):
        label_file(_cfg(tiny_fp8, qa_input, out, mode="reasoning"), engine=tiny_engine)


def test_smollm2_follows_tags_with_example_and_scores(smol_dir, smol_engine, query_ad_rows, tmp_path, capsys) -> None:
    inp = tmp_path / "in.parquet"
    query_ad_rows.head(4).select("id", *QA.input_fields).write_parquet(inp)
    out = tmp_path / "pred.parquet"
    stats = label_file(_cfg(smol_dir, inp, out, example=True, chunk_size=8, max_tokens=32), engine=smol_engine)
    df = pl.read_parquet(out)
    ok = df.filter(pl.col("parse_error").is_null())
    assert ok.height >= 3, df.select("raw", "parse_error").to_dicts()
    assert stats.avg_completion_tokens < 40  # label-only: tags alone, stopped at the closing tag
    for r in ok.iter_rows(named=True):
        assert r["raw"].rstrip().endswith("</AdQuality>")
        probs = json.loads(r["label_probs"])
        for f, col in (("label", "score"), ("location_label", "score_location_label"),
                       ("quality_label", "score_quality_label")):
            p = probs[f]
            assert math.isclose(sum(p.values()), 1.0, rel_tol=1e-9)
            assert max(p, key=p.get) == r[f]  # greedy decoding picked the most likely value
            assert r[col] == pytest.approx(sum(v for k, v in p.items() if k not in QA.defect_values[f]))
            assert 0.0 <= r[col] <= 1.0

    # adnanny-eval reads the file as written; it refuses rows without a label (parse failures are never
    # defaulted), so the report covers the parsed rows
    eval_cli = pytest.importorskip("adnanny_eval.cli")
    ok.write_parquet(tmp_path / "ok.parquet")
    gold = query_ad_rows.join(ok.select("id"), on="id", how="semi")
    gold.write_parquet(tmp_path / "gold.parquet")
    capsys.readouterr()
    assert eval_cli.main(["report", "--gold", str(tmp_path / "gold.parquet"), "--pred", str(tmp_path / "ok.parquet"),
                          "--view", "bad", "--json", "--n-resamples", "0"]) == 0
    rep = json.loads(capsys.readouterr().out)
    joined = gold.join(ok, on="id", suffix="_pred")
    want_acc = 100 * float(((joined["label"] == "bad") == (joined["label_pred"] == "bad")).mean())
    assert rep["n"] == ok.height and rep["Acc"] == pytest.approx(want_acc)
    if df["parse_error"].is_not_null().any():
        gold_all = query_ad_rows.join(df.select("id"), on="id", how="semi")
        gold_all.write_parquet(tmp_path / "gold_all.parquet")
        assert eval_cli.main(["report", "--gold", str(tmp_path / "gold_all.parquet"), "--pred", str(out),
                              "--view", "bad", "--n-resamples", "0"]) == 2


def test_input_errors(tiny_fp8, tiny_engine, query_ad_rows, tmp_path) -> None:
    out = tmp_path / "o.parquet"
    nocol = tmp_path / "nocol.parquet"
    query_ad_rows.head(3).select("id", "query").write_parquet(nocol)
    with pytest.raises(LabelError, match=r"lacks the input columns \['ad_title'"):
        label_file(_cfg(tiny_fp8, nocol, out), engine=tiny_engine)
    dup = tmp_path / "dup.parquet"
    pl.concat([query_ad_rows.head(2), query_ad_rows.head(1)]).write_parquet(dup)
    with pytest.raises(LabelError, match=r"row 2: `id` 'q00000-ad5010' appears twice"):
        label_file(_cfg(tiny_fp8, dup, out), engine=tiny_engine)
    with pytest.raises(LabelError, match="does not exist"):
        label_file(_cfg(tiny_fp8, tmp_path / "missing.parquet", out), engine=tiny_engine)
    with pytest.raises(LabelError, match=r"lacks the input columns \['keyword'.*map them with `--columns keyword="):
        label_file(_cfg(tiny_fp8, nocol, out, task="keyword_query"), engine=tiny_engine)
    with pytest.raises(LabelError, match=r"no column `nope` \(mapped to task field `id`\)"):
        label_file(_cfg(tiny_fp8, nocol, out, columns="query=query,id=nope"), engine=tiny_engine)
    noid = tmp_path / "noid.parquet"
    query_ad_rows.head(2).select("query", "ad_title").write_parquet(noid)
    with pytest.raises(LabelError, match=r"has no `id` column; columns are \['query', 'ad_title'\].*--columns id="):
        label_file(_cfg(tiny_fp8, noid, out), engine=tiny_engine)
    with pytest.raises(ConfigError, match=r"invalid label config: `mode` must be 'label' or 'reasoning', got 'think'"):
        LabelConfig(model="m", task="query_ad", input="i", out="o", mode="think")
    assert not out.exists()


def test_corpus_style_input_and_cli(tiny_fp8, sample_dir, tmp_path, capsys) -> None:
    corpus = pl.read_parquet(sample_dir / "corpus" / "corpus.parquet")
    inp = tmp_path / "eval.parquet"
    corpus.filter((pl.col("task") == "ad_user") & (pl.col("split") == "eval")).head(6).write_parquet(inp)
    cfg = tmp_path / "label.toml"
    cfg.write_text(f'model = "{tiny_fp8}"\ntask = "ad_user"\nchunk_size = 4\nmax_tokens = 8\n')
    out = tmp_path / "au.parquet"
    assert main(["label", "--config", str(cfg), "--input", str(inp), "--out", str(out), "--no-progress",
                 "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 6 and stats["rows_done_now"] == 6
    df = pl.read_parquet(out)
    assert df.schema["label"] == pl.Int64 and "score_location_label" not in df.columns
    bad = tmp_path / "bad.toml"
    bad.write_text('chunk_sise = 4\n')
    assert main(["label", "--config", str(bad)]) == 2
    assert "unknown key `chunk_sise` (did you mean `chunk_size`?)" in capsys.readouterr().err

