"""The `adnanny_sft.backends` entry point: adnanny-sft builds the Megatron backend from plain arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from adnanny_megatron.errors import AdNannyMegatronError

pytestmark = pytest.mark.filterwarnings("ignore")


def test_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    from adnanny_megatron.sft_backend import build_megatron_backend

    eps = {e.name: e for e in entry_points(group="adnanny_sft.backends")}
    assert "megatron" in eps, "reinstall adnanny-megatron (pip install -e) to register its entry point"
    assert eps["megatron"].load() is build_megatron_backend


def test_bad_arguments_are_refused() -> None:
    from adnanny_megatron.sft_backend import build_megatron_backend, resolve_device

    with pytest.raises(AdNannyMegatronError, match=r"`device` must be cpu, cuda or auto, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(AdNannyMegatronError, match=r"set `lora = false`"):
        build_megatron_backend({}, lora=object())
    with pytest.raises(AdNannyMegatronError, match=r"`dtype` 'float16' unsupported"):
        build_megatron_backend({}, dtype="float16")


def test_factory_loads_hf_weights_and_matches_hf_nll(tiny_hf: Path, tmp_path: Path, run_py) -> None:
    """Built through the entry point from an HF dir: converted by adnanny-ckpt, loaded, and its per-sample NLL
    equals transformers' on the same batch (fp32); one training step runs."""
    code = f"""
import warnings; warnings.simplefilter('ignore')
from importlib.metadata import entry_points
import torch
from transformers import AutoModelForCausalLM
from adnanny_sft.backend import Batch
factory = {{e.name: e for e in entry_points(group='adnanny_sft.backends')}}['megatron'].load()
be = factory({str(tiny_hf)!r}, dtype='float32', seed=0, device='cpu', lr=1e-3, total_steps=2,
             convert_dir={str(tmp_path / 'mc')!r})
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 512, (2, 12), generator=g)
lm = torch.zeros(2, 12); lm[:, 6:] = 1.0
b = Batch(input_ids=ids, attention_mask=torch.ones(2, 12, dtype=torch.long), loss_mask=lm,
          sample_weights=torch.full((2,), 0.5))
got = be.per_sample_nll(b)
hf = AutoModelForCausalLM.from_pretrained({str(tiny_hf)!r}, torch_dtype=torch.float32).eval()
with torch.no_grad():
    logp = torch.log_softmax(hf(ids).logits.float(), -1)
tok = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
ref = -(tok * lm[:, 1:]).sum(1) / lm[:, 1:].sum(1)
print('DIFF', float((got - ref).abs().max()), float(ref.abs().max()))
be.forward_backward(b); print('STEP', be.optimizer_step()['skipped'])
"""
    out = run_py(code).stdout
    diff, scale = (float(x) for x in out.split("DIFF")[1].split()[:2])
    assert diff <= 1e-4 * max(1.0, scale), out
    assert "STEP 0.0" in out


@pytest.mark.slow  # ~1.5 min: a 4-process run plus the HF backend
def test_factory_pp2_ep2_loss_curve_equals_hf_backend(tiny_hf: Path, tmp_path: Path) -> None:
    """sft's HF backend and the Megatron backend built by the entry-point factory (PP2 x EP2 over gloo, stage 0 =
    the dense layer: `stage_layers` 1,3) give the same loss curve on the same batches, within 1e-5 rel. per step."""
    import json
    import os
    import subprocess
    import sys

    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.testing import make_batch

    from adnanny_megatron.launch import _free_port

    steps, opts = 3, dict(lr=1e-3, max_grad_norm=1.0, total_steps=3, lr_schedule="constant", seed=0)
    batches = [make_batch(512, seed=s, batch=4, length=12, pad_last=3, weights=[0.25] * 4) for s in range(steps)]
    hf = build_hf_backend(str(tiny_hf), dtype="float32", **opts)
    ref = []
    for b in batches:
        ref.append(float((hf.forward_backward(b) * b.sample_weights).sum()))
        hf.optimizer_step()
    script = tmp_path / "worker.py"
    script.write_text(f"""
import json, warnings; warnings.simplefilter('ignore')
import torch.distributed as dist
from importlib.metadata import entry_points
from adnanny_sft.testing import make_batch
factory = {{e.name: e for e in entry_points(group='adnanny_sft.backends')}}['megatron'].load()
be = factory({str(tiny_hf)!r}, dtype='float32', device='cpu', layout='pp2,ep2', stage_layers='1,3',
             convert_dir={str(tmp_path / 'mc')!r}, **{opts!r})
out = []
for s in range({steps}):
    b = make_batch(512, seed=s, batch=4, length=12, pad_last=3, weights=[0.25] * 4)
    out.append(float((be.forward_backward(b) * b.sample_weights).sum()))
    be.optimizer_step()
if dist.get_rank() == 0:
    open({str(tmp_path / 'mg.json')!r}, 'w').write(json.dumps(out))
dist.barrier()
""")
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-addr",
                          "127.0.0.1", "--master-port", str(_free_port()), str(script)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads((tmp_path / "mg.json").read_text())
    assert len(got) == steps and len({round(x, 4) for x in ref}) > 1
    for a, b in zip(ref, got, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (ref, got)


# ---------------------------------------------------------------------- `adnanny-sft train --backend megatron`
@pytest.fixture(scope="module")
def sft_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 48-row slice of cook's sample corpus, the sample tokenizer)."""
    from adnanny_cook.corpus import read_corpus, write_corpus
    from adnanny_cook.sample import make_sample

    sample = tmp_path_factory.mktemp("sample")
    make_sample(sample, 0)
    rows = read_corpus(sample / "corpus").to_dicts()
    keep = [r for r in rows if r["split"] == "train" and r["task"] in ("query_ad", "ad_user")][:40]
    keep += [r for r in rows if r["split"] == "eval" and r["task"] in ("query_ad", "ad_user")][:8]
    corpus = tmp_path_factory.mktemp("corpus")
    write_corpus(keep, corpus)
    return corpus, sample / "tokenizer"


def _sft_args(world: tuple[Path, Path], out: Path, steps: int, **extra: str) -> list[str]:
    corpus, tok = world
    args = {"corpus": str(corpus), "tokenizer": str(tok), "tiny_hidden_size": "64", "output_dir": str(out),
            "batch_size": "4", "grad_accum": "2", "max_steps": str(steps), "lr": "3e-3", "warmup_steps": "1",
            "target_forms": "label", "task_weighting": "false", "evaluate": "false", "threshold_method": "none",
            "export": "false", "progress": "false", "tensorboard": "false", "threads": "1", "device": "cpu", **extra}
    return ["train", *[x for k, v in args.items() for x in (f"--{k}", v)]]


def _hf_curve(world: tuple[Path, Path], out: Path, steps: int) -> list[float]:
    from adnanny_sft.cli import main
    from adnanny_sft.logs import read_log

    assert main(_sft_args(world, out, steps)) == 0
    return [r["loss"] for r in read_log(out) if r["kind"] == "train"]


def _check_curves(ref: list[float], got: list[float]) -> None:
    assert len(got) == len(ref) and len({round(x, 4) for x in ref}) > 1, (ref, got)
    for a, b in zip(ref, got, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (ref, got)


def test_sft_train_megatron_backend_equals_hf_backend_one_process(sft_world, tmp_path: Path) -> None:
    """`adnanny-sft train --backend megatron` (found through the entry point; one process = a 1-rank world) runs
    the recipe — same formatting, sampler, instance weights, logs, checkpoints — and its loss curve equals the HF
    backend's within 1e-5 rel. per step; its in-training evaluation and threshold use the forward-only
    log-likelihood scorer; the exported model is the last checkpoint converted by adnanny-ckpt."""
    import json
    import subprocess
    import sys

    import os

    from adnanny_sft.logs import read_log

    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    steps = 3
    ref = _hf_curve(sft_world, tmp_path / "hf", steps)
    out = tmp_path / "mg"
    args = _sft_args(sft_world, out, steps, backend="megatron", evaluate="true", task_eval_every="3",
                     eval_rows_per_task="4", threshold_method="max_bacc", export="true")
    res = subprocess.run([sys.executable, "-m", "adnanny_sft.cli", *args], capture_output=True, text=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    log = read_log(out)
    _check_curves(ref, [r["loss"] for r in log if r["kind"] == "train"])
    evals = [r for r in log if r["kind"] == "eval"]
    assert len(evals) == 1 and set(evals[0]["metrics"]) == {"query_ad", "ad_user"}
    assert evals[0]["details"]["query_ad"]["parse_error_rate"] == 0.0  # scored, never parsed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["backend"] == "megatron" and manifest["steps"] == steps
    ckpt = out / "checkpoints" / f"step-{steps:08d}"
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "metadata.json").is_file()
    # the export is the last checkpoint merged by adnanny-ckpt; the threshold calibrated through the
    # log-likelihood scorer on the sharded model equals HF scoring of the exported model
    from adnanny_sft.data import read_rows, task_specs
    from adnanny_sft.export import calibrate_tasks, read_model_manifest
    from adnanny_sft.hf_backend import load_causal_lm
    from adnanny_sft.models import load_tokenizer

    model_dir = out / "model"
    th = manifest["thresholds"]["query_ad"]  # calibrated through the scorer
    assert read_model_manifest(model_dir)["tasks"]["query_ad"]["threshold"] == th["threshold"]
    corpus = sft_world[0]
    specs = task_specs(str(corpus), {"query_ad", "ad_user"}, labels=[])
    hf = calibrate_tasks(load_causal_lm(model_dir), load_tokenizer(model_dir), specs,
                         read_rows(str(corpus), split="eval"), method="max_bacc", max_rows=2000)
    assert hf["query_ad"]["threshold"] == pytest.approx(th["threshold"], abs=1e-4)
    assert hf["query_ad"]["val_auc"] == pytest.approx(th["val_auc"], abs=1e-6)


@pytest.mark.slow  # ~1-4 min on the shared CPU (54 s at load 4-6): 4 ranks under torchrun plus the HF run
def test_sft_train_megatron_pp2_ep2_equals_hf_backend(sft_world, tmp_path: Path) -> None:
    """The same recipe under torchrun on PP2 x EP2 (gloo, 4 processes, stage 0 = the dense layer) gives the HF
    backend's loss curve within 1e-5 rel. per step; rank 0 alone writes the log; resuming from the step-2
    checkpoint (collective torch_dist shards + rank 0's trainer state) reproduces step 3 exactly."""
    import shutil

    from adnanny_sft.logs import read_log

    from adnanny_megatron.launch import check_ok, run_torchrun

    steps = 3
    ref = _hf_curve(sft_world, tmp_path / "hf", steps)
    out = tmp_path / "mg"
    args = _sft_args(sft_world, out, steps, backend="megatron", layout="pp2,ep2", stage_layers="1,3",
                     save_every="2", keep_checkpoints="5")
    check_ok(run_torchrun(4, args, module="adnanny_sft.cli", timeout_s=1200))
    first = [r["loss"] for r in read_log(out) if r["kind"] == "train"]
    _check_curves(ref, first)
    shutil.rmtree(out / "checkpoints" / f"step-{steps:08d}")  # as if killed after step 2's checkpoint
    res = check_ok(run_torchrun(4, [*args, "--json"], module="adnanny_sft.cli", timeout_s=1200))
    assert '"resumed_from": 2' in res.output, res.output[-2000:]
    again = [r["loss"] for r in read_log(out) if r["kind"] == "train"]
    assert again == first, (first, again)
