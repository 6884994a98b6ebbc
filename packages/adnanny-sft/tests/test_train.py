"""The recipe end to end on cook's sample data: exact resume, NaN stop, LoRA, CLI, public mixing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adnanny_sft.checkpoint import latest_checkpoint
from adnanny_sft.cli import main
from adnanny_sft.config import SFTConfig
from adnanny_sft.errors import ContaminationError, NonFiniteLossError
from adnanny_sft.logs import read_log
from adnanny_sft.train import train

# peft maps DeepSeek-V3's gate/up projections onto the fused expert parameters and warns that its own
# rank pattern matched no module; harmless for training (see the LoRA test below), so it is not an error here.
pytestmark = pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match:RuntimeWarning",
                                        "ignore:The following alpha_pattern keys did not match:RuntimeWarning")


def _cfg(small_corpus: Path, sample_dir: Path, out: Path, **kw) -> SFTConfig:
    base = dict(corpus=str(small_corpus), tokenizer=str(sample_dir / "tokenizer"), model="tiny-deepseek-v3",
                tiny_hidden_size=64, output_dir=str(out), batch_size=4, grad_accum=2, max_steps=8, lr=3e-3,
                warmup_steps=2, save_every=2, keep_checkpoints=10, task_eval_every=3, eval_rows_per_task=4,
                eval_max_new_tokens=6, progress=False, tensorboard=False, export=False, threads=1)
    base.update(kw)
    return SFTConfig(**base)


def _curve(out: Path) -> list[dict]:
    keep = ("kind", "step", "epoch", "loss", "nll", "task_nll", "target_tokens", "lr", "grad_norm", "lambda",
            "metrics", "instance_weights")
    return [{k: r[k] for k in keep if k in r} for r in read_log(out) if r["kind"] != "data"]


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    ("estimator", "mode"), [("minibatch", "sampling"), ("epoch", "loss")], ids=["minibatch-sampling", "epoch-loss"]
)
def test_interrupted_and_resumed_run_reproduces_the_curve_exactly(small_corpus, sample_dir, tmp_path,
                                                                  estimator: str, mode: str) -> None:
    kw = dict(instance_estimator=estimator, task_weighting_mode=mode, target_forms=["label"])  # 40 rows: epoch = 5 steps
    full = tmp_path / "full"
    train(_cfg(small_corpus, sample_dir, full, **kw))

    cut = tmp_path / "cut"

    def stop_at_7(step: int, backend) -> None:
        if step == 7:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(_cfg(small_corpus, sample_dir, cut, **kw), on_step=stop_at_7)
    assert latest_checkpoint(cut).name == "step-00000006"
    if estimator == "minibatch":  # the resumed state already holds eq.-5 weights (samples seen twice by step 6)
        assert json.loads((latest_checkpoint(cut) / "trainer_state.json").read_text())["instance"]["weights"]
    resumed = train(_cfg(small_corpus, sample_dir, cut, **kw))
    assert resumed.resumed_from == 6 and resumed.steps == 8

    a, b = _curve(full), _curve(cut)
    assert [r["step"] for r in a if r["kind"] == "train"] == list(range(1, 9))
    assert a == b  # losses, lr, grad norms, λ, eval metrics, instance-weight stats: bit-identical
    assert [r["step"] for r in a if r["kind"] == "epoch"] == [5, 8]  # the epoch boundary is inside the run
    assert [r["step"] for r in a if r["kind"] == "eval"] == [3, 6]
    wa = load_file(str(latest_checkpoint(full) / "trainable.safetensors"))
    wb = load_file(str(latest_checkpoint(cut) / "trainable.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = json.loads((latest_checkpoint(full) / "trainer_state.json").read_text())
    if estimator == "minibatch":
        assert state["instance"]["weights"]  # samples seen twice got an eq.-5 weight
    losses = [r["nll"] for r in a if r["kind"] == "train"]
    assert losses[-1] < losses[0]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_corpus, sample_dir, tmp_path) -> None:
    out = tmp_path / "nan"

    def poison(step: int, backend) -> None:
        if step == 2:
            with torch.no_grad():
                next(p for p in backend.model.parameters() if p.dim() == 2).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 3 .*Last good checkpoint: .*step-00000002"):
        train(_cfg(small_corpus, sample_dir, out, task_weighting=False), on_step=poison)
    good = latest_checkpoint(out)
    assert good.name == "step-00000002"
    weights = load_file(str(good / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "manifest.json").exists()
    assert [r["step"] for r in read_log(out) if r["kind"] == "train"] == [1, 2]


def test_lora_run_exports_a_merged_hf_model(small_corpus, sample_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    res = train(_cfg(small_corpus, sample_dir, out, lora=True, lora_r=4, max_steps=3, task_weighting=False,
                     export=True, tensorboard=True))
    saved = load_file(str(latest_checkpoint(out) / "trainable.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    model = AutoModelForCausalLM.from_pretrained(res.model_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (res.model_dir / "tokenizer.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 3 and manifest["inputs"]["corpus"]["sha256"]


def test_cli_train_json_and_resume_guard(small_corpus, sample_dir, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    toml = tmp_path / "sft.toml"
    toml.write_text(f'[data]\ncorpus = "{small_corpus}"\ntarget_forms = ["label"]\n'
                    f'[model]\nmodel = "tiny-deepseek-v3"\ntokenizer = "{sample_dir / "tokenizer"}"\n'
                    f'tiny_hidden_size = 64\n[run]\noutput_dir = "{out}"\nbatch_size = 4\nprogress = false\n'
                    'task_weighting = false\ntensorboard = false\nthreads = 1\n')
    assert main(["train", "--config", str(toml), "--max_steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and Path(summary["model_dir"], "config.json").is_file()
    assert main(["train", "--config", str(toml), "--max_steps", "2", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "'lr'" in err


def test_contaminated_public_data_refuses_the_run(small_corpus, sample_dir, tmp_path) -> None:
    gsm8k = Path("/work/shared/data/gsm8k/test.jsonl")
    if not gsm8k.is_file():
        pytest.skip("shared benchmark data not present")
    q = json.loads(gsm8k.read_text().splitlines()[0])["question"]
    public = tmp_path / "public.jsonl"
    public.write_text("".join(json.dumps({"prompt": f"Tell me fact {i} about desks.", "response": f"Fact {i}."})
                              + "\n" for i in range(30)) + json.dumps({"id": "leak", "prompt": q, "response": "18"}) + "\n")
    cfg = dict(public_data=str(public), public_ratio=0.4, decontaminate=[str(gsm8k)], task_weighting=False,
               max_steps=1, target_forms=["label"])
    with pytest.raises(ContaminationError, match="'public:leak'"):
        train(_cfg(small_corpus, sample_dir, tmp_path / "a", **cfg, seed=1))
    res = train(_cfg(small_corpus, sample_dir, tmp_path / "b", **cfg, on_contamination="drop", seed=1))
    refused = [json.loads(x) for x in (tmp_path / "b" / "refused_rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in refused] == ["public:leak"]
    assert res.data["format"]["kept"]["public"] >= 1 and math.isfinite(res.steps)
