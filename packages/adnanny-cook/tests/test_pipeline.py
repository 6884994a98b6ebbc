"""The cooking pipeline end to end against the scripted teacher on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.cli import main  # noqa: E402
from adnanny_cook.config import CookConfig, load_config  # noqa: E402
from adnanny_cook.corpus import read_corpus  # noqa: E402
from adnanny_cook.errors import AdNannyCookError, BadRowError, ConfigError  # noqa: E402
from adnanny_cook.pipeline import run_cook  # noqa: E402

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "progress": False, "embed_model": "hashing",
        "timeout_s": 5.0}

EXPECTED_REASON = {"malformed": "schema", "contradict": "contradiction", "boilerplate": "boilerplate",
                   "divergent": "self_consistency", "unsound": "verifier"}


@pytest.fixture(scope="module")
def teacher():
    with StubTeacher(k=4, bad_rate=0.5, p429=0.05, p500=0.05) as s:
        yield s


def _cfg(tmp: Path, teacher: StubTeacher, **kw) -> CookConfig:
    return load_config(None, {"task": "query_ad", "base_url": teacher.base_url, "model": "teacher",
                              "out": str(tmp / "out"), **FAST, **kw})


def test_rejection_counts_match_injected_faults(tmp_path: Path, sample_dir: Path) -> None:
    with StubTeacher(k=4, bad_rate=0.5, p429=0.05, p500=0.05) as s:
        cfg = _cfg(tmp_path, s, input=str(sample_dir / "query_ad.parquet"), limit=120, chunk_size=40, k=4,
                   verifier_base_url=s.base_url, verifier_model="verifier")
        m = run_cook(cfg)
        served = Counter(v for v in s.served.values() if v in EXPECTED_REASON)
        drops = m["filters"]["dropped"]
        # every injected bad candidate is dropped by exactly the filter meant to catch it, nothing else is
        assert served and all(served[k] > 0 for k in EXPECTED_REASON)
        for kind, reason in EXPECTED_REASON.items():
            assert drops.get(reason, 0) == served[kind], (kind, drops, served)
        assert drops["not_chosen"] == 120 * 4 - sum(served.values()) - 120   # one kept per input
        assert m["filters"]["inputs_without_survivor"] == 0
        # retries happened and no finished request was sent twice
        assert m["stats"]["teacher"]["retries"] == s.status[429] + s.status[500] - m["stats"]["verifier"]["retries"]
        assert s.repeated_successes() == 0
        # the dropped file lists each candidate with its reason
        lines = [json.loads(x) for x in (tmp_path / "out/dropped.jsonl").read_text().splitlines()]
        assert Counter(x["reason"] for x in lines) == Counter(drops)
        assert all(x["detail"] for x in lines if x["reason"] != "not_chosen")
    df = read_corpus(tmp_path / "out")
    assert df.height == 240 and set(df["mode"]) == {"reasoning", "label"}
    # labels in the corpus are the supervision, never the teacher's contradictions
    src = pl.read_parquet(sample_dir / "query_ad.parquet").head(120)
    want = {r["id"]: r["label"] for r in src.iter_rows(named=True)}
    for r in df.iter_rows(named=True):
        sid = json.loads(r["provenance"])["source_id"]
        assert json.loads(r["labels"])["label"] == want[sid]
    prov = json.loads(df.filter(pl.col("mode") == "reasoning")["provenance"][0])
    assert prov["teacher"] == "teacher" and prov["prompt_id"].startswith("query_ad/")
    assert {"consistency", "input_overlap", "mmr", "verifier_faithful"} <= set(prov["filter_scores"])
    card = json.loads((tmp_path / "out/card.json").read_text())
    assert card["filters"]["dropped"] == drops and card["per_task"] == {"query_ad": 240}


def test_split_is_grouped_by_query_and_rerun_is_cached(tmp_path: Path, sample_dir: Path,
                                                       teacher: StubTeacher) -> None:
    # duplicate queries in the input (same query, different ads) must land on one side of the split
    rows = pl.read_parquet(sample_dir / "query_ad.parquet").head(60)
    dup = rows.head(30).with_columns((pl.col("id") + "-dup").alias("id"),
                                     pl.col("query").str.to_uppercase().alias("query"))
    pl.concat([rows, dup]).write_parquet(tmp_path / "in.parquet")
    cfg = _cfg(tmp_path, teacher, input=str(tmp_path / "in.parquet"), k=2, eval_fraction=0.3, chunk_size=16)
    m1 = run_cook(cfg)
    df = read_corpus(tmp_path / "out")
    q = df.with_columns(pl.col("input").str.json_path_match("$.query").str.to_lowercase().alias("q"))
    assert q.group_by("q").agg(pl.col("split").n_unique().alias("n"))["n"].max() == 1
    assert 0.15 < (df["split"] == "eval").mean() < 0.45
    # a finished job reruns from the response cache without a single call, to the same corpus
    before = sum(teacher.successes.values()) + sum(teacher.status[c] for c in (429, 500))
    shutil.rmtree(tmp_path / "out/.work")
    m2 = run_cook(cfg)
    assert sum(teacher.successes.values()) + sum(teacher.status[c] for c in (429, 500)) == before
    assert m2["stats"]["teacher"]["calls"] == 0 and m2["stats"]["teacher"]["cache_hits"] == m1["stats"]["teacher"]["ok"]
    assert read_corpus(tmp_path / "out").equals(df)


def test_keyword_rules_on_sample_keywords(tmp_path: Path, sample_dir: Path, teacher: StubTeacher) -> None:
    kw = pl.read_parquet(sample_dir / "keywords.parquet").head(80).with_row_index("id").with_columns(
        pl.col("id").cast(pl.String))
    kw.write_parquet(tmp_path / "kw.parquet")
    m = run_cook(_cfg(tmp_path, teacher, task="keyword_query", input=str(tmp_path / "kw.parquet"), k=2))
    dropped = [json.loads(x) for x in (tmp_path / "out/dropped.jsonl").read_text().splitlines()
               if json.loads(x)["stage"] == "keyword_rules"]
    by_id = {r["id"]: r for r in kw.iter_rows(named=True)}
    got = {d["id"]: d["reason"] for d in dropped}
    bad = {r["id"]: r["rule"] for r in kw.iter_rows(named=True) if not r["compliant"]}
    # every non-compliant query is caught; the reason matches the violation for most of them
    assert set(bad) <= set(got)
    agree = sum(got[i] == f"kw_{bad[i]}" for i in bad) / len(bad)
    assert agree >= 0.8
    # and compliant queries survive
    false_drops = [i for i in got if by_id[i]["compliant"]]
    assert len(false_drops) <= 0.05 * sum(by_id[i]["compliant"] for i in by_id)
    assert m["filters"]["dropped"]["kw_broader"] >= 1


def test_keyword_generation_then_reasoning(tmp_path: Path, sample_dir: Path, teacher: StubTeacher) -> None:
    kq = pl.read_parquet(sample_dir / "keyword_query.parquet").unique("keyword", keep="first",
                                                                      maintain_order=True).head(8).drop("query")
    kq.write_parquet(tmp_path / "kq.parquet")
    m = run_cook(_cfg(tmp_path, teacher, task="keyword_query", input=str(tmp_path / "kq.parquet"), k=2,
                      eval_fraction=0.0))
    d = m["filters"]["dropped"]
    # the stub's 7 generated queries per keyword: 4 compliant, a duplicate, a broader one, an off-topic one
    assert d["kw_near_duplicate"] == 8 and d["kw_broader"] == 8 and d["kw_off_topic"] == 8
    df = read_corpus(tmp_path / "out")
    gen = df.filter(pl.col("mode") == "label")
    assert gen.height == 8 * 4 - m["filters"]["inputs_without_survivor"]
    assert all(json.loads(p)["origin"] == "generated" for p in gen["provenance"])


def test_bad_rows_error_or_quarantine(tmp_path: Path, sample_dir: Path, teacher: StubTeacher) -> None:
    rows = pl.read_parquet(sample_dir / "query_ad.parquet").head(12).drop("reasons").to_dicts()
    rows[3]["label"] = "excellent"
    rows[5]["ad_title"] = ""
    rows[7]["location_label"] = None
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, teacher, input=str(path), k=1)
    with pytest.raises(BadRowError, match=r"3 bad row\(s\) in .*in.jsonl") as ei:
        run_cook(cfg)
    msg = str(ei.value)
    assert f"row 3 (id='{rows[3]['id']}'): label column `label` has 'excellent'" in msg
    assert "row 5" in msg and "column `ad_title` (field `ad_title`) is missing or empty" in msg
    assert "row 7" in msg and "`location_label` is missing" in msg
    assert not (tmp_path / "out/corpus.parquet").exists()
    m = run_cook(_cfg(tmp_path, teacher, input=str(path), k=1, on_bad_row="quarantine"))
    rej = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rej] == [3, 5, 7] and m["filters"]["bad_input_rows"] == 3
    assert m["inputs"] == 9
    # column mapping for users' own data; a missing column is named
    pl.DataFrame(rows).rename({"query": "search_terms"}).drop("reasons", strict=False).write_csv(tmp_path / "in.csv")
    with pytest.raises(BadRowError, match=r"no column\(s\) \['query'\].*map them with `columns`"):
        run_cook(_cfg(tmp_path, teacher, input=str(tmp_path / "in.csv"), k=1))
    # (a new `out`: resuming the first folder with another input file and mapping is refused by name)
    with pytest.raises(ConfigError, match="cannot resume .*the input file changed; `columns` changed"):
        run_cook(_cfg(tmp_path, teacher, input=str(tmp_path / "in.csv"), k=1, on_bad_row="quarantine",
                      columns={"query": "search_terms"}))
    m = run_cook(_cfg(tmp_path, teacher, input=str(tmp_path / "in.csv"), k=1, on_bad_row="quarantine",
                      columns={"query": "search_terms"}, out=str(tmp_path / "out2")))
    assert m["inputs"] == 9


def test_config_errors_name_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(None, {"task": "qa", "input": "x", "out": "o", "base_url": "u", "model": "m", "k": 0,
                           "on_bad_row": "skip", "mmr_lambda": 2.0, "executer": "ray"})
    msg = str(ei.value)
    assert msg.startswith("invalid cook config: ") and "\n" not in msg              # one line, every problem
    assert "unknown key `executer` (did you mean `executor`?)" in msg
    with pytest.raises(ConfigError) as ei:
        load_config(None, {"task": "qa", "input": "x", "out": "o", "base_url": "u", "model": "m", "k": 0,
                           "on_bad_row": "skip", "mmr_lambda": 2.0})
    msg = str(ei.value)
    for part in ("`task` must be one of", "`k` must be greater than or equal to 1, got 0", "`on_bad_row` must be "
                 "'error' or 'quarantine', got 'skip'", "`mmr_lambda` must be less than or equal to 1, got 2.0"):
        assert part in msg
    with pytest.raises(ConfigError, match="`k` must be a valid integer, unable to parse string as an integer, "
                                          "got 'many'"):
        load_config(None, {"k": "many"})
    with pytest.raises(ConfigError, match="unknown variant ids \\['nope'\\]"):
        load_config(None, {"task": "query_ad", "input": "x", "out": "o", "base_url": "u", "model": "m",
                           "variants": "steps,nope"})
    (tmp_path / "bad.toml").write_text("task = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_cli_run_with_toml_and_flag_overrides(tmp_path: Path, sample_dir: Path, teacher: StubTeacher,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cook.toml").write_text(
        f'task = "ad_user"\ninput = "{sample_dir / "ad_user.parquet"}"\nout = "{tmp_path / "o"}"\n'
        f'base_url = "{teacher.base_url}"\nmodel = "teacher"\nk = 3\nlimit = 500\nembed_model = "hashing"\n'
        f'progress = false\nbackoff_base_s = 0.01\n')
    assert main(["run", "--config", str(tmp_path / "cook.toml"), "--limit", "20", "--k", "2", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["inputs"] == 20 and m["config"]["k"] == 2 and m["config"]["limit"] == 20
    df = read_corpus(tmp_path / "o")
    assert set(json.loads(x)["label"] for x in df["labels"]) <= {0, 1, 2, 3}
    assert main(["run", "--config", str(tmp_path / "cook.toml"), "--on-bad-row", "drop"]) == 2
    assert "`on_bad_row` must be 'error' or 'quarantine', got 'drop'" in capsys.readouterr().err


def test_golden_validation_report_and_gate(tmp_path: Path, sample_dir: Path) -> None:
    golden = sample_dir / "golden/query_ad.jsonl"
    with StubTeacher(bad_rate=0.0) as good:
        cfg = _cfg(tmp_path, good, input=str(sample_dir / "query_ad.parquet"), golden=str(golden), limit=8, k=2)
        m = run_cook(cfg)
        rep = m["golden_gate"]
        assert rep["passed"] and rep["examples"] == 60
        assert set(rep["variants"]) == {"steps", "rephrased", "reordered", "example"}
        assert all(v["format"] == 1.0 and v["faithful"] == 1.0 for v in rep["variants"].values())
        assert all(0.0 < v["reference_similarity"] <= 1.0 for v in rep["variants"].values())
        assert "PASSED" in (tmp_path / "out/golden_report.md").read_text()
    # a teacher that contradicts or breaks format on every golden example fails the gate before cooking
    with StubTeacher(k=1, bad_rate=1.0, kinds=("contradict", "malformed")) as bad:
        cfg = _cfg(tmp_path / "b", bad, input=str(sample_dir / "query_ad.parquet"), golden=str(golden), limit=8)
        with pytest.raises(AdNannyCookError, match="golden-set gate failed for task `query_ad`"):
            run_cook(cfg)
        rep = json.loads((tmp_path / "b/out/golden_report.json").read_text())
        assert not rep["passed"] and rep["consistency"] == 0.0
        assert any("faithful" in f for f in rep["failures"]) and any("format" in f for f in rep["failures"])
        assert not (tmp_path / "b/out/corpus.parquet").exists()
        assert main(["validate-prompts", "--task", "query_ad", "--golden", str(golden), "--input", str(golden),
                     "--out", str(tmp_path / "v"), "--base-url", bad.base_url, "--model", "teacher",
                     "--embed-model", "hashing", "--progress", "false"]) == 1


def test_two_field_generation_task_ad_rewrite(tmp_path: Path, sample_dir: Path, teacher: StubTeacher) -> None:
    ads = pl.read_parquet(sample_dir / "catalog/ads.parquet").head(6).select(
        "id", pl.col("title").alias("ad_title"), pl.col("description").alias("ad_description"), "landing_page")
    ads.write_parquet(tmp_path / "ads.parquet")
    m = run_cook(_cfg(tmp_path, teacher, task="ad_rewrite", input=str(tmp_path / "ads.parquet"), k=2,
                      boilerplate_min_words=5, eval_fraction=0.0))
    df = read_corpus(tmp_path / "out")
    labels = [json.loads(x) for x in df.filter(pl.col("mode") == "label")["labels"]]
    assert len(labels) == 12 - m["filters"]["inputs_without_survivor"]
    assert all(set(lab) == {"title", "description"} and lab["title"].endswith(("Deals", "Online")) for lab in labels)
