"""megatron-core's own dist_checkpointing loads (and reshards) what hf_to_mcore writes.

Runs in a subprocess: it initializes a one-process gloo group, which must not leak into the test session.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")


def test_megatron_core_loads_our_torch_dist(tmp_path, tiny_fp8_dir):
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.gguf import smollm2_hf_dir

    smol = hf_to_mcore(smollm2_hf_dir(), tmp_path / "smol", pp=2, tp=3, progress=False)
    tiny = hf_to_mcore(tiny_fp8_dir, tmp_path / "tiny", pp=2, ep=2, tp=2, progress=False)
    script = Path(__file__).with_name("_megatron_load_script.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(smol), str(tiny), str(random.randint(20000, 40000))],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][7:])
    assert r["missing"] == []
    # real pretrained SmolLM2, written PP2 x TP3, loaded into a TP1 megatron GPTModel: same logits as transformers
    assert r["max_abs_diff"] < 1e-3 * r["max_abs"]
    assert r["next_token"].strip() == "Paris"
    assert r["expert_equal"] and r["kv_up_equal"]
    assert r["meta_expert_shape"] == [8, 192, 128]
