"""The cook stage: sample world (or the user's rows) -> corpus with gated teacher rationales.

The teacher here is a scripted OpenAI-compatible server on 127.0.0.1 (real HTTP through adnanny-cook's client) that
answers explanation-only requests the way a small teacher that follows the request would: a plain sentence citing
the query and the ad. A second script fails the gate. The real adnanny-serve lifecycle (start, stop on exit and on
error) runs on a tiny random model; SmolLM2 as the teacher is the slow test."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from adnanny.stage import StageContext
from adnanny.stages.cook import STAGE, CookStageConfig

#: the sample world's own default size (the recipe's larger world takes ~90 s to make under load)
SMALL_WORLD = {"queries": 2600, "corpus_query_ad": 1500}
FAST = {"embed_model": "hashing", "max_inputs": 120, "sample_sizes": SMALL_WORLD, "golden_examples": 4,
        "teacher_inputs": 4, "k": 2,
        "timeout_s": 30.0}


class ScriptedTeacher:
    """`mode="good"`: an explanation citing the input (same text for every variant and seed, so the gate's
    cross-variant consistency holds); `mode="tags"`: a tag fragment (fails the schema filter, so the gate)."""

    def __init__(self, mode: str = "good") -> None:
        self.mode, self.requests = mode, []

    def _answer(self, body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        self.requests.append(body)
        if self.mode == "tags":
            return "<Label>Good</Label>"
        q = re.search(r"^Query: (.+)$", user, re.M)
        t = re.search(r"^Ad title: (.+)$", user, re.M)
        return (f"The searcher typed {q.group(1) if q else 'a query'} and the ad offers {t.group(1) if t else 'x'}; "
                f"comparing the product, brand and location of both explains the given labels.")

    def __enter__(self) -> ScriptedTeacher:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def chat(request):  # noqa: ANN001, ANN202
            body = await request.json()
            text = self._answer(body)
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})

        async def models(_request):  # noqa: ANN001, ANN202
            return JSONResponse({"object": "list", "data": [{"id": "teacher", "object": "model"}]})

        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _run(tmp: Path, flow: Any = None, **over: Any):
    cfg = CookStageConfig(**{**FAST, **over})
    flow = flow or SimpleNamespace(tasks=["query_ad"], seed=0, data={})
    out = tmp / "cook"
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext("cook", out, tmp, {}, cfg, flow, log=lambda s: None)
    return ctx, STAGE.run(ctx)


@pytest.fixture(scope="module")
def cooked(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("run")
    with ScriptedTeacher("good") as t:
        ctx, res = _run(tmp, teacher="endpoint", base_url=t.base_url, model="teacher")
        yield ctx, res, t


def test_gate_passes_then_teacher_rationales_join_the_label_rows(cooked) -> None:
    ctx, res, teacher = cooked
    g = res.metrics["golden"]["query_ad"]
    assert g["passed"] and g["thresholds"] == {"format": 0.95, "faithful": 0.9, "consistency": 0.8}
    assert set(g["measured"]["variants"]) == {"steps", "rephrased"} and g["measured"]["examples"] == 4
    f = res.metrics["funnel"]["query_ad"]
    # 120 inputs; 4 sent to the teacher x k=2 candidates, all well-formed; one kept per input (MMR)
    assert f == {"inputs": 120, "requested": 4, "candidates": 8, "schema_pass": 8, "filter_pass": 8, "kept": 4,
                 "label_only": 116}
    # the requests asked for the explanation only, with the stop string, and never showed tags to fill in
    cook_reqs = [r for r in teacher.requests if "Given relevance label" in r["messages"][-1]["content"]]
    assert len(cook_reqs) == 4 * 2 + 4 * 2  # gate: 4 examples x 2 variants; run: 4 inputs x k=2
    assert all("<Label>" not in r["messages"][-1]["content"] and r["stop"] == ["\n\n"] for r in cook_reqs)
    df = pl.read_parquet(ctx.out / "corpus" / "corpus.parquet")
    assert df.height == 124 and df.filter(pl.col("mode") == "reasoning").height == 4
    # every rationale sits in its input's split, next to the input's label row
    split = {r["id"]: r["split"] for r in df.filter(pl.col("mode") == "label").iter_rows(named=True)}
    for r in df.filter(pl.col("mode") == "reasoning").iter_rows(named=True):
        src = json.loads(r["provenance"])["source_id"]
        assert r["split"] == split[src] and r["target"].startswith("<think>\nThe searcher typed")
    # golden rows are held out of the corpus; the artifacts other stages read exist
    golden = {json.loads(x)["id"] for x in (ctx.out / "golden" / "query_ad.jsonl").read_text().splitlines()}
    assert len(golden) == 240 and not golden & set(split)
    # the test set: a random 240 of the clean non-golden rows, out of the corpus, in the data's class mix (the
    # golden set is stratified: a third `bad`)
    test = [json.loads(x) for x in (ctx.out / "test" / "query_ad.jsonl").read_text().splitlines()]
    ids = {t["id"] for t in test}
    assert len(ids) == 240 and not ids & set(split) and not ids & golden
    world = pl.read_parquet(ctx.out / "world" / "query_ad.parquet").filter(~pl.col("noisy"))
    world_dr = float((world["label"] == "bad").mean())
    test_dr = sum(t["labels"]["label"] == "bad" for t in test) / len(test)
    golden_dr = sum(json.loads(x)["labels"]["label"] == "bad"
                    for x in (ctx.out / "golden" / "query_ad.jsonl").read_text().splitlines()) / 240
    assert abs(test_dr - world_dr) < 0.08 and abs(golden_dr - 1 / 3) < 0.01, (test_dr, world_dr, golden_dr)
    assert "never in the training corpus" in STAGE.trace(ctx.out, test[0]["id"])["note"]
    assert all((ctx.out / p).exists() for p in res.artifacts.values())
    assert res.metrics["teacher"]["model"] == "teacher" and res.metrics["teacher"]["endpoint"] == teacher.base_url
    assert any("gate passed" in n for n in res.notes)


def test_rerun_with_more_teacher_inputs_reuses_the_cache(cooked) -> None:
    ctx, _res, teacher = cooked
    n = len(teacher.requests)
    _ctx, res = _run(ctx.run_dir, teacher="endpoint", base_url=teacher.base_url, model="teacher", teacher_inputs=5)
    # a new cook run folder for the new settings (cook refuses to resume under others), one shared cache: the
    # gate and the first 4 inputs' candidates come from it, only the 5th input's k=2 calls are new
    assert len(teacher.requests) - n == 2
    assert res.metrics["funnel"]["query_ad"]["requested"] == 5 and res.metrics["funnel"]["query_ad"]["kept"] == 5
    assert len([d for d in (ctx.out / "teacher" / "query_ad").iterdir() if d.is_dir()]) == 2


def test_trace_gives_the_teacher_prompt_and_response(cooked) -> None:
    ctx, _res, _t = cooked
    df = pl.read_parquet(ctx.out / "corpus" / "corpus.parquet").filter(pl.col("mode") == "reasoning")
    src = json.loads(df["provenance"][0])["source_id"]
    t = STAGE.trace(ctx.out, src)
    assert t is not None and {r["mode"] for r in t["rows"]} == {"label", "reasoning"}
    rr = next(r for r in t["rows"] if r["mode"] == "reasoning")
    assert rr["teacher_response"].startswith("The searcher typed")
    assert "Write only the explanation" in rr["teacher_prompt"][-1]["content"]
    assert rr["teacher_response"] in rr["target"]
    golden_id = json.loads((ctx.out / "golden" / "query_ad.jsonl").read_text().splitlines()[0])["id"]
    assert "never in the training corpus" in STAGE.trace(ctx.out, golden_id)["note"]
    assert STAGE.trace(ctx.out, "no-such-id") is None


def test_failed_gate_trains_label_only_and_prints_thresholds(tmp_path: Path) -> None:
    with ScriptedTeacher("tags") as t:
        _ctx, res = _run(tmp_path / "a", teacher="endpoint", base_url=t.base_url, model="teacher")
        n_gate = len(t.requests)
        assert n_gate == 4 * 2  # only the gate's calls: the failed prompt is not used at scale
        g = res.metrics["golden"]["query_ad"]
        assert not g["passed"] and g["measured"]["variants"]["steps"]["format"] == 0.0
        assert res.metrics["funnel"]["query_ad"]["requested"] == 0
        assert res.metrics["funnel"]["query_ad"]["label_only"] == 120
        note = " ".join(res.notes)
        assert "gate FAILED" in note and "label-only" in note and "format >= 95%" in note
        with pytest.raises(Exception, match="golden-set gate failed for `query_ad`"):
            _run(tmp_path / "b", teacher="endpoint", base_url=t.base_url, model="teacher", on_gate_fail="error")


def test_users_own_file_without_teacher(tmp_path: Path) -> None:
    rows = [{"id": f"u{i}", "q": f"red shoes size {i % 7}", "title": f"Shoe shop {i % 5}", "rel": "EIS"[i % 3]}
            for i in range(60)]
    pl.DataFrame(rows).write_csv(tmp_path / "mine.csv")
    task = Path(__file__).parents[2] / "packages/adnanny-cook/examples/esci_relevance.toml"
    flow = SimpleNamespace(tasks=[str(task)], seed=0, data={"esci_relevance": SimpleNamespace(
        path=str(tmp_path / "mine.csv"), columns={"query": "q", "product_title": "title",
                                                  "label": "rel"})})
    ctx, res = _run(tmp_path, flow, teacher="none", golden_examples=2)
    f = res.metrics["funnel"]["esci_relevance"]
    held = (ctx.out / "golden" / "esci_relevance.jsonl").read_text().splitlines()
    test = (ctx.out / "test" / "esci_relevance.jsonl").read_text().splitlines()
    assert len(test) == (60 - len(held)) // 5                   # at most a fifth of what the golden set leaves
    assert f["requested"] == 0 and f["inputs"] + len(held) + len(test) == 60 and f["label_only"] == f["inputs"]
    df = pl.read_parquet(ctx.out / "corpus" / "corpus.parquet")
    assert set(df["mode"]) == {"label"} and {json.loads(x)["label"] for x in df["labels"]} <= {"good", "fair", "bad"}
    assert "no teacher" in res.notes[0]


def test_teacher_server_always_stopped(tmp_path: Path) -> None:
    from adnanny.stages._teacher import TeacherStartError, teacher_endpoint
    from adnanny_cook.sample import make_sample
    from adnanny_serve.tiny import build_tiny_deepseek

    make_sample(tmp_path / "w", 0)
    model = build_tiny_deepseek(tmp_path / "m", tmp_path / "w" / "tokenizer", hidden_size=32)
    with pytest.raises(RuntimeError, match="boom"):
        with teacher_endpoint(tmp_path / "t", kind="serve", model=str(model), log=lambda s: None) as ep:
            import urllib.request

            with urllib.request.urlopen(f"{ep.base_url}/models", timeout=30) as r:
                assert r.status == 200
            pid = int((tmp_path / "t" / "teacher.pid").read_text())
            raise RuntimeError("boom")
    for _ in range(100):  # the whole process group is gone after the block, also on an error
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"teacher server {pid} still running")
    assert not (tmp_path / "t" / "teacher.pid").exists()
    with pytest.raises(TeacherStartError, match="exited with code"):
        with teacher_endpoint(tmp_path / "t2", kind="serve", model=str(tmp_path / "nope"), log=lambda s: None):
            pass


def test_supports_lines() -> None:
    flow = SimpleNamespace(tasks=["query_ad", "user_profile"], data={})
    lines = {s.what: s for s in STAGE.supports(CookStageConfig(), flow)}
    assert lines["teacher: adnanny-serve smollm2 on cpu"].supported
    assert not lines["data for task user_profile"].supported
    ep = {s.what: s for s in STAGE.supports(CookStageConfig(teacher="endpoint"), flow)}
    assert not next(s for w, s in ep.items() if w.startswith("teacher:")).supported


@pytest.mark.slow
def test_smollm2_teacher_end_to_end(tmp_path: Path) -> None:
    """The default teacher for real: the gate runs and is reported whichever way it falls; the server stops."""
    _ctx, res = _run(tmp_path, max_inputs=60, golden_examples=2, teacher_inputs=2)
    g = res.metrics["golden"]["query_ad"]
    assert set(g["thresholds"]) == {"format", "faithful", "consistency"}
    assert res.metrics["funnel"]["query_ad"]["inputs"] == 60
    assert not (tmp_path / "cook" / "teacher" / "teacher.pid").exists()
