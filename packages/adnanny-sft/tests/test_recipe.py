"""The relevance recipe's pieces: relevance-only targets, class balance, scores, threshold manifest, collapse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adnanny_sft.config import SFTConfig
from adnanny_sft.data import read_rows, row_class, task_specs, with_target_forms
from adnanny_sft.train import class_loss_factors, prepare_data, train

pytestmark = pytest.mark.filterwarnings("ignore:.*did not match any targeted module:RuntimeWarning")


def _cfg(corpus: Path, sample_dir: Path, out: Path, **kw) -> SFTConfig:
    base = dict(corpus=str(corpus), tokenizer=str(sample_dir / "tokenizer"), model="tiny-deepseek-v3",
                tiny_hidden_size=32, tiny_layers=2, output_dir=str(out), batch_size=4, max_steps=3, lr=3e-3,
                eval_rows_per_task=8, eval_max_new_tokens=8, progress=False, tensorboard=False, threads=1,
                task_weighting=False, tasks=["query_ad"], target_forms=["label"], labels=["label"])
    base.update(kw)
    return SFTConfig(**base)


def test_relevance_only_targets_and_prompts(small_corpus, tokenizer, tmp_path) -> None:
    cfg = _cfg(small_corpus, small_corpus, tmp_path, target_forms=["reasoning", "label"])
    rows = [r for r in read_rows(small_corpus) if r["task"] == "query_ad"]
    specs = task_specs(small_corpus, {"query_ad"}, labels=cfg.labels)
    assert list(specs["query_ad"].label_fields) == ["label"]
    out, counts = with_target_forms(rows, cfg.target_forms, specs=specs, rerender={"query_ad"})
    assert counts["kept"] == len(rows)
    for r in out:
        assert "<Label>" in r["target"] and "<LocationLabel>" not in r["target"] and "<AdQuality>" not in r["target"]
        system = r["messages"][0]["content"]
        assert "<Label>Bad|Fair|Good</Label>" in system and "<LocationLabel>" not in system
        if r["mode"] == "reasoning":
            assert r["target"].startswith("<think>") and r["reasoning"].strip() in r["target"]
    # a field no task has is an error naming it
    from adnanny_sft.errors import ConfigError

    with pytest.raises(ConfigError, match="`labels` names \\['relevance'\\]"):
        task_specs(small_corpus, {"query_ad"}, labels=["relevance"])


def test_prepare_data_reports_classes_and_rerenders(small_corpus, tokenizer, tmp_path) -> None:
    examples, _, info = prepare_data(_cfg(small_corpus, small_corpus, tmp_path), tokenizer, tmp_path)
    specs, classes = info["specs"], info["classes"]
    assert info["tasks"]["query_ad"]["labels"] == ["label"] and info["tasks"]["query_ad"]["hash"] == specs[
        "query_ad"].hash
    assert set(classes.values()) == {"defect", "non-defect"}
    counts = info["class_counts"]["query_ad"]
    assert sum(counts.values()) == len(examples)
    rows = {r["id"]: r for r in read_rows(small_corpus)}
    for e in examples:
        src = rows[e.id.split("#")[0]]  # derived forms are "<id>#<form>"
        gold = json.loads(src["labels"])["label"]
        assert classes[e.id] == ("defect" if gold == "bad" else "non-defect")
        assert row_class(src, specs["query_ad"], "value") == gold


def test_class_loss_factors_equalise_class_mass() -> None:
    from adnanny_sft.formatting import Example

    ex = [Example(id=f"r{i}", task="t", input_ids=(1, 2), loss_mask=(0.0, 1.0)) for i in range(10)]
    ex.append(Example(id="g", task="gen", input_ids=(1, 2), loss_mask=(0.0, 1.0)))
    classes = {f"r{i}": ("defect" if i < 2 else "non-defect") for i in range(10)} | {"g": None}
    f = class_loss_factors(ex, classes)
    assert f["r0"] == pytest.approx(10 / (2 * 2)) and f["r5"] == pytest.approx(10 / (2 * 8))
    assert sum(f[f"r{i}"] for i in range(2)) == pytest.approx(sum(f[f"r{i}"] for i in range(2, 10)))
    assert sum(f.values()) / len(f) == pytest.approx(1.0)  # mean factor 1 within the task
    assert "g" not in f


def test_scores_are_the_first_value_token_distribution(sample_dir, tokenizer) -> None:
    import torch

    from adnanny_cook.tasks import get_task
    from adnanny_sft.formatting import _render
    from adnanny_sft.hf_backend import load_causal_lm
    from adnanny_sft.models import resolve_model
    from adnanny_sft.scoring import plan_scoring, score_rows

    spec = get_task("query_ad").select_labels(("label",))
    cfg, _ = resolve_model("tiny-deepseek-v3", str(sample_dir / "tokenizer"), tiny_hidden_size=32, tiny_layers=2)
    model = load_causal_lm(cfg, seed=3)
    inputs = [{"query": "cheap hotel in Paris", "ad_title": "Resort by Calvex", "ad_description": "",
               "ad_url": "www.calvex.com/resort"},
              {"query": "oled tv", "ad_title": "OLED TV by Zenfa", "ad_description": "Thin and bright.",
               "ad_url": "www.zenfa.com/oled-tv"}]
    probs, scores = score_rows(model, tokenizer, spec, inputs, batch_size=1)
    batched, _ = score_rows(model, tokenizer, spec, inputs, batch_size=8)  # right padding changes nothing
    for p, q, s in zip(probs, batched, scores, strict=True):
        assert set(p) == {"bad", "fair", "good"} and sum(p.values()) == pytest.approx(1.0)
        assert s == pytest.approx(p["fair"] + p["good"])
        assert all(p[v] == pytest.approx(q[v], abs=1e-5) for v in p)
    # the same numbers from a plain full forward over prompt + "<Label>"
    messages = spec.render_messages(inputs[1], "label")
    plan = plan_scoring(tokenizer, spec, "label", messages)
    text = _render(tokenizer, messages, generation_prompt=True) + "<Label>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert plan.context == ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    ref = torch.softmax(logits[[plan.candidates[v] for v in ("bad", "fair", "good")]], dim=-1)
    assert [probs[1][v] for v in ("bad", "fair", "good")] == pytest.approx(ref.tolist(), abs=1e-5)


def test_training_writes_the_threshold_manifest_and_task_files(small_corpus, sample_dir, tmp_path) -> None:
    from adnanny_cook.tasks import load_task_from_dir

    res = train(_cfg(small_corpus, sample_dir, tmp_path / "run", export=True, threshold_method="match_dr"))
    manifest = json.loads((res.model_dir / "adnanny_model.json").read_text())
    entry = manifest["tasks"]["query_ad"]
    assert entry["field"] == "label" and entry["defect"] == ["bad"] and entry["threshold_method"] == "match_dr"
    assert 0.0 <= entry["threshold"] <= 1.0 and 0.0 <= entry["val_bacc"] <= 1.0 and entry["n"] >= 2
    assert entry["pred_defect_rate"] == pytest.approx(entry["gold_defect_rate"], abs=0.5 / entry["n"] + 1e-9)
    assert manifest["base_model"] == "tiny-deepseek-v3" and manifest["corpus"] == str(small_corpus)
    spec = load_task_from_dir(res.model_dir, "query_ad")
    assert spec.hash == entry["hash"] and list(spec.label_fields) == ["label"]
    run_manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run_manifest["thresholds"]["query_ad"]["threshold"] == entry["threshold"]
    # adnanny-serve's reader accepts it for this task definition
    serve_label = pytest.importorskip("adnanny_serve.label")
    info = serve_label.resolve_threshold(serve_label.LabelConfig(model=str(res.model_dir), task="query_ad"), spec,
                                         res.model_dir)
    assert info["value"] == pytest.approx(entry["threshold"]) and info["method"] == "match_dr"


def test_evaluation_prints_bacc_and_warns_on_collapse(small_corpus, sample_dir, tmp_path, capsys) -> None:
    """A 2-step model answers one class (or nothing) for every row: the evaluator says so."""
    train(_cfg(small_corpus, sample_dir, tmp_path / "c", max_steps=2, task_eval_every=2, export=False,
               threshold_method="none"))
    err = capsys.readouterr().err
    assert "adnanny-sft: warning: step 2, task `query_ad` field `label`: one class takes" in err
    assert "collapsed onto one class" in err
    assert "[eval step 2] query_ad: BACC" in err and "predicted " in err and "calibrated threshold" in err
    rec = [json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    ev = [r for r in rec if r["kind"] == "eval"][0]["details"]["query_ad"]
    assert ev["collapse_warning"] and max(ev["pred_distribution"].values()) > 0.9
    assert {"auc", "threshold", "score_bacc"} <= set(ev)
    train(_cfg(small_corpus, sample_dir, tmp_path / "n", max_steps=1, evaluate=False, export=False,
               threshold_method="none"))  # evaluation off: nothing evaluated, nothing printed
    assert "[eval step" not in capsys.readouterr().err
