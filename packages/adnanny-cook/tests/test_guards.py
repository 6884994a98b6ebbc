"""Behaviours a mutation review found unpinned: each test fails if the guarded code path is disabled."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.config import load_config  # noqa: E402
from adnanny_cook.corpus import read_corpus  # noqa: E402
from adnanny_cook.errors import BadRowError  # noqa: E402
from adnanny_cook.loaders import load_items  # noqa: E402
from adnanny_cook.pipeline import run_cook  # noqa: E402
from adnanny_cook.split import group_key, near_duplicate_groups, split_rows  # noqa: E402
from adnanny_cook.tasks import CONTROL_TAGS, TASK_NAMES, defang, get_task  # noqa: E402

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "progress": False, "embed_model": "hashing",
        "timeout_s": 5.0}


@pytest.fixture(scope="module")
def teacher():
    with StubTeacher(k=2, bad_rate=0.0) as s:
        yield s


def _qa_rows(sample_dir: Path, n: int) -> pl.DataFrame:
    return pl.read_parquet(sample_dir / "query_ad.parquet").head(n).drop("reasons")


def test_every_control_tag_of_every_task_is_defanged_in_prompts() -> None:
    from adnanny_cook.sample.tokenizer import task_tag_tokens

    tags = {t for name in TASK_NAMES for t in get_task(name).tags.values()} | {"think"}
    assert tags == CONTROL_TAGS
    assert set(task_tag_tokens()) == {f"<{t}>" for t in tags} | {f"</{t}>" for t in tags}
    for name in TASK_NAMES:
        spec = get_task(name)
        evil = " ".join(f"<{t}>x</{t}>" for t in sorted(CONTROL_TAGS))
        row = {f: f"ad text {evil}" for f in spec.input_fields}
        # the system prompt names the output tags; the user turn (the input) must never carry one
        user = spec.render_messages(row, "label")[1]["content"]
        for t in CONTROL_TAGS:
            assert f"<{t}>" not in user and f"</{t}>" not in user, (name, t)
        assert user.count("ad text") == len(spec.input_fields)
    assert defang("<label>Good</LABEL>") == "<\u2060label>Good<\u2060/LABEL>"


def test_near_duplicate_keys_by_jaccard_share_a_group_and_a_split() -> None:
    # Jaccard 4/5 = 0.8: not an exact duplicate after normalization, still one group
    a, b = "cheap hotel in paris", "cheap hotel in paris france"
    keys = [group_key("query_ad", {"query": q}) for q in (a, b, "yoga mat")]
    g = near_duplicate_groups(keys, threshold=0.8)
    assert g[0] == g[1] != g[2]
    assert near_duplicate_groups(keys, threshold=0.9)[0] != near_duplicate_groups(keys, threshold=0.9)[1]
    inputs = [{"query": f"{a} {i}"} if i % 2 else {"query": f"{b} {i}"} for i in range(40)]
    inputs += [{"query": f"unrelated words number{i}"} for i in range(40)]
    for seed in range(5):
        split = split_rows(["query_ad"] * 80, inputs, eval_fraction=0.3, seed=seed)
        groups = near_duplicate_groups([group_key("query_ad", i) for i in inputs], threshold=0.8)
        sides: dict[int, set[str]] = {}
        for gid, s in zip(groups, split, strict=True):
            sides.setdefault(gid, set()).add(s)
        assert all(len(v) == 1 for v in sides.values())


def test_generation_rows_with_partial_outputs_are_bad_rows(tmp_path: Path) -> None:
    rows = [{"id": "a", "ad_title": "T", "ad_description": "D", "landing_page": "L"},                 # generate
            {"id": "b", "ad_title": "T", "ad_description": "D", "landing_page": "L", "title": "New"},  # partial
            {"id": "c", "ad_title": "T", "ad_description": "D", "landing_page": "L", "title": "New",
             "description": "Better"}]
    path = tmp_path / "ads.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadRowError, match=r"row 1 \(id='b'\): label column `description` is missing"):
        load_items(path, "ad_rewrite")
    items, rejects = load_items(path, "ad_rewrite", on_bad_row="quarantine")
    assert [(i.id, i.labels) for i in items] == [("a", None), ("c", {"title": "New", "description": "Better"})]
    assert [r["id"] for r in rejects] == ["b"]


def test_cross_input_inconsistency_is_flagged_and_optionally_dropped(tmp_path: Path, sample_dir: Path,
                                                                     teacher: StubTeacher) -> None:
    df = _qa_rows(sample_dir, 8)
    # each query twice (different id, same labels): near-duplicate inputs whose rationales cite different ids
    twin = df.with_columns((pl.col("id") + "-twin").alias("id"),
                           pl.lit("Another shop, other words, same verdict").alias("ad_title"))
    pl.concat([df, twin]).write_parquet(tmp_path / "in.parquet")
    base = {"task": "query_ad", "input": str(tmp_path / "in.parquet"), "base_url": teacher.base_url,
            "model": "teacher", "k": 1, **FAST}
    m = run_cook(load_config(None, {**base, "out": str(tmp_path / "flag"), "cross_input_min_sim": 0.999}))
    flagged = m["filters"]["flagged"].get("cross_input_inconsistent", 0)
    assert flagged == 16
    provs = [json.loads(p) for p in read_corpus(tmp_path / "flag").filter(pl.col("mode") == "reasoning")["provenance"]]
    assert sum("cross_input_inconsistent" in p["flags"] for p in provs) == flagged
    m = run_cook(load_config(None, {**base, "out": str(tmp_path / "drop"), "cross_input_min_sim": 0.999,
                                    "drop_cross_inconsistent": True}))
    assert m["filters"]["dropped"]["cross_input"] == 16 and m["rows"] == 0
    m = run_cook(load_config(None, {**base, "out": str(tmp_path / "loose"), "cross_input_min_sim": 0.0}))
    assert m["filters"]["flagged"] == {} and m["rows"] == 32


def test_unparsable_verifier_verdict_rejects_never_passes(tmp_path: Path, sample_dir: Path,
                                                          teacher: StubTeacher) -> None:
    _qa_rows(sample_dir, 5).write_parquet(tmp_path / "in.parquet")
    with StubTeacher(verdict="Looks fine to me.") as v:
        m = run_cook(load_config(None, {"task": "query_ad", "input": str(tmp_path / "in.parquet"),
                                        "out": str(tmp_path / "out"), "base_url": teacher.base_url,
                                        "model": "teacher", "k": 2, "verifier_base_url": v.base_url,
                                        "verifier_model": "v", **FAST}))
    assert m["filters"]["dropped"] == {"verifier": 10} and m["filters"]["inputs_without_survivor"] == 5
    assert m["rows"] == 0
    lines = [json.loads(x) for x in (tmp_path / "out/dropped.jsonl").read_text().splitlines()]
    assert all("unparsable verdict" in x["detail"] for x in lines)


def test_mmr_memory_carries_chosen_rationales_across_inputs(tmp_path: Path, sample_dir: Path,
                                                            teacher: StubTeacher) -> None:
    from adnanny_cook.cook import ChunkCooker, open_cooker
    from adnanny_cook.embed import Embedder

    _qa_rows(sample_dir, 6).write_parquet(tmp_path / "in.parquet")
    cfg = load_config(None, {"task": "query_ad", "input": str(tmp_path / "in.parquet"), "out": str(tmp_path / "o"),
                             "base_url": teacher.base_url, "model": "teacher", "k": 2, **FAST})
    items, _ = load_items(cfg.input, cfg.task)

    async def go() -> ChunkCooker:
        async with open_cooker(cfg, Embedder("hashing")) as c:
            await c.cook(items)
        return c

    cooker = asyncio.run(go())
    per_labels: dict[str, int] = {}
    for it in items:
        k = json.dumps(it.labels, sort_keys=True)
        per_labels[k] = per_labels.get(k, 0) + 1
    # one chosen rationale per input is remembered under its label set (the MMR redundancy term reads it)
    assert {k: len(v) for k, v in cooker.memory.items()} == per_labels


def test_golden_gate_fails_when_variants_disagree(tmp_path: Path, sample_dir: Path) -> None:
    """Every output well formed and faithful, but one prompt variant reasons about something else: §3.3's
    consistency across variations is what must fail the gate."""
    from adnanny_cook.golden import validate_prompts

    question = get_task("query_ad").variant("rephrased").question
    with StubTeacher(bad_rate=0.0, diverge_on=question) as s:
        cfg = load_config(None, {"task": "query_ad", "input": str(sample_dir / "golden/query_ad.jsonl"),
                                 "golden": str(sample_dir / "golden/query_ad.jsonl"), "out": str(tmp_path / "o"),
                                 "base_url": s.base_url, "model": "teacher", "golden_variants": "steps,rephrased",
                                 **FAST})
        rep = validate_prompts(cfg)
    assert all(v["format"] == 1.0 and v["faithful"] == 1.0 for v in rep["variants"].values())
    assert rep["consistency"] < 0.1 and not rep["passed"]
    assert len(rep["failures"]) == 1 and rep["failures"][0].startswith("consistency ")
    assert "< gate_consistency 80%" in rep["failures"][0]


def test_atomic_write_keeps_the_old_file_on_failure_and_respects_umask(tmp_path: Path) -> None:
    import os

    from adnanny_cook.corpus import atomic_write_bytes

    target = tmp_path / "d" / "f.json"
    atomic_write_bytes(target, b"old")
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o644 & ~umask
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_tasks_contract_names_are_pinned() -> None:
    """serve, sft and eval import these names from `adnanny_cook.tasks`: a removal must be deliberate."""
    import adnanny_cook.tasks as tasks

    assert tasks.__all__ == ["CONTROL_TAGS", "InvalidLabelError", "KEYWORD_RULES", "MalformedOutputError",
                             "MissingTagError", "ParseError", "ParsedOutput", "PromptVariant", "TASK_NAMES",
                             "TaskDefinitionError", "TaskSpec", "all_tasks", "defang", "get_task", "load_task",
                             "load_task_file", "load_task_from_dir", "register_task", "render_chat", "save_task",
                             "spec_from_dict", "task_names", "task_to_toml"]
    assert all(hasattr(tasks, n) for n in tasks.__all__)


def test_teacher_outage_is_not_checkpointed_and_a_rerun_recovers_the_rows(tmp_path: Path,
                                                                           sample_dir: Path) -> None:
    _qa_rows(sample_dir, 6).write_parquet(tmp_path / "in.parquet")
    # every request's FIRST attempt answers 500; with no retries the first run loses every call
    with StubTeacher(bad_rate=0.0, p500=1.0) as s:
        cfg = load_config(None, {"task": "query_ad", "input": str(tmp_path / "in.parquet"),
                                 "out": str(tmp_path / "out"), "base_url": s.base_url, "model": "teacher",
                                 "k": 2, "max_retries": 0, "chunk_size": 3, **FAST})
        m1 = run_cook(cfg)
        assert m1["filters"]["dropped"] == {"teacher_error": 12} and m1["rows"] == 0
        assert not list((tmp_path / "out/.work/chunks").glob("*.json"))
        m2 = run_cook(cfg)   # the outage is over (second attempts succeed): nothing was skipped as "finished"
    assert "teacher_error" not in m2["filters"]["dropped"] and m2["rows"] == 12
    assert len(list((tmp_path / "out/.work/chunks").glob("*.json"))) == 2


def test_cli_check_corpus_accepts_the_sample_and_names_a_bad_file(tmp_path: Path, sample_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from adnanny_cook.cli import main

    assert main(["check-corpus", str(sample_dir / "corpus"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == read_corpus(sample_dir / "corpus").height
    bad = read_corpus(sample_dir / "corpus").head(3).with_columns(pl.lit("test").alias("split"))
    bad.write_parquet(tmp_path / "bad.parquet")
    assert main(["check-corpus", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet" in err and "row 0 (id=" in err and "column `split` is 'test'" in err


def test_tokens_per_minute_limit_paces_requests() -> None:
    from adnanny_cook.client import TeacherClient

    qa = get_task("query_ad")
    labels = {"label": "good", "location_label": "good", "quality_label": "good"}
    msgs = [qa.reasoning_messages({"query": f"hotel {i}", "ad_title": "Hotel", "ad_description": "Rooms",
                                   "ad_url": "h.com"}, labels) for i in range(2)]
    est = sum(len(m["content"]) for m in msgs[0]) // 4 + 1   # the client's pre-call estimate (max_tokens=1)
    with StubTeacher(bad_rate=0.0) as s:
        c = TeacherClient(base_url=s.base_url, model="m", concurrency=8, tpm=est * 60)  # ~1 request/s

        async def go() -> float:
            import time

            async with c:
                t0 = time.perf_counter()
                await asyncio.gather(*(c.complete(m, params={"max_tokens": 1}) for m in msgs))
                return time.perf_counter() - t0

        elapsed = asyncio.run(go())
    # the bucket holds one second's tokens (= one request): the 2nd request waits ~1 s for the refill
    assert elapsed >= 0.9 and c.stats.rate_limit_wait_s >= 0.9


def test_validate_prompts_cli_needs_only_the_golden_set(tmp_path: Path, sample_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from adnanny_cook.cli import main

    golden = sample_dir / "golden/ad_user.jsonl"
    with StubTeacher(bad_rate=0.0) as s:
        assert main(["validate-prompts", "--task", "ad_user", "--golden", str(golden), "--out", str(tmp_path / "v"),
                     "--base-url", s.base_url, "--model", "teacher", "--golden-variants", "steps",
                     "--embed-model", "hashing", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["passed"] and rep["examples"] == 40 and set(rep["variants"]) == {"steps"}
    assert (tmp_path / "v/golden_report.md").exists()
