"""A checkpoint saved by MegatronBackend converts back to a servable HF dir with `adnanny-ckpt mcore-to-hf`.

The backend's `save` writes adnanny-ckpt's descriptor (layout, architecture, HF source), so the reverse
conversion needs nothing but `--mcore DIR`: optimizer state is ignored and padded vocabulary rows are trimmed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")

VOCAB = 500  # not a multiple of 128: megatron pads it to 512, the conversion must trim it back


@pytest.fixture(scope="module")
def odd_vocab_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("odd-vocab") / "hf"
    write_synthetic_checkpoint(out, tiny_deepseek_v3_config(vocab_size=VOCAB, fp8=False), dtype="bf16", seed=3)
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))  # copied to the output
    (out / "modeling_deepseek.py").write_text("# remote code stand-in: config.json's auto_map points here\n")
    return out


def _train_and_save(run_py, hf: Path | None, tmp: Path, steps: int = 2) -> Path:
    """Train ``steps`` steps in one process, save, and dump Megatron's own fp32 logits of a fixed batch."""
    model = repr(str(hf)) if hf is not None else (
        "__import__('adnanny_ckpt.synthetic', fromlist=['x']).tiny_deepseek_v3_config(vocab_size=500, fp8=False)")
    code = f"""
import warnings; warnings.simplefilter('ignore')
import torch
from adnanny_megatron.sft_backend import build_megatron_backend
from adnanny_sft.testing import make_batch
be = build_megatron_backend({model}, dtype='float32', seed=0, device='cpu', lr=5e-3, total_steps={steps},
                            convert_dir={str(tmp / 'mc')!r})
for s in range({steps}):
    be.forward_backward(make_batch({VOCAB}, seed=s, batch=2, length=10, weights=[0.5, 0.5]))
    be.optimizer_step()
be.save({str(tmp / 'ckpt')!r})
ids = torch.randint(0, {VOCAB}, (2, 9), generator=torch.Generator().manual_seed(7))
gpt = be.model[0].module.eval()
with torch.no_grad():
    logits = gpt(ids, torch.arange(9)[None].expand(2, 9), None)
torch.save({{'ids': ids, 'logits': logits.float()}}, {str(tmp / 'logits.pt')!r})
"""
    run_py(code)
    return tmp / "ckpt"


def test_trained_checkpoint_converts_back_and_matches_megatron_logits(odd_vocab_hf: Path, tmp_path: Path,
                                                                       run_py) -> None:
    from transformers import AutoModelForCausalLM

    from adnanny_ckpt import mcore_to_hf
    from adnanny_ckpt.cli import main
    from adnanny_ckpt.safetensors_io import HFCheckpointReader

    ckpt = _train_and_save(run_py, odd_vocab_hf, tmp_path)
    desc = json.loads((ckpt / "adnanny_ckpt.json").read_text())
    assert desc["saved_by"] == "adnanny-megatron" and desc["step"] == 2 and desc["iteration_dir"] == "."
    assert desc["source"] == str(odd_vocab_hf.resolve()) and desc["padded_vocab_size"] == 512
    assert desc["layout"]["pp"] == 1 and desc["layout"]["stages"] == [[0, 1, 2, 3]]

    out = tmp_path / "hf32"
    assert main(["mcore-to-hf", "--mcore", str(ckpt), "--out", str(out), "--dtype", "float32", "--no-progress"]) == 0
    r = HFCheckpointReader(out)
    assert r.info("model.embed_tokens.weight").shape == (VOCAB, 128)  # padded rows trimmed
    assert r.info("lm_head.weight").shape == (VOCAB, 128)
    assert not [n for n in r.names() if "exp_avg" in n or "optimizer" in n]
    for f in ("tokenizer_config.json", "generation_config.json", "modeling_deepseek.py"):
        assert (out / f).is_file(), f
    ref = torch.load(tmp_path / "logits.pt")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(ref["ids"]).logits.float()
    want = ref["logits"][..., :VOCAB]
    # fp32 on both sides; tolerance: 1e-4 relative to the largest logit (different kernels, same weights)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))

    # default dtype = the source's format (BF16 here; FP32 routing bias as in the source)
    bf = HFCheckpointReader(mcore_to_hf(ckpt, tmp_path / "hfsrc", progress=False))
    src = HFCheckpointReader(odd_vocab_hf)
    assert {n: bf.info(n).dtype for n in bf.names()} == {n: src.info(n).dtype for n in src.names()}


def test_random_init_checkpoint_needs_a_tokenizer(odd_vocab_hf: Path, tmp_path: Path, run_py, capsys) -> None:
    from adnanny_ckpt.cli import main

    ckpt = _train_and_save(run_py, None, tmp_path, steps=1)
    assert json.loads((ckpt / "adnanny_ckpt.json").read_text())["source"] is None
    assert main(["mcore-to-hf", "--mcore", str(ckpt), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "trained from random initialisation (no HF source): pass `tokenizer=DIR`" in capsys.readouterr().err
    out = tmp_path / "hf"
    assert main(["mcore-to-hf", "--mcore", str(ckpt), "--out", str(out), "--tokenizer", str(odd_vocab_hf),
                 "--no-progress"]) == 0
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB
