"""Tasks as data: TOML task files, the built-ins loaded through the same loader, label selection and maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adnanny_cook.corpus import make_row, read_corpus, write_corpus
from adnanny_cook.errors import ConfigError, InvalidLabelError, MissingTagError, TaskDefinitionError
from adnanny_cook.filters import stated_labels
from adnanny_cook.split import group_key, split_rows
from adnanny_cook.tasks import (TASK_NAMES, get_task, load_task, load_task_from_dir, register_task, save_task,
                                task_names, task_to_toml)
from adnanny_cook.tasks.registry import _REGISTRY

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "esci_relevance.toml"
QA_ROW = {"query": "cheap hotel in downtown Paris", "ad_title": "Luxury 5-star hotel in central Paris",
          "ad_description": "Premium suites and fine dining.", "ad_url": "www.examplehotel.com"}


def test_builtin_tasks_are_toml_files_loaded_by_the_user_loader() -> None:
    import adnanny_cook.tasks

    folder = Path(adnanny_cook.tasks.__file__).parent / "builtin"
    assert sorted(p.stem for p in folder.glob("*.toml")) == sorted(TASK_NAMES)
    for name in TASK_NAMES:
        from_file = load_task(folder / f"{name}.toml")
        assert from_file.hash == get_task(name).hash
        assert from_file.render_messages({f: "x" for f in from_file.input_fields}) == \
            get_task(name).render_messages({f: "x" for f in from_file.input_fields})


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_to_toml_round_trips_with_the_same_hash(name: str, tmp_path: Path) -> None:
    spec = get_task(name)
    p = tmp_path / f"{name}.toml"
    p.write_text(task_to_toml(spec))
    again = load_task(p)
    assert again.hash == spec.hash and again.to_dict() == spec.to_dict()
    row = {f: f"value of {f}" for f in spec.input_fields}
    labels = {f: (v[0] if v else "some text") for f, v in spec.label_fields.items()}
    assert again.render_messages(row, "label", example=True) == spec.render_messages(row, "label", example=True)
    for i in range(len(spec.reasoning_variants)):
        assert again.reasoning_messages(row, labels, i) == spec.reasoning_messages(row, labels, i)


def test_builtin_per_task_tables_come_from_the_definitions() -> None:
    qa, au = get_task("query_ad"), get_task("ad_user")
    assert qa.optional_inputs == ("ad_description", "ad_url") and qa.required_inputs == ("query", "ad_title")
    assert qa.optional_labels == ("location_label", "quality_label") and qa.primary_field == "label"
    assert au.optional_inputs == ("ad_description",) and au.primary_field == "label"
    assert get_task("keyword_query").primary_field is None
    assert get_task("pairwise_judgment").primary_field == "preference"
    assert {n: get_task(n).split_keys for n in TASK_NAMES}["ad_user"] == ("user_history",)
    # split grouping follows split_keys; stated-label detection follows stated_as
    assert group_key("query_ad", {"query": "Paris cheap hotel", "ad_title": "zzz"}) == "cheap hotel paris"
    assert stated_labels(qa, "so the relevance label 'Fair' and ad quality label: bad") == \
        {"label": {"fair"}, "quality_label": {"bad"}}
    assert stated_labels(au, "a relevance score of 2") == {"label": {2}}


def test_relevance_only_query_ad_renders_only_the_label_tag() -> None:
    rel = get_task("query_ad").select_labels(("label",))
    assert rel.name == "query_ad" and rel.hash != get_task("query_ad").hash
    assert list(rel.label_fields) == ["label"] and rel.label_stop == ("</Label>",)
    system = rel.render_messages(QA_ROW, "label", example=True)[0]["content"]
    assert "<Label>Bad|Fair|Good</Label>" in system
    assert "LocationLabel" not in system and "AdQuality" not in system
    assert rel.format_target({"label": "good"}, None) == "<Label>Good</Label>"
    assert rel.parse("<Label>Fair</Label>").labels == {"label": "fair"}
    cook = rel.reasoning_messages(QA_ROW, {"label": "fair"}, "steps")[1]["content"]
    assert "Given relevance label: Fair" in cook and "location label:" not in cook.lower()
    with pytest.raises(ConfigError, match=r"label fields \['label'\] are required"):
        get_task("query_ad").select_labels(("location_label",))
    with pytest.raises(ConfigError, match=r"no label fields \['stars'\]"):
        get_task("query_ad").select_labels(("label", "stars"))


def test_make_row_accepts_relevance_only_labels_and_blank_optional_inputs(tmp_path: Path) -> None:
    inp = dict(QA_ROW, ad_description="", ad_url=None)
    row = make_row(id="a", task="query_ad", mode="label", input=inp, labels={"label": "good"}, reasoning=None,
                   split="train")
    assert row["target"] == "<Label>Good</Label>"
    user = row["messages"][1]["content"]
    assert user == "Query: cheap hotel in downtown Paris\nAd title: Luxury 5-star hotel in central Paris"
    assert "AdQuality" not in row["messages"][0]["content"]
    with pytest.raises(MissingTagError, match=r"labels miss \['label'\]"):
        make_row(id="b", task="query_ad", mode="label", input=inp, labels={"quality_label": "good"},
                 reasoning=None, split="train")
    with pytest.raises(MissingTagError, match=r"misses fields \['ad_title'\]"):
        make_row(id="c", task="query_ad", mode="label", input=dict(inp, ad_title=" "), labels={"label": "good"},
                 reasoning=None, split="train")
    # the corpus folder records the selected definition, and validation reads it back
    path = write_corpus([row], tmp_path / "c")
    spec = load_task_from_dir(tmp_path / "c", "query_ad")
    assert list(spec.label_fields) == ["label"]
    assert spec.hash == get_task("query_ad").select_labels(("label",)).hash
    assert read_corpus(path).height == 1


def test_user_task_with_label_map(tmp_path: Path) -> None:
    spec = load_task(EXAMPLE)
    assert spec.name == "esci_relevance" and spec.primary_field == "label"
    assert [spec.map_label("label", v) for v in ("E", "S", "C", "I", "exact", "good", " Irrelevant ")] == \
        ["good", "fair", "fair", "bad", "good", "good", "bad"]
    with pytest.raises(InvalidLabelError, match=r"got 'X'.*`label_map` maps"):
        spec.map_label("label", "X")
    with pytest.raises(InvalidLabelError, match="got 'E'"):
        spec.check_value("label", "E")  # the map applies only where labels come in from a user's file
    row = make_row(id="a", task=spec, mode="label", input={"query": "q", "product_title": "t"},
                   labels={"label": spec.map_label("label", "E")}, reasoning=None, split="train")
    assert row["task"] == "esci_relevance" and row["target"] == "<Label>Good</Label>"
    assert "Product description" not in row["messages"][1]["content"]
    # a user task is not registered by loading it, but a corpus written with it carries it
    assert "esci_relevance" not in task_names()
    write_corpus([row], tmp_path / "c", tasks=[spec])
    assert (tmp_path / "c" / "tasks" / "esci_relevance.toml").exists()
    assert read_corpus(tmp_path / "c").height == 1
    assert load_task_from_dir(tmp_path / "c", "esci_relevance").hash == spec.hash


def test_numeric_label_map_star_ratings(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().split("[labels.label.map]")[0] + (
        '[labels.label.map]\n"1" = "bad"\n"2" = "bad"\n"3" = "fair"\n"3.5" = "fair"\n"4" = "good"\n"4.5" = "good"\n'
        '"5" = "good"\n\n[[variants]]\nid = "steps"\nquestion = "Why?"\nsteps = ["Explain."]\n')
    p = tmp_path / "stars.toml"
    p.write_text(text)
    spec = load_task(p)
    assert [spec.map_label("label", v) for v in (1, 3.5, 4.0, "4.5", 5)] == ["bad", "fair", "good", "good", "good"]


def test_bad_task_file_errors_name_the_file_and_every_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('name = "Bad Name"\ninstruction = "x"\nvalue_display = "upper"\nsplit_keys = ["nope"]\n'
                 '[inputs.query]\ntitel = "Query"\n'
                 '[labels.label]\ntag = "Label"\nvalues = ["bad", "good"]\ndefect = ["awful"]\nvaluse = 1\n'
                 '[labels.label.map]\nE = "great"\n'
                 '[[variants]]\nid = "a"\nquestion = "q"\n')
    with pytest.raises(TaskDefinitionError) as ei:
        load_task(p)
    msg = str(ei.value)
    assert f"task definition `{p}` is invalid" in msg
    for part in ("key `name`: must match", "key `description`: is required",
                 "key `value_display`: must be one of ['capitalize', 'as_is'], got 'upper'",
                 "key `inputs.query.titel`: unknown key; did you mean `inputs.query.title`?",
                 "key `labels.label.valuse`: unknown key; did you mean `labels.label.values`?",
                 "key `labels.label.defect`: has ['awful'], not in `values`",
                 "key `labels.label.map.E`: maps to 'great', not in `values`",
                 "key `split_keys`: names ['nope'], not input fields", "key `variants[0].steps`: is required"):
        assert part in msg, part
    assert len(ei.value.problems) == 9
    p.write_text("name = [")
    with pytest.raises(TaskDefinitionError, match=f"task definition `{p}` is not valid TOML"):
        load_task(p)
    with pytest.raises(TaskDefinitionError, match="does not exist"):
        load_task(tmp_path / "missing.toml")


def test_register_task_and_refuse_a_silent_redefinition(tmp_path: Path) -> None:
    spec = load_task(EXAMPLE)
    try:
        assert register_task(EXAMPLE).hash == spec.hash and get_task("esci_relevance").hash == spec.hash
        register_task(spec)  # the same definition again: fine
        other = tmp_path / "esci2.toml"
        other.write_text(EXAMPLE.read_text().replace('"Query"', '"Search"'))
        with pytest.raises(ConfigError, match="already registered with a different definition"):
            register_task(other)
        # a registered user task's rows validate by name
        row = make_row(id="a", task="esci_relevance", mode="label", input={"query": "q", "product_title": "t"},
                       labels={"label": "bad"}, reasoning=None, split="eval")
        assert json.loads(row["labels"]) == {"label": "bad"}
        assert register_task(other, replace=True).input_titles["query"] == "Search"
    finally:
        _REGISTRY.pop("esci_relevance", None)


def test_split_uses_a_user_tasks_split_keys() -> None:
    spec = load_task(EXAMPLE)
    rows = [{"query": f"red shoes {i % 3}", "product_title": f"t{i}"} for i in range(30)]
    splits = split_rows([spec] * 30, rows, eval_fraction=0.3, seed=1)
    by_query: dict[str, set[str]] = {}
    for r, s in zip(rows, splits, strict=True):
        by_query.setdefault(r["query"], set()).add(s)
    assert all(len(v) == 1 for v in by_query.values()) and "eval" in splits


def test_load_task_from_dir_errors(tmp_path: Path) -> None:
    assert load_task_from_dir(tmp_path, "query_ad") is get_task("query_ad")  # old folder: no tasks/
    save_task(get_task("ad_user"), tmp_path)
    with pytest.raises(Exception, match=r"no task definition .*query_ad.toml.*task files \['ad_user'\]"):
        load_task_from_dir(tmp_path, "query_ad")


@pytest.mark.parametrize("order", [0, 1])
def test_near_duplicates_at_the_threshold_are_grouped_in_both_orders(order: int) -> None:
    """Jaccard exactly 0.8 (4 shared of 5 tokens): grouped whichever key comes first (the prefix-length bug)."""
    from adnanny_cook.split import near_duplicate_groups

    pair = ["cheap hotel paris france", "best cheap hotel paris france"]
    keys = pair if order == 0 else pair[::-1]
    g = near_duplicate_groups(keys, threshold=0.8)
    assert g[0] == g[1]
    # lengths 10 and 15 as well, and just below the threshold stays apart
    ten = " ".join(f"w{i}" for i in range(9))
    assert len(set(near_duplicate_groups([ten, "extra " + ten][::(1 if order == 0 else -1)], 0.9))) == 1
    fifteen = " ".join(f"w{i}" for i in range(12))
    assert len(set(near_duplicate_groups([fifteen, "a b c " + fifteen][::(1 if order == 0 else -1)], 0.8))) == 1
    assert len(set(near_duplicate_groups(["a b c d", "a b c e f"], 0.8))) == 2
    rows = [{"query": k, "ad_title": "t"} for k in keys]
    assert len(set(split_rows(["query_ad", "query_ad"], rows, eval_fraction=0.5, seed=3))) == 1


def test_builtin_prompts_are_byte_identical_to_the_python_registry_they_replaced() -> None:
    """Every prompt, target, stop string, defect set, split key and stated-label reading of the eight built-in
    tasks, dumped as the Python-literal registry rendered them before tasks became TOML files (sha256 of that
    dump recorded then). A changed word in any built-in prompt fails here."""
    import hashlib

    out = {}
    for n in TASK_NAMES:
        t = get_task(n)
        row = {f: f"value of {f} <think>x</think>" for f in t.input_fields}
        labels = {f: (vals[-1] if vals else f"generated {f} text") for f, vals in t.label_fields.items()}
        d: dict = {}
        for mode in ("reasoning", "label"):
            d[mode] = t.render_messages(row, mode)
            d[mode + "_ex"] = t.render_messages(row, mode, example=True)
            d["target_" + mode] = t.format_target(labels, "Some reasoning." if mode == "reasoning" else None)
        d["variants"] = [t.reasoning_messages(row, labels, variant=i) for i in range(len(t.reasoning_variants))]
        if t.generation_instruction:
            d["gen"] = t.generation_messages(row, n=3)
        d["stop"] = list(t.label_stop)
        d["kind"] = t.kind
        d["defect"] = {k: list(v) for k, v in t.defect_values.items()}
        d["group"] = group_key(n, row)
        d["stated"] = {k: sorted(map(str, v)) for k, v in stated_labels(t, (
            "The relevance label 'Fair' and location label: bad, ad-quality label Good, quality label bad, score "
            "of 2, relevance score 3, label 1, preference B, relevance good")).items()}
        out[n] = d
    blob = json.dumps(out, indent=1, sort_keys=True).encode()
    assert hashlib.sha256(blob).hexdigest() == "708a66cdb929d7534c7ed39bd3b6c288ade806dfaf7827ecfb611adf84083989"
