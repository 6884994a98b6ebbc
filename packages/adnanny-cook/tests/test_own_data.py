"""A user's own file: streamed reading with a column mapping, `adnanny-cook corpus`, and empty-result exits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.cli import main  # noqa: E402
from adnanny_cook.corpus import read_corpus  # noqa: E402
from adnanny_cook.errors import BadRowError, ConfigError  # noqa: E402
from adnanny_cook.inputs import iter_rows, parse_columns  # noqa: E402
from adnanny_cook.tasks import get_task, load_task, load_task_from_dir  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "esci_relevance.toml"
COLS = "query=search_term,product_title=title,product_description=description,label=esci"
FAST = ["--backoff-base-s", "0.01", "--backoff-max-s", "0.05", "--progress", "false", "--embed-model", "hashing",
        "--timeout-s", "5"]


def _esci_csv(path: Path, n: int = 40) -> Path:
    grades = ["E", "S", "C", "I"]
    products = ["running shoes", "laptop stand", "usb cable", "coffee grinder", "desk lamp"]
    lines = ["qid,search_term,title,description,esci"]
    for i in range(n):
        p = products[i % len(products)]
        desc = "" if i % 3 else f"A {p}, model {i}, with free shipping"
        lines.append(f"{i:04d},cheap {p} {i // 5},Brand{i} {p} deluxe,\"{desc}\",{grades[i % 4]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parse_columns_is_the_one_cli_parser() -> None:
    assert parse_columns("query=search_term, label = esci") == {"query": "search_term", "label": "esci"}
    assert parse_columns(None) == {} and parse_columns({"a": "b"}) == {"a": "b"}
    with pytest.raises(ConfigError, match="'query' is not `task_field=file_column`"):
        parse_columns("query,label=esci")
    with pytest.raises(ConfigError, match="task field `query` is mapped twice"):
        parse_columns("query=a,query=b")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_iter_rows_streams_chunks_and_renames_columns(tmp_path: Path, suffix: str) -> None:
    src = pl.DataFrame({"id": [f"{i:03d}" for i in range(2500)], "search_term": [f"q{i}" for i in range(2500)],
                        "query": ["shadowed"] * 2500, "esci": ["E"] * 2500})
    p = tmp_path / f"rows{suffix}"
    {".csv": src.write_csv, ".jsonl": src.write_ndjson, ".parquet": src.write_parquet}[suffix](p)
    chunks = list(iter_rows(p, columns={"query": "search_term", "label": "esci"}, chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    first = chunks[0][0]
    assert first == {"id": "000", "query": "q0", "label": "E"}  # the mapped column replaces the file's `query`
    both = next(iter(iter_rows(p, columns="query=search_term,ad_title=search_term", chunk_rows=2)))
    assert both[1]["query"] == both[1]["ad_title"] == "q1" and "search_term" not in both[1]
    assert chunks[2][-1]["query"] == "q2499"
    with pytest.raises(BadRowError, match=rf"`{p}` has no column `qry` \(mapped to task field `query`\); "
                                          r"its columns are \['id', 'search_term', 'query', 'esci'\]"):
        next(iter_rows(p, columns="query=qry"))


def test_iter_rows_bad_files(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(BadRowError, match="unsupported suffix '.txt'"):
        next(iter_rows(tmp_path / "x.txt"))
    with pytest.raises(BadRowError, match="does not exist"):
        next(iter_rows(tmp_path / "nope.csv"))
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(BadRowError, match="line 2 is not valid JSON"):
        list(iter_rows(tmp_path / "b.jsonl"))


def test_corpus_cli_user_task_with_label_map_and_other_column_names(tmp_path: Path, capsys) -> None:
    csv = _esci_csv(tmp_path / "esci.csv")
    out = tmp_path / "corpus"
    rc = main(["corpus", "--task", str(EXAMPLE), "--input", str(csv), "--out", str(out), "--columns", COLS,
               "--id-column", "qid", "--eval-fraction", "0.25", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    spec = load_task(EXAMPLE)
    assert m["rows"] == 40 and m["tasks"]["esci_relevance"]["hash"] == spec.hash
    assert m["splits"]["eval"] > 0 and m["splits"]["train"] > m["splits"]["eval"]
    df = read_corpus(out)
    assert set(df["mode"]) == {"label"} and set(df["task"]) == {"esci_relevance"}
    by_id = {r["id"]: r for r in df.iter_rows(named=True)}
    # E -> good, S/C -> fair, I -> bad (the label_map), targets carry only <Label>
    assert [json.loads(by_id[f"{i:04d}"]["labels"])["label"] for i in range(4)] == ["good", "fair", "fair", "bad"]
    assert by_id["0000"]["target"] == "<Label>Good</Label>"
    assert "Product description: A running shoes, model 0" in by_id["0000"]["messages"][1]["content"]
    assert "Product description" not in by_id["0001"]["messages"][1]["content"]  # blank: not rendered
    # the same query never straddles the split (split_keys = ["query"])
    q_split: dict[str, set[str]] = {}
    for r in by_id.values():
        q_split.setdefault(json.loads(r["input"])["query"], set()).add(r["split"])
    assert all(len(s) == 1 for s in q_split.values())
    card = json.loads((out / "card.json").read_text())
    assert card["tasks"]["esci_relevance"]["hash"] == spec.hash
    assert json.loads((out / "manifest.json").read_text())["tasks"] == card["tasks"]
    assert load_task_from_dir(out, "esci_relevance").hash == spec.hash
    assert (out / "README.md").exists() and (out / "rejects.jsonl").read_text() == ""


def test_corpus_relevance_only_query_ad_and_own_split_column(tmp_path: Path) -> None:
    rows = pl.DataFrame({"id": [f"r{i}" for i in range(6)], "query": [f"query {i}" for i in range(6)],
                         "ad_title": [f"ad {i}" for i in range(6)], "ad_description": ["", None, "x", "", "", ""],
                         "label": ["good", "fair", "bad", "good", "bad", "fair"],
                         "fold": ["train", "train", "test", "train", "val", "train"]})
    rows.write_parquet(tmp_path / "qa.parquet")
    out = tmp_path / "c"
    assert main(["corpus", "--task", "query_ad", "--input", str(tmp_path / "qa.parquet"), "--out", str(out),
                 "--split-column", "fold"]) == 0
    df = read_corpus(out)
    assert df.height == 6 and set(df.filter(pl.col("split") == "eval")["id"]) == {"r2", "r4"}
    assert set(df["target"]) == {"<Label>Good</Label>", "<Label>Fair</Label>", "<Label>Bad</Label>"}
    assert not any("LocationLabel" in m[0]["content"] for m in df["messages"])
    spec = load_task_from_dir(out, "query_ad")
    assert spec.hash == get_task("query_ad").select_labels(("label",)).hash


def test_corpus_labels_flag_requires_the_chosen_fields(tmp_path: Path, capsys) -> None:
    pl.DataFrame({"query": ["a b", "c d"], "ad_title": ["x", "y"], "label": ["good", "bad"],
                  "location_label": ["good", None]}).write_csv(tmp_path / "qa.csv")
    args = ["corpus", "--task", "query_ad", "--input", str(tmp_path / "qa.csv"), "--out", str(tmp_path / "o")]
    # a file with a location_label column: the dataset has that field, and a row missing it is a bad row
    assert main(args) == 2
    assert "label column `location_label` is missing or empty" in capsys.readouterr().err
    # an exported but empty optional column does not make the dataset carry that field
    pl.DataFrame({"query": ["a b", "c d"], "ad_title": ["x", "y"], "label": ["good", "bad"],
                  "quality_label": [None, ""]}).write_csv(tmp_path / "qa2.csv")
    assert main([*args[:4], str(tmp_path / "qa2.csv"), "--out", str(tmp_path / "o2")]) == 0
    assert list(load_task_from_dir(tmp_path / "o2", "query_ad").label_fields) == ["label"]
    assert main([*args, "--labels", "label"]) == 0
    assert set(read_corpus(tmp_path / "o")["target"]) == {"<Label>Good</Label>", "<Label>Bad</Label>"}
    assert main([*args, "--labels", "quality_label"]) == 2
    assert "label fields ['label'] are required" in capsys.readouterr().err


def test_empty_corpus_exits_non_zero_and_says_why(tmp_path: Path, capsys) -> None:
    pl.DataFrame({"query": ["a", "b"], "ad_title": ["x", "y"], "label": ["awful", "meh"]}).write_csv(
        tmp_path / "bad.csv")
    rc = main(["corpus", "--task", "query_ad", "--input", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"),
               "--on-bad-row", "quarantine"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "warning: empty corpus: all 2 input rows were rejected as bad rows" in err and "rejects.jsonl" in err
    assert len((tmp_path / "o" / "rejects.jsonl").read_text().splitlines()) == 2


def test_run_cooks_a_relevance_only_user_task_and_warns_on_empty(tmp_path: Path, capsys) -> None:
    csv = _esci_csv(tmp_path / "esci.csv", n=8)
    with StubTeacher(k=2, bad_rate=0.0) as s:
        base = ["run", "--task", str(EXAMPLE), "--input", str(csv), "--columns", COLS, "--id-column", "qid",
                "--base-url", s.base_url, "--model", "t", "--k", "2", *FAST]
        assert main([*base, "--out", str(tmp_path / "ok")]) == 0
        df = read_corpus(tmp_path / "ok")
        assert set(df["task"]) == {"esci_relevance"} and set(df["mode"]) == {"reasoning", "label"}
        assert all(t.endswith("</Label>") and "<Label>" in t for t in df["target"])
        m = json.loads((tmp_path / "ok" / "manifest.json").read_text())
        assert m["tasks"]["esci_relevance"]["hash"] == load_task(EXAMPLE).hash and m["warnings"] == []
    capsys.readouterr()
    with StubTeacher(k=2, bad_rate=0.0, p500=1.0) as s:  # every call fails: nothing survives
        rc = main([*base[:-len(FAST)], "--base-url", s.base_url, "--out", str(tmp_path / "empty"),
                   "--max-retries", "0", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "warning: empty corpus: no candidate survived the filters: dropped {'teacher_error': 16}" \
        in err
