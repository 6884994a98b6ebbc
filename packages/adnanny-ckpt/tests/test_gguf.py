import json
import multiprocessing as mp
import time

import pytest

from adnanny_ckpt.gguf import smollm2_hf_dir


def test_smollm2_hf_dir_is_a_real_llama_that_speaks():
    transformers = pytest.importorskip("transformers")
    import torch

    d = smollm2_hf_dir()
    t = time.time()
    assert smollm2_hf_dir() == d
    assert time.time() - t < 0.5
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert "quantization_config" not in cfg
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"


def _worker(cache, q):
    from adnanny_ckpt.gguf import smollm2_hf_dir

    q.put(str(smollm2_hf_dir(cache)))


@pytest.mark.slow
def test_concurrent_first_conversion(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    outs = {q.get(timeout=5) for _ in procs}
    assert len(outs) == 1
    d = outs.pop()
    assert json.loads((tmp_path / d.split("/")[-1] / "manifest.json").read_text())["files"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
