"""`adnanny-eval bench`: task formats, metrics, oracle scorers, GSM8K extraction, resume, Table 8, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from adnanny_eval.bench import (
    BenchConfig,
    BenchError,
    extract_flexible,
    extract_strict,
    gsm8k_gold,
    gsm8k_prompt,
    hellaswag_preprocess,
    load_items,
    mc_outcome,
    mean_stderr,
    normalize_answer,
    paired_stderr,
    run_bench,
    run_table8,
    run_task,
)
from adnanny_eval.cli import main

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "gsm8k" / "test.jsonl").is_file(),
                                  reason=f"benchmark data folder {SHARED} is absent (../shared/data)")


# ------------------------------------------------------------------------------------------- data
def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _arc_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = 3 + i % 3  # 3, 4 or 5 options, as in the real file
        labels = "ABCDE"[:k]
        rows.append({"index": i, "id": f"q{i}", "question": f"What is item {i}?",
                     "options": [{"label": lab, "text": f"answer {lab} to {i}" + " long" * (j % 2)}
                                 for j, lab in enumerate(labels)],
                     "answer": labels[(i * 7) % k]})
    return rows


def _hs_rows(n: int) -> list[dict]:
    return [{"ind": 100 + i, "activity_label": "Cooking", "ctx_a": f"A man cuts onion {i}.", "ctx_b": "he",
             "endings": [f"fries it [title] now {j}." for j in range(4)], "label": (i * 3) % 4} for i in range(n)]


def _gsm_rows(n: int) -> list[dict]:
    return [{"question": f"Tom has {i} apples and buys 2. How many?",
             "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2:,}"} for i in range(n)]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    _write(d / "arc_challenge" / "arc.jsonl", _arc_rows(23))
    _write(d / "hellaswag" / "hs.jsonl", _hs_rows(17))
    _write(d / "gsm8k" / "test.jsonl", _gsm_rows(12))
    return d


class OracleEngine:
    """Scores the gold choice (or choice ``fixed``) 0 and the others -5; generates the reference answer."""

    def __init__(self, data_dir: Path, fixed: int | None = None, fail_after: int | None = None):
        self.gold: dict[tuple[str, str], bool] = {}
        for task in ("arc_challenge", "hellaswag"):
            from adnanny_eval.bench.tasks import find_data_file

            for it in load_items(find_data_file(data_dir, task), task):
                for j, c in enumerate(it.choices):
                    self.gold[(it.context, " " + c)] = (j == it.gold) if fixed is None else (j == fixed)
        self.answers = {it.question: it.answer for it in load_items(data_dir / "gsm8k" / "test.jsonl", "gsm8k")}
        self.calls = 0
        self.scored = 0
        self.fail_after = fail_after

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated crash")

    def loglikelihood(self, requests):
        self._tick()
        self.scored += len(requests)
        return [SimpleNamespace(logprob=0.0 if self.gold[r] else -5.0) for r in requests]

    def generate(self, prompts, params):
        self._tick()
        out = []
        for p in prompts:
            q = p.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
            out.append(SimpleNamespace(text=" " + self.answers[q]))
        return out


# ------------------------------------------------------------------------------------------- formats
def test_task_formats_follow_the_harness(data_dir: Path) -> None:
    arc = load_items(data_dir / "arc_challenge" / "arc.jsonl", "arc_challenge")
    assert arc[0].context == "Question: What is item 0?\nAnswer:"
    assert arc[0].choices[0] == "answer A to 0" and arc[1].gold == 7 % 4
    hs = load_items(data_dir / "hellaswag" / "hs.jsonl", "hellaswag")
    assert hs[0].context == "Cooking: A man cuts onion 0. He"  # ctx_b capitalised
    assert hs[0].choices[1] == "fries it. now 1."  # " [title]" -> ". "
    assert hellaswag_preprocess("  a [step] b [title]c ") == "a b. c"
    gsm = load_items(data_dir / "gsm8k" / "test.jsonl", "gsm8k")
    prompt = gsm8k_prompt(gsm[:2], gsm[5])
    assert prompt.startswith("Question: Tom has 0 apples and buys 2. How many?\nAnswer: He has 0 + 2")
    assert prompt.count("Question:") == 3 and prompt.endswith("Question: Tom has 5 apples and buys 2. How many?\nAnswer:")
    assert "\n#### 2\n\nQuestion: Tom has 1" in prompt


def test_bad_data_files_are_named(tmp_path: Path) -> None:
    rows = _arc_rows(2)
    rows[1]["answer"] = "Z"
    p = _write(tmp_path / "arc_challenge" / "a.jsonl", rows)
    with pytest.raises(BenchError, match=r"a.jsonl` line 2: `answer` 'Z' is none of the option labels"):
        load_items(p, "arc_challenge")
    p.write_text('{"question": "x"}\n')
    with pytest.raises(BenchError, match="line 1 has no `options`"):
        load_items(p, "arc_challenge")
    p.write_text(json.dumps(_arc_rows(1)[0]) + "\nnot json\n")
    with pytest.raises(BenchError, match="line 2 is not JSON"):
        load_items(p, "arc_challenge")
    with pytest.raises(BenchError, match="no folder .*hellaswag"):
        run_task(None, "hellaswag", BenchConfig(data_dir=tmp_path))
    with pytest.raises(BenchError, match="unknown task"):
        BenchConfig(data_dir=tmp_path, tasks=("mmlu",))


# ------------------------------------------------------------------------------------------- metrics
def test_acc_norm_divides_by_the_choice_text_length() -> None:
    # total log-likelihood prefers the short choice; per character the long one wins
    got = mc_outcome([-3.0, -8.0], ["ab", "a much longer choice"], gold=1)
    assert got == {"pred": 0, "pred_norm": 1, "acc": 0, "acc_norm": 1}
    assert mc_outcome([-1.0, -1.0, -2.0], ["x", "x", "y"], gold=0)["pred"] == 0  # ties: first choice


def test_standard_errors() -> None:
    vals = [1, 0, 1, 1, 0, 1]
    mean, se = mean_stderr(vals)
    sd = math.sqrt(sum((v - 4 / 6) ** 2 for v in vals) / 5)
    assert mean == pytest.approx(4 / 6) and se == pytest.approx(sd / math.sqrt(6))
    assert math.isnan(mean_stderr([1])[1])
    d, dse = paired_stderr([1, 1, 0, 0], [1, 0, 1, 1])
    assert d == pytest.approx(0.25) and dse == pytest.approx(mean_stderr([0, -1, 1, 1])[1])
    with pytest.raises(BenchError, match="same items"):
        paired_stderr([1], [1, 0])


def test_gsm8k_extraction_rules() -> None:
    assert extract_strict("so 3 + 4 = 7\n#### 1,234\nQuestion") == "1,234"
    assert normalize_answer(extract_strict("#### 1,234.")) == "1234" and extract_strict("#### $5") == "[invalid]"
    assert extract_strict("The answer is 7.") == "[invalid]"
    assert extract_flexible("costs $12 then 3 more, total 15.") == "15."
    assert normalize_answer(extract_flexible("total is $1,200.")) == "1200"
    assert extract_flexible("no number here") == "[invalid]"
    assert gsm8k_gold("a\nb\n#### 70000") == "70000"


@needs_shared
def test_gsm8k_extraction_on_the_reference_answers_is_exact() -> None:
    items = load_items(SHARED / "gsm8k" / "test.jsonl", "gsm8k")
    assert len(items) == 1319
    strict = sum(normalize_answer(extract_strict(it.answer)) == gsm8k_gold(it.answer) for it in items)
    flexible = sum(normalize_answer(extract_flexible(it.answer)) == gsm8k_gold(it.answer) for it in items)
    assert strict == flexible == len(items)


# ------------------------------------------------------------------------------------------- oracles
def test_oracle_scores_100_and_choice_zero_scores_the_gold_zero_share(data_dir: Path) -> None:
    cfg = BenchConfig(data_dir=data_dir, tasks=("arc_challenge", "hellaswag", "gsm8k"), num_fewshot=3,
                      progress=False, batch_size=4)
    res = run_bench("oracle", cfg, engine=OracleEngine(data_dir))
    for t in ("arc_challenge", "hellaswag"):
        assert res.tasks[t].metrics == {"acc": 1.0, "acc_norm": 1.0}
        assert res.tasks[t].stderr["acc"] == 0.0
    g = res.tasks["gsm8k"]
    assert g.metrics == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0}
    assert g.n == 12 - 3 and g.item_index[0] == 3 and g.num_fewshot == 3  # exemplars are not scored
    zero = run_bench("zero", cfg, engine=OracleEngine(data_dir, fixed=0))
    for t, n in (("arc_challenge", 23), ("hellaswag", 17)):
        items = load_items(next((data_dir / t).glob("*.jsonl")), t)
        share = sum(it.gold == 0 for it in items) / n
        assert 0 < share < 1
        assert zero.tasks[t].metrics["acc"] == pytest.approx(share)
        assert zero.tasks[t].stderr["acc"] == pytest.approx(mean_stderr([int(it.gold == 0) for it in items])[1])
    limited = run_bench("oracle", BenchConfig(data_dir=data_dir, tasks=("hellaswag",), limit=5, progress=False),
                        engine=OracleEngine(data_dir))
    assert limited.tasks["hellaswag"].n == 5 and limited.tasks["hellaswag"].item_index == [0, 1, 2, 3, 4]


def test_resume_after_a_crash_scores_only_the_rest_and_gives_the_same_scores(data_dir: Path, tmp_path: Path) -> None:
    full = run_bench("zero", BenchConfig(data_dir=data_dir, tasks=("arc_challenge",), progress=False, batch_size=4),
                     engine=OracleEngine(data_dir, fixed=0))
    out = tmp_path / "out"
    cfg = BenchConfig(data_dir=data_dir, tasks=("arc_challenge",), out=out, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_bench("zero", cfg, engine=OracleEngine(data_dir, fixed=0, fail_after=3))
    items_file = next(out.glob("*/arc_challenge/items.jsonl"))
    assert len(items_file.read_text().splitlines()) == 12  # 3 chunks of 4 items were kept
    with open(items_file, "a") as fh:  # a line torn by the kill
        fh.write('{"i": 12, "acc": 1, "ac')
    again = OracleEngine(data_dir, fixed=0)
    res = run_bench("zero", cfg, engine=again)
    assert res.tasks["arc_challenge"].metrics == full.tasks["arc_challenge"].metrics
    assert res.tasks["arc_challenge"].scored_now == 23 - 12
    assert again.scored == sum(len(r["options"]) for r in _arc_rows(23)[12:])
    assert len(items_file.read_text().splitlines()) == 23
    summary = json.loads((items_file.parent.parent / "arc_challenge.json").read_text())
    assert summary["acc"] == full.tasks["arc_challenge"].metrics["acc"]
    # a folder written with other settings is refused, not mixed
    (data_dir / "arc_challenge" / "arc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _arc_rows(24)))
    with pytest.raises(BenchError, match="data_sha256 differ.*another `--out`"):
        run_bench("zero", cfg, engine=OracleEngine(data_dir, fixed=0))


def test_table8_with_paired_standard_errors(data_dir: Path, tmp_path: Path) -> None:
    cfg = BenchConfig(data_dir=data_dir, tasks=("arc_challenge", "hellaswag"), out=tmp_path / "t8", progress=False)
    engines = {"base": OracleEngine(data_dir), "cand": OracleEngine(data_dir, fixed=0)}
    out = run_table8("base", ["cand"], cfg, engines=engines)
    table = out["table"]
    assert table["models"] == ["base", "cand"] and table["benchmarks"] == ["arc_challenge (acc_norm)",
                                                                          "hellaswag (acc_norm)"]
    cand = out["models"]["cand"]["tasks"]["arc_challenge"]["acc_norm"]
    assert table["relative_change_percent"]["cand"][0] == pytest.approx(round((cand - 1.0) * 100, 2))
    arc = load_items(data_dir / "arc_challenge" / "arc.jsonl", "arc_challenge")
    diffs = [int(it.gold == 0) - 1 for it in arc]
    p = out["paired"]["cand"]["arc_challenge"]
    assert p["diff"] == pytest.approx(sum(diffs) / len(diffs)) and p["stderr"] == pytest.approx(mean_stderr(diffs)[1])
    md = (tmp_path / "t8" / "table8.md").read_text()
    assert "**Avg.**" in md and "paired s.e." in md
    assert json.loads((tmp_path / "t8" / "table8.json").read_text())["paired"]["cand"]["hellaswag"]["n"] == 17
    with pytest.raises(BenchError, match="at least one `--candidate`"):
        run_table8("base", [], cfg, engines=engines)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADNANNY_BENCH_DATA", raising=False)
    assert main(["bench", "--model", "x"]) == 2
    assert "pass `--data-dir DIR`" in capsys.readouterr().err
    assert main(["bench", "--data-dir", str(tmp_path)]) == 2
    assert "either `--model M`" in capsys.readouterr().err
    assert main(["bench", "--model", "x", "--data-dir", str(tmp_path), "--tasks", "arc_challenge,mmlu"]) == 2
    assert "unknown task(s) ['mmlu']" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path / "nope"), "--data-dir", str(tmp_path), "--no-progress"]) == 2
    assert "smollm2" in capsys.readouterr().err  # the resolver names the known names


def test_bench_import_is_light() -> None:
    code = ("import adnanny_eval, adnanny_eval.bench, adnanny_eval.cli, sys; adnanny_eval.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'adnanny_serve') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-layer Llama saved with SmolLM2's tokenizer (a real HF dir, a few MB)."""
    import torch
    from adnanny_ckpt.gguf import smollm2_hf_dir
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _direct_lls(model_dir: Path, item) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for c in item.choices:
        ctx = tok(item.context, add_special_tokens=False)["input_ids"]
        whole = tok(item.context + " " + c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(lp[p - 1, whole[p]].item() for p in range(len(ctx), len(whole))))
    return out


def test_cli_on_a_tiny_model_matches_a_direct_computation_and_resumes(tiny_model: Path, data_dir: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    argv = ["bench", "--model", str(tiny_model), "--tasks", "arc_challenge,hellaswag,gsm8k", "--limit", "6",
            "--data-dir", str(data_dir), "--out", str(out), "--json", "--batch-size", "8", "--num-fewshot", "2",
            "--max-gen-tokens", "6", "--no-progress"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    tasks = first["tasks"]
    assert set(tasks) == {"arc_challenge", "hellaswag", "gsm8k"}
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(tasks["arc_challenge"])
    assert {"exact_match_strict", "exact_match_flexible", "exact_match_strict_stderr"} <= set(tasks["gsm8k"])
    assert tasks["hellaswag"]["n"] == 6 and tasks["gsm8k"]["num_fewshot"] == 2
    # the stored log-likelihoods equal a plain per-token forward of context + " " + choice
    recs = [json.loads(x) for x in next(out.glob("*/arc_challenge/items.jsonl")).read_text().splitlines()]
    arc = load_items(data_dir / "arc_challenge" / "arc.jsonl", "arc_challenge")
    for rec in recs[:3]:
        assert rec["lls"] == pytest.approx(_direct_lls(tiny_model, arc[rec["i"]]), abs=2e-4)
    assert main(argv) == 0  # everything is on disk: nothing is rescored, same numbers
    second = json.loads(capsys.readouterr().out)
    for t in tasks:
        assert second["tasks"][t]["scored_now"] == 0
        assert {k: v for k, v in second["tasks"][t].items() if k not in ("seconds", "scored_now")} == \
               {k: v for k, v in tasks[t].items() if k not in ("seconds", "scored_now")}


@pytest.mark.slow  # two CLI processes (~40 s on 2 shared cores); the in-process crash test above is the fast guard
def test_kill_minus_9_then_resume_gives_the_same_scores(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    _write(data_dir / "arc_challenge" / "arc.jsonl", _arc_rows(40))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "adnanny_eval.cli", "bench", "--model", str(tiny_model), "--tasks",
                "arc_challenge", "--data-dir", str(data_dir), "--out", str(out), "--json", "--batch-size", "1",
                "--no-progress"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    items = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed.glob("*/arc_challenge/items.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            items = found[0]
            break
        time.sleep(0.05)
    assert items is not None and proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(items.read_text().splitlines())
    assert 3 <= n_before < 40 and not (killed / items.parent.parent.name / "arc_challenge.json").exists()
    resumed = subprocess.run(cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads(resumed.stdout)["tasks"]["arc_challenge"]
    clean = run_bench(str(tiny_model), BenchConfig(data_dir=data_dir, tasks=("arc_challenge",), batch_size=1,
                                                   out=tmp_path / "clean", progress=False))
    b = clean.tasks["arc_challenge"]
    assert a["scored_now"] <= 40 - n_before and b.scored_now == 40
    assert (a["acc"], a["acc_norm"], a["n"]) == (b.metrics["acc"], b.metrics["acc_norm"], b.n)
    stored = lambda out: sorted(  # noqa: E731
        (r["i"], r["pred"], r["pred_norm"]) for r in map(json.loads, next(out.glob("*/arc_challenge/items.jsonl"))
                                                       .read_text().splitlines()))
    assert stored(killed) == stored(tmp_path / "clean")  # the same choice on every item


@needs_shared
def test_smoke_on_the_shared_data(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The real files, read in place (data dir from $ADNANNY_BENCH_DATA), through the CLI on a tiny model."""
    monkeypatch.setenv("ADNANNY_BENCH_DATA", str(SHARED))
    assert main(["bench", "--model", str(tiny_model), "--limit", "2", "--max-gen-tokens", "4", "--batch-size", "8",
                 "--no-progress", "--out", str(tmp_path / "o")]) == 0
    md = capsys.readouterr().out
    for row in ("| arc_challenge | acc_norm", "| hellaswag | acc ", "| gsm8k | exact_match_strict"):
        assert row in md
    res = json.loads(next((tmp_path / "o").glob("*/results.json")).read_text())
    assert res["tasks"]["gsm8k"]["n"] == 2 and res["tasks"]["gsm8k"]["num_fewshot"] == 5
    assert res["tasks"]["arc_challenge"]["n"] == 2
