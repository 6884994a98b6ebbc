"""`label` on users' own files: CSV/JSONL with other column names, token truncation, generation tasks, few-shot
from training rows, the calibrated threshold, tasks from the model dir, and `--model smollm2`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.cli import main
from adnanny_serve.errors import ConfigError, LabelError
from adnanny_serve.label import LabelConfig, label_file
from adnanny_serve.prompting import FewShot, PromptBuilder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QA = get_task("query_ad")
REL = QA.select_labels(("label",))


def _cfg(model: Path, inp: Path, out: Path, **kw) -> LabelConfig:
    base = {"model": str(model), "task": "query_ad", "input": str(inp), "out": str(out), "chunk_size": 4,
            "progress": False, "max_tokens": 8}
    base.update(kw)
    return LabelConfig(**base)


def _manifest(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".manifest.json").read_text())


# ----------------------------------------------------------------------------------------- files and columns
def test_csv_and_jsonl_with_other_column_names_equal_the_parquet_run(tiny_fp8, tiny_engine, query_ad_rows,
                                                                     tmp_path) -> None:
    rows = query_ad_rows.head(6).select("id", *QA.input_fields)
    pq = tmp_path / "in.parquet"
    rows.write_parquet(pq)
    renamed = rows.rename({"id": "row_id", "query": "search_term", "ad_title": "product_title",
                           "ad_description": "product_description", "ad_url": "url"})
    csv = tmp_path / "in.csv"
    renamed.with_columns(pl.lit("E").alias("esci")).write_csv(csv)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in renamed.to_dicts()))
    cols = ("id=row_id,query=search_term,ad_title=product_title,ad_description=product_description,ad_url=url,"
            "label=esci")  # the label mapping is for --few-shot-from; the jsonl has no `esci` and needs none
    ref = tmp_path / "ref.parquet"
    label_file(_cfg(tiny_fp8, pq, ref), engine=tiny_engine)
    for src in (csv, jsonl):
        out = tmp_path / f"{src.suffix[1:]}.parquet"
        label_file(_cfg(tiny_fp8, src, out, columns=cols), engine=tiny_engine)
        got, want = pl.read_parquet(out), pl.read_parquet(ref)
        assert got["id"].to_list() == rows["id"].to_list()
        assert got["raw"].to_list() == want["raw"].to_list()  # same prompts -> same greedy outputs
        assert got["prompt_tokens"].to_list() == want["prompt_tokens"].to_list()
        assert _manifest(out)["columns"]["query"] == "search_term"
    with pytest.raises(LabelError, match=r"no column `titel` \(mapped to task field `ad_title`\)"):
        label_file(_cfg(tiny_fp8, csv, tmp_path / "x.parquet", columns="id=row_id,query=search_term,ad_title=titel"),
                   engine=tiny_engine)


def test_chunks_are_streamed_not_read_whole(tiny_fp8, tiny_engine, query_ad_rows, tmp_path, monkeypatch) -> None:
    """The reader is asked for chunks of `chunk_size` rows and the labeler never holds more than one chunk."""
    from adnanny_cook import inputs

    inp = tmp_path / "in.csv"
    query_ad_rows.head(10).select("id", *QA.input_fields).write_csv(inp)
    asked, sizes = [], []
    real = inputs.iter_rows

    def spy(path, *, columns=None, chunk_rows=1024):
        asked.append(chunk_rows)
        for c in real(path, columns=columns, chunk_rows=chunk_rows):
            sizes.append(len(c))
            yield c

    monkeypatch.setattr(inputs, "iter_rows", spy)
    batches = []
    real_gen = tiny_engine.generate
    monkeypatch.setattr(tiny_engine, "generate", lambda p, params: batches.append(len(p)) or real_gen(p, params))
    label_file(_cfg(tiny_fp8, inp, tmp_path / "o.parquet", chunk_size=3), engine=tiny_engine)
    assert set(asked) == {3} and max(sizes) <= 3
    assert batches == [3, 3, 3, 1]


@pytest.mark.slow
def test_kill_9_mid_run_resumes_without_loss_or_duplicates(tiny_fp8, query_ad_rows, tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    rows = query_ad_rows.head(16).select("id", *QA.input_fields)
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows.to_dicts()))
    out = tmp_path / "o.parquet"
    parts = tmp_path / "o.parquet.parts"
    cmd = [sys.executable, "-m", "adnanny_serve.cli", "label", "--model", str(tiny_fp8), "--task", "query_ad",
           "--input", str(inp), "--out", str(out), "--chunk-size", "1", "--max-tokens", "24", "--no-progress",
           "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("chunk-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed; the test needs more rows"
    done_before = len(list(parts.glob("chunk-*.parquet")))
    assert not out.exists() and 3 <= done_before < 16
    r = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["rows"] == 16 and stats["chunks_skipped"] == done_before
    assert stats["rows_done_now"] == 16 - done_before
    df = pl.read_parquet(out)
    assert df["id"].to_list() == rows["id"].to_list()
    assert not parts.exists()


# ----------------------------------------------------------------------------------------- truncation
def test_truncation_keeps_prompts_within_budget_and_counts_rows(tiny_fp8, tiny_engine, query_ad_rows,
                                                                tmp_path) -> None:
    rows = query_ad_rows.head(8).select("id", *QA.input_fields)
    long_desc = "waterproof breathable trail running jacket with taped seams " * 20
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit(long_desc))
                             .otherwise(pl.col("ad_description")).alias("ad_description"))
    inp = tmp_path / "in.parquet"
    rows.write_parquet(inp)
    full = tmp_path / "full.parquet"
    label_file(_cfg(tiny_fp8, inp, full, max_tokens=2), engine=tiny_engine)
    short_tokens = pl.read_parquet(full).filter(pl.int_range(pl.len()) % 2 == 1)["prompt_tokens"]
    budget = int(short_tokens.max()) + 40
    assert int(pl.read_parquet(full)["prompt_tokens"].max()) > budget + 100  # the long rows really are over
    out = tmp_path / "cut.parquet"
    stats = label_file(_cfg(tiny_fp8, inp, out, max_input_tokens=budget, max_tokens=2), engine=tiny_engine)
    df = pl.read_parquet(out)
    assert (df["prompt_tokens"] <= budget).all(), df["prompt_tokens"].to_list()
    assert df["input_truncated"].to_list() == [True, False] * 4
    assert stats.truncated_rows == 4 and _manifest(out)["truncated_rows"] == 4
    assert _manifest(out)["max_input_tokens"] == budget
    # rows within budget are untouched
    assert df.filter(~pl.col("input_truncated"))["prompt_tokens"].to_list() == short_tokens.to_list()


def test_truncation_cuts_the_longest_field_never_the_instructions(tiny_engine) -> None:
    row = {"id": "r1", "query": "red trail shoes size 42", "ad_title": "Trail running shoes",
           "ad_description": "grippy outsole " * 400, "ad_url": "www.example.com/shoes"}
    b = PromptBuilder(tiny_engine, QA, mode="label", max_input_tokens=300)
    prompt, truncated = b.render(row)
    assert truncated and b.count(prompt) <= 300
    system = QA.render_messages(row, mode="label")[0]["content"]
    assert system in prompt  # instructions and output format whole
    for f in ("query", "ad_title", "ad_url"):
        assert row[f] in prompt, f  # short fields whole
    assert "grippy outsole" in prompt and prompt.count("grippy outsole") < 400
    with pytest.raises(ConfigError, match=r"`max_input_tokens` 50 is smaller than the prompt.*instructions alone"):
        PromptBuilder(tiny_engine, QA, mode="label", max_input_tokens=50).render(row)


# ----------------------------------------------------------------------------------------- generation tasks
def test_generation_tasks_write_their_fields_and_keep_parse_errors(scripted, tmp_path) -> None:
    kq, rw = get_task("keyword_query"), get_task("ad_rewrite")
    inp = tmp_path / "kw.csv"
    pl.DataFrame({"id": ["k1", "k2", "k3"], "keyword": ["running shoes", "hotel paris", "laptop"],
                  "ad_title": ["Shoes", "Hotels", "Laptops"], "ad_description": ["Light", "Rooms", "Fast"],
                  "landing_page": ["a.com", "b.com", "c.com"]}).write_csv(inp)
    answers = {"running shoes": "<Query>lightweight running shoes for beginners</Query>",
               "hotel paris": "cheap hotel paris",  # no tags: a parse error, never coerced into a query
               "laptop": "<Query>gaming laptop under 1000</Query>"}

    def kq_answer(prompt: str) -> str:
        return next(v for k, v in answers.items() if f"Keyword: {k}" in prompt)

    model = tmp_path / "m"
    model.mkdir()
    out = tmp_path / "kq.parquet"
    eng = scripted(kq, kq_answer)
    stats = label_file(_cfg(model, inp, out, task="keyword_query", max_tokens=None), engine=eng)
    df = pl.read_parquet(out)
    assert df["query"].to_list() == ["lightweight running shoes for beginners", None, "gaming laptop under 1000"]
    assert df["parse_error"][1].startswith("MissingTagError") and df["parse_error"].null_count() == 2
    assert stats.parse_errors == 1 and df["score"].null_count() == 3 and "label" not in df.columns

    rw_in = tmp_path / "rw.jsonl"
    rw_in.write_text(json.dumps({"id": "a1", "ad_title": "SHOES!!!", "ad_description": "buy now",
                                 "landing_page": "x.com"}) + "\n" +
                     json.dumps({"id": "a2", "ad_title": "Hotel", "ad_description": "rooms",
                                 "landing_page": "y.com"}) + "\n")

    def rw_answer(prompt: str) -> str:
        if "SHOES" in prompt:
            return "<Title>Comfortable running shoes</Title>\n<Description>Cushioned shoes for daily runs.</Description>"
        return "<Title>Hotel rooms</Title>"  # a missing field is an error, not an empty description

    out2 = tmp_path / "rw.parquet"
    label_file(_cfg(model, rw_in, out2, task="ad_rewrite", max_tokens=None),
               engine=scripted(rw, rw_answer))
    df2 = pl.read_parquet(out2)
    assert df2.select("title", "description").row(0) == ("Comfortable running shoes", "Cushioned shoes for daily runs.")
    assert df2.select("title", "description").row(1) == (None, None)
    assert "misses tags ['<Description>']" in df2["parse_error"][1]
    assert _manifest(out2)["max_tokens"] == 128  # generation tasks get a longer default budget


# ----------------------------------------------------------------------------------------- few-shot
def _train_rows(n_good=90, n_fair=6, n_bad=4) -> list[dict]:
    rows = []
    for lab, n in (("good", n_good), ("fair", n_fair), ("bad", n_bad)):
        for i in range(n):
            rows.append({"id": f"{lab}{i}", "query": f"q {lab} {i}", "ad_title": f"t {lab} {i}",
                         "ad_description": "", "ad_url": "", "label": {"good": "E", "fair": "S", "bad": "I"}[lab]})
    return rows


def _esci(task):
    from dataclasses import replace

    return replace(task, label_map={"label": {"E": "good", "S": "fair", "C": "fair", "I": "bad"}})


def test_few_shot_is_balanced_seeded_and_excludes_the_row(tmp_path) -> None:
    task = _esci(REL)
    few = FewShot.from_rows(task, iter(_train_rows()), k=6, seed=3)
    assert sorted(ex["labels"]["label"] for ex in few.examples) == ["bad", "bad", "fair", "fair", "good", "good"]
    assert few.counts == {"bad": 4, "fair": 6, "good": 90}
    again = FewShot.from_rows(task, iter(_train_rows()), k=6, seed=3)
    assert [e["id"] for e in again.examples] == [e["id"] for e in few.examples]
    other = FewShot.from_rows(task, iter(_train_rows()), k=6, seed=4)
    assert [e["id"] for e in other.examples] != [e["id"] for e in few.examples]
    # the row being labeled never sees its own answer: swapped for a spare of the same value
    own = few.examples[0]["id"]
    shown = few.for_row(own)
    assert own not in [e["id"] for e in shown] and len(shown) == 6
    assert sorted(e["labels"]["label"] for e in shown) == sorted(e["labels"]["label"] for e in few.examples)
    # K not divisible by the values: 7 -> 3/2/2; a value with too few rows gives its share to the others
    k7 = FewShot.from_rows(task, iter(_train_rows()), k=7, seed=0)
    assert sorted(k7.summary()["per_value"].values()) == [2, 2, 3]
    scarce = FewShot.from_rows(task, iter(_train_rows(n_bad=1)), k=9, seed=0)
    assert scarce.summary()["per_value"] == {"bad": 1, "fair": 4, "good": 4}
    with pytest.raises(ConfigError, match=r"row 0 \(id 'x'\): field `label` value 'Z' is not a label"):
        FewShot.from_rows(task, iter([{"id": "x", "query": "q", "ad_title": "t", "label": "Z"}]), k=2)


def test_few_shot_prompts_through_label_file(scripted, tmp_path) -> None:
    from adnanny_cook.tasks.registry import save_task

    task = _esci(REL)
    model = tmp_path / "m"
    save_task(task, model)  # the model dir stores the relevance-only, ESCI-mapped definition
    train = tmp_path / "train.csv"
    pl.DataFrame(_train_rows()).rename({"query": "search_term"}).write_csv(train)
    inp = tmp_path / "in.csv"
    pl.DataFrame(_train_rows(n_good=3, n_fair=0, n_bad=0)).rename({"query": "search_term"}).drop("label") \
        .write_csv(inp)
    eng = scripted(task, lambda p: "<Label>Good</Label>")
    out = tmp_path / "o.parquet"
    label_file(LabelConfig(model=str(model), task="", input=str(inp), out=str(out), few_shot=4, few_shot_from=str(train),
                           columns="query=search_term", progress=False), engine=eng)
    man = _manifest(out)
    per = man["few_shot"]["per_value"]
    assert set(per) == {"bad", "fair", "good"} and sorted(per.values()) == [1, 1, 2]  # 90% good in the file
    assert man["task_source"].endswith("tasks/query_ad.toml") and man["label_fields"] == ["label"]
    ids = man["few_shot"]["ids"]
    for rid, prompt in zip(["good0", "good1", "good2"], eng.prompts):
        answers = re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", prompt, re.DOTALL)
        assert sorted(answers) == sorted(f"<Label>{v.capitalize()}</Label>" for v, n in per.items() for _ in range(n))
        if rid in ids:  # its own row is not among its examples
            assert f"Query: q good {rid[4:]}\n" not in prompt.split("<|im_start|>user")[-2]
    assert "<LocationLabel>" not in eng.prompts[0]
    with pytest.raises(ConfigError, match=r"reasoning mode need a `reasoning` column"):
        label_file(LabelConfig(model=str(model), input=str(inp), out=str(tmp_path / "r.parquet"), few_shot=2,
                               few_shot_from=str(train), columns="query=search_term", mode="reasoning",
                               progress=False), engine=eng)
    with pytest.raises(ConfigError, match=r"`few_shot` needs `few_shot_from`"):
        LabelConfig(model="m", input="i", out="o", few_shot=2)


# ----------------------------------------------------------------------------------------- threshold
def _threshold_setup(tmp_path, scripted, entry: dict | None):
    model = tmp_path / "ft"
    model.mkdir(exist_ok=True)
    if entry is not None:
        (model / "adnanny_model.json").write_text(json.dumps({"tasks": {"query_ad": entry}, "base_model": "x"}))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "query": f"q{i}", "ad_title": f"t{i}"}) + "\n"
                           for i in range(3)))
    # r0: P = bad .35 / fair .45 / good .20 -> greedy "fair", score .65 (between 0.5 and the threshold .7)
    # r1: score .9 -> good either way; r2: score .2 -> bad either way
    dists = {"q0": {"bad": .35, "fair": .45, "good": .20}, "q1": {"bad": .1, "fair": .2, "good": .7},
             "q2": {"bad": .8, "fair": .1, "good": .1}}
    greedy = {"q0": "Fair", "q1": "Good", "q2": "Bad"}

    def which(p):
        return re.findall(r"Query: (q\d)", p)[-1]

    eng = scripted(REL, lambda p: f"<Label>{greedy[which(p)]}</Label>", lambda p: {"label": dists[which(p)]})
    return model, inp, eng


def test_threshold_from_model_manifest_changes_the_label(scripted, tmp_path) -> None:
    entry = {"hash": REL.hash, "field": "label", "defect": ["bad"], "threshold": 0.7,
             "threshold_method": "max_bacc", "val_bacc": 71.0}
    model, inp, eng = _threshold_setup(tmp_path, scripted, entry)
    out = tmp_path / "t.parquet"
    stats = label_file(_cfg(model, inp, out, labels="label"), engine=eng)
    df = pl.read_parquet(out)
    assert df["score"].to_list() == pytest.approx([0.65, 0.9, 0.2])
    assert "Ad description" not in eng.prompts[0]  # absent optional inputs are left out of the prompt
    assert df["label"].to_list() == ["bad", "good", "bad"]  # r0 flipped: .65 < .7
    assert json.loads(df["label_probs"][0])["label"] == pytest.approx({"bad": .35, "fair": .45, "good": .2})
    th = _manifest(out)["threshold"]
    assert th["value"] == 0.7 and th["source"].endswith("adnanny_model.json") and th["method"] == "max_bacc"
    assert stats.threshold == 0.7
    # the same resolution, standalone (adnanny-sft's export test calls it on a config without input/out)
    from adnanny_serve.label import resolve_threshold

    info = resolve_threshold(LabelConfig(model=str(model), task="query_ad"), REL, model)
    assert info["value"] == 0.7 and info["field"] == "label" and info["defect"] == ["bad"]
    with pytest.raises(ConfigError, match=r"`input` is required; `out` is required"):
        label_file(LabelConfig(model=str(model), task="query_ad"), engine=eng)
    greedy = tmp_path / "g.parquet"
    label_file(_cfg(model, inp, greedy, labels="label", no_threshold=True), engine=eng)
    assert pl.read_parquet(greedy)["label"].to_list() == ["fair", "good", "bad"]
    assert _manifest(greedy)["threshold"]["source"] == "disabled (no_threshold)"
    flag = tmp_path / "f.parquet"
    label_file(_cfg(model, inp, flag, labels="label", threshold=0.95), engine=eng)
    assert pl.read_parquet(flag)["label"].to_list() == ["bad", "bad", "bad"]  # .9 < .95 too
    assert _manifest(flag)["threshold"]["source"] == "threshold (flag/config)"


def test_threshold_of_another_task_definition_is_not_applied(scripted, tmp_path, capsys) -> None:
    entry = {"hash": "0" * 64, "field": "label", "defect": ["bad"], "threshold": 0.7}
    model, inp, eng = _threshold_setup(tmp_path, scripted, entry)
    out = tmp_path / "t.parquet"
    label_file(_cfg(model, inp, out, labels="label"), engine=eng)
    assert pl.read_parquet(out)["label"].to_list() == ["fair", "good", "bad"]
    th = _manifest(out)["threshold"]
    assert th["value"] is None and "calibrated on another definition" in th["source"]
    assert "not applied" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- --model smollm2
def test_model_smollm2_resolves_through_ckpt(tiny_fp8, query_ad_rows, tmp_path, monkeypatch, capsys) -> None:
    """Resolution only: the built-in name is routed to a (patched) cache dir; SmolLM2 itself is not loaded."""
    from adnanny_ckpt import gguf

    monkeypatch.setattr(gguf, "smollm2_hf_dir", lambda cache_dir=None: tiny_fp8)
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in.parquet"
    query_ad_rows.head(2).select("id", *QA.input_fields).write_parquet(inp)
    out = tmp_path / "o.parquet"
    assert main(["label", "--model", "smollm2", "--task", "query_ad", "--input", str(inp), "--out", str(out),
                 "--max-tokens", "4", "--no-progress", "--json"]) == 0
    man = _manifest(out)
    assert man["model"] == "smollm2" and man["model_dir"] == str(tiny_fp8.resolve())
    capsys.readouterr()
    assert main(["label", "--model", "gpt-17", "--task", "query_ad", "--input", str(inp), "--out",
                 str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "`model` 'gpt-17' is neither an existing directory" in err and "'smollm2'" in err
    assert main(["quantize", "--model", "gpt-17", "--out", str(tmp_path / "q")]) == 2
    assert "known names" in capsys.readouterr().err


def test_task_file_path_and_labels_selection(tiny_fp8, tiny_engine, query_ad_rows, tmp_path) -> None:
    from adnanny_cook.tasks import task_to_toml

    tf = tmp_path / "rel.toml"
    tf.write_text(task_to_toml(REL))
    inp = tmp_path / "in.parquet"
    query_ad_rows.head(2).select("id", "query", "ad_title").write_parquet(inp)
    out = tmp_path / "o.parquet"
    label_file(_cfg(tiny_fp8, inp, out, task=str(tf)), engine=tiny_engine)
    df = pl.read_parquet(out)
    assert "label" in df.columns and "location_label" not in df.columns and "score_quality_label" not in df.columns
    man = _manifest(out)
    assert man["task_hash"] == REL.hash and man["task_source"] == str(tf)
    out2 = tmp_path / "o2.parquet"
    label_file(_cfg(tiny_fp8, inp, out2, labels="label"), engine=tiny_engine)
    assert _manifest(out2)["task_hash"] == REL.hash
    with pytest.raises(ConfigError, match=r"`labels` \['relevance'\]"):
        label_file(_cfg(tiny_fp8, inp, tmp_path / "o3.parquet", labels="relevance"), engine=tiny_engine)
    with pytest.raises(ConfigError, match=r"`task` is required: the model dir .* stores no task definitions"):
        label_file(_cfg(tiny_fp8, inp, tmp_path / "o4.parquet", task=""), engine=tiny_engine)
