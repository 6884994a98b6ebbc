from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import adnanny_cook
from adnanny_cook.corpus import CORPUS_COLUMNS, make_row, read_corpus, write_corpus
from adnanny_cook.errors import CorpusSchemaError
from adnanny_cook.sample import make_sample
from adnanny_cook.split import group_key, near_duplicate_groups, split_rows
from adnanny_cook.tasks import get_task


def test_public_api_is_pinned() -> None:
    assert adnanny_cook.__all__ == [
        "CORPUS_COLUMNS", "AdNannyCookError", "BadRowError", "ConfigError", "CookConfig", "CorpusConfig",
        "CorpusSchemaError", "ParseError", "TASK_NAMES", "TaskSpec", "TeacherClient", "TeacherError", "__version__",
        "get_task", "load_task", "load_task_from_dir", "make_row", "make_sample", "read_corpus", "register_task",
        "run_cook", "run_corpus", "write_corpus"]
    assert CORPUS_COLUMNS == ("id", "task", "mode", "messages", "target", "labels", "reasoning", "split",
                              "provenance", "input")


def test_import_is_light() -> None:
    code = ("import adnanny_cook, adnanny_cook.tasks, adnanny_cook.corpus, sys; "
            "heavy = [m for m in ('torch', 'openai', 'polars', 'ray', 'transformers', 'sentence_transformers') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corpus_round_trip_and_validation(tmp_path: Path) -> None:
    inp = {"query": "cheap hotel paris", "ad_title": "Paris hotel", "ad_description": "Rooms from $80.",
           "ad_url": "www.h.com"}
    labels = {"label": "good", "location_label": "good", "quality_label": "good"}
    rows = [make_row(id="a", task="query_ad", mode="reasoning", input=inp, labels=labels,
                     reasoning="Cheap hotel wanted; the ad offers one.", split="train", provenance={"teacher": "t"}),
            make_row(id="b", task="query_ad", mode="label", input=inp, labels=labels, reasoning=None, split="eval")]
    path = write_corpus(rows, tmp_path / "c")
    df = read_corpus(tmp_path / "c")
    assert df.columns == list(CORPUS_COLUMNS) and df.height == 2
    r = df.row(0, named=True)
    assert [m["role"] for m in r["messages"]] == ["system", "user"]
    assert json.loads(r["labels"]) == labels and json.loads(r["input"]) == inp
    assert r["target"].startswith("<think>\nCheap hotel wanted")
    # a row whose target disagrees with its labels is refused, naming the row and column
    bad = df.with_columns(pl.when(pl.col("id") == "b").then(pl.lit('{"label": "bad", "location_label": "good", '
                                                                  '"quality_label": "good"}'))
                          .otherwise(pl.col("labels")).alias("labels"))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CorpusSchemaError, match=r"row 1 \(id='b'\): column `target` says .*'good'.* but `labels`"):
        read_corpus(tmp_path / "bad.parquet")
    df.drop("split").write_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(CorpusSchemaError, match=r"misses corpus columns \['split'\]"):
        read_corpus(tmp_path / "nosplit.parquet")
    df.with_columns(pl.lit("qa").alias("task")).write_parquet(tmp_path / "task.parquet")
    with pytest.raises(CorpusSchemaError, match="column `task`: unknown task"):
        read_corpus(tmp_path / "task.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorpusSchemaError, match="cannot read corpus file .*junk.parquet"):
        read_corpus(tmp_path / "junk.parquet")
    assert path.name == "corpus.parquet" and not list(path.parent.glob(".*.tmp"))


def test_near_duplicate_groups_and_grouped_split() -> None:
    keys = ["cheap hotel paris", "paris hotel cheap", "cheap hotels paris", "laptop deals", "gaming laptop deals",
            "yoga mat"]
    g = near_duplicate_groups([group_key("query_ad", {"query": k}) for k in keys], threshold=0.8)
    assert g[0] == g[1] and g[0] != g[2] and g[3] != g[4] and len(set(g)) == 5
    inputs = [{"query": f"query {i % 50} words {i % 50}"} for i in range(500)]
    split = split_rows(["query_ad"] * 500, inputs, eval_fraction=0.2, seed=1)
    by_q: dict[str, set[str]] = {}
    for i, s in zip(inputs, split, strict=True):
        by_q.setdefault(i["query"], set()).add(s)
    assert all(len(v) == 1 for v in by_q.values())
    assert 0.15 <= split.count("eval") / 500 <= 0.25
    assert split == split_rows(["query_ad"] * 500, inputs, eval_fraction=0.2, seed=1)


def test_sample_world_contents(sample_dir: Path) -> None:
    m = json.loads((sample_dir / "manifest.json").read_text())
    assert m["counts"]["categories"] >= 50 and m["seconds"] < 20
    cb = m["class_balance"]
    assert 0.25 <= cb["query_ad.bad"] <= 0.70          # bad-view defect rate (Table 1 range)
    assert 0.005 <= cb["query_ad.location_bad"] <= 0.04  # location ~2% (Table 3)
    assert 0.05 <= cb["query_ad.quality_bad"] <= 0.15    # quality 5-15% (Table 4)
    assert 0.25 <= cb["ad_user.score0"] <= 0.45          # RR of Datasets G/H
    assert 0.01 <= cb["query_ad.noisy"] <= 0.08
    qa = pl.read_parquet(sample_dir / "query_ad.parquet")
    spec = get_task("query_ad")
    assert set(spec.input_fields) | set(spec.label_fields) <= set(qa.columns)
    # labels follow the stated rules on noise-free rows
    for r in qa.filter(~pl.col("noisy")).head(400).iter_rows(named=True):
        reasons = json.loads(r["reasons"])
        if not reasons["category_match"]:
            assert r["label"] == "bad"
        elif reasons["product_match"] and not (reasons["brand_conflict"] or reasons["price_conflict"]):
            assert r["label"] == "good"
        else:
            assert r["label"] == "fair"
        assert (r["quality_label"] == "bad") == bool(reasons["defects"])
    ads = pl.read_parquet(sample_dir / "catalog/ads.parquet")
    assert ads["brand"].n_unique() > 150 and ads["tier"].n_unique() == 4 and ads["city"].n_unique() > 20
    assert ads.filter(pl.col("quality_label") == "bad")["defects"].str.contains("typo|caps|placeholder").any()
    kw = pl.read_parquet(sample_dir / "keywords.parquet")
    assert set(kw.filter(~pl.col("compliant"))["rule"].unique()) == {"broader", "off_topic", "near_duplicate"}
    logs = pl.read_parquet(sample_dir / "logs/impressions.parquet")
    ctr = {r["relevance"]: r["clicked"] for r in logs.group_by("relevance").agg(pl.col("clicked").mean())
           .iter_rows(named=True)}
    assert ctr["good"] > ctr["fair"] > ctr["bad"]
    assert {"query_brand", "query_price", "query_location", "query_intent"} <= set(logs.columns)


def test_golden_sets_carry_reference_rationales(sample_dir: Path) -> None:
    for task, n in (("query_ad", 60), ("ad_user", 40), ("keyword_query", 40)):
        rows = [json.loads(x) for x in (sample_dir / f"golden/{task}.jsonl").read_text().splitlines()]
        assert len(rows) == n
        spec = get_task(task)
        for r in rows:
            spec.validate_labels(r["labels"])
            assert len(r["reference_reasoning"]) > 40
            if task == "query_ad":
                assert f"relevance label '{r['labels']['label'].capitalize()}'" in r["reference_reasoning"]
            if task == "ad_user":
                assert f"score of {r['labels']['label']}" in r["reference_reasoning"]
        if spec.kind == "label":
            assert len({r["labels"]["label"] for r in rows}) == len(spec.label_fields["label"])


def test_ready_corpus_is_valid_grouped_and_balanced(sample_dir: Path) -> None:
    df = read_corpus(sample_dir / "corpus")
    assert 4000 <= df.filter(pl.col("split") == "train").height and 300 <= df.filter(pl.col("split") == "eval").height
    assert set(df["mode"].unique()) == {"reasoning", "label"}
    qa = df.filter(pl.col("task") == "query_ad")
    queries = qa.with_columns(pl.col("input").str.json_path_match("$.query").alias("q"))
    assert queries.group_by("q").agg(pl.col("split").n_unique().alias("n"))["n"].max() == 1
    labs = qa["labels"].str.json_path_match("$.label").value_counts()
    assert labs.height == 3
    card = json.loads((sample_dir / "corpus/card.json").read_text())
    assert card["rows"] == df.height


def test_sample_is_deterministic(tmp_path: Path, sample_dir: Path) -> None:
    make_sample(tmp_path / "again", seed=0, tokenizer=False)
    for f in ("query_ad.parquet", "golden/query_ad.jsonl", "logs/impressions.parquet"):
        a = (sample_dir / f).read_bytes() if f.endswith("jsonl") else pl.read_parquet(sample_dir / f)
        b = (tmp_path / "again" / f).read_bytes() if f.endswith("jsonl") else pl.read_parquet(tmp_path / "again" / f)
        assert (a == b) if isinstance(a, bytes) else a.equals(b)
    assert read_corpus(sample_dir / "corpus").equals(read_corpus(tmp_path / "again/corpus"))
    other = make_sample(tmp_path / "other", seed=1, tokenizer=False)
    assert pl.read_parquet(tmp_path / "other/query_ad.parquet")["query"].to_list() != \
        pl.read_parquet(sample_dir / "query_ad.parquet")["query"].to_list()
    assert other["seed"] == 1


def _lower_outside_tags(text: str) -> str:
    """What the lowercasing sample tokenizer decodes ``text`` to: tags are added tokens, kept as written."""
    import re

    return re.sub(r"(<[^<>]+>)|([^<]+)", lambda m: m.group(1) or m.group(2).lower(), text)


def test_tokenizer_loads_with_chat_template_and_atomic_tags(sample_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_dir / "tokenizer")
    assert 2000 <= len(tok) <= 8192
    # A word is one id wherever it stands (merges never cross a word boundary): what lets a tiny model match a
    # query's words against the ad's.
    ids = tok("Query: cheap personal loan\nAd description: Shop our cheap personal loan today.")["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words.count("Ġpersonal") == 2 and words.count("Ġloan") == 2 and words.count("Ġcheap") == 2
    # ... in any case: a Title Case ad title and a lower-case query share their ids (the Lowercase normalizer)
    assert tok("Ad title: Air Fryer Pro")["input_ids"][-3:-1] == tok("Query: air fryer")["input_ids"][-2:]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    text = "<think>\nThe user wants a cheap hotel.\n</think>\n<Label>Fair</Label>"
    ids = tok(text)["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    for tag in ("<think>", "</think>", "<Label>", "</Label>"):
        assert toks.count(tag) == 1
    assert tok.decode(ids, skip_special_tokens=True) == _lower_outside_tags(text)  # tags survive decoding, cased
    df = read_corpus(sample_dir / "corpus")
    r = df.row(0, named=True)
    msgs = [*r["messages"], {"role": "assistant", "content": r["target"]}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    masked = [i for i, m in zip(out["input_ids"], mask, strict=True) if m]
    assert tok.decode(masked) == _lower_outside_tags(r["target"]) + "<|im_end|>"
    prompt = tok.apply_chat_template(list(r["messages"]), tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_cli_sample(tmp_path: Path) -> None:
    from adnanny_cook.cli import main

    assert main(["sample", "--out", str(tmp_path / "w"), "--seed", "2", "--no-tokenizer"]) == 0
    assert (tmp_path / "w/corpus/corpus.parquet").exists() and not (tmp_path / "w/tokenizer").exists()
