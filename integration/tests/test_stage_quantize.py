"""The quantize stage on adnanny-sft's shared fine-tuned fixture: a real FP8 export that adnanny-serve loads, the
model's task definitions and threshold carried over, weight sizes measured, honest --dry-run lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adnanny.stage import StageContext, Support
from adnanny.stages.quantize import FP8_DIR, STAGE, Config, StageInputError, model_dir_of, source_model
from adnanny_cook.settings import load_settings


@pytest.fixture(scope="module")
def model() -> Path:
    from adnanny_sft.testing import fine_tuned_fixture

    return fine_tuned_fixture()


def test_quantize_writes_a_loadable_fp8_model_with_tasks_and_threshold(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "quantize"
    out.mkdir()
    res = STAGE.run(StageContext("quantize", out, tmp_path, {"train": model.parent}, Config(), None,
                                 log=lambda s: None))
    fp8 = out / res.artifacts["model"]
    assert res.artifacts == {"model": FP8_DIR}
    cfg = json.loads((fp8 / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8"
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    assert (fp8 / "tasks" / "query_ad.toml").read_text() == (model / "tasks" / "query_ad.toml").read_text()
    assert json.loads((fp8 / "adnanny_model.json").read_text()) == json.loads((model / "adnanny_model.json").read_text())
    wb = res.metrics["weight_bytes"]
    assert set(wb) >= {"bf16", "fp8"} and all(isinstance(v, int) for v in wb.values())
    assert 0 < wb["fp8"] < wb["bf16"] <= wb["input"]
    assert res.metrics["fp8_tensors"] > 0 and res.lineage["quantized_from"] == str(model)
    assert model_dir_of(out) == fp8  # how the label stage finds it without the engine's manifest

    from adnanny_serve.fp8_load import is_fp8_checkpoint

    assert is_fp8_checkpoint(fp8)
    # a rerun (resume of a stage killed after the export) replaces the export instead of refusing it
    again = STAGE.run(StageContext("quantize", out, tmp_path, {"train": model.parent}, Config(), None,
                                   log=lambda s: None))
    assert again.metrics["weight_bytes"] == wb
    assert STAGE.trace(out, "any-id") is None


def test_source_model_prefers_align_and_names_what_is_missing(model: Path, tmp_path: Path) -> None:
    align = tmp_path / "align"
    (align / "policy").mkdir(parents=True)
    (align / "policy" / "config.json").write_text("{}")
    (align / "manifest.json").write_text(json.dumps({"artifacts": {"model": "policy"}}))
    inputs = {"train": model.parent, "align": align}
    assert source_model(inputs) == ("align", align / "policy")
    assert source_model(inputs, "train") == ("train", model)
    assert source_model({"train": model.parent}) == ("train", model)
    with pytest.raises(StageInputError, match=r"no align stage folder among the inputs \['train'\]"):
        source_model({"train": model.parent}, "align")
    with pytest.raises(StageInputError, match="holds no exported model"):
        model_dir_of(tmp_path / "empty")


def test_config_and_supports() -> None:
    with pytest.raises(ValueError, match=r"unknown key `max_shard` \(did you mean `max_shard_gb`\?\)"):
        load_settings(Config, overrides={"max_shard": 1}, error=ValueError, what="quantize")
    lines = STAGE.supports(Config(), None)
    assert all(isinstance(s, Support) for s in lines) and all(s.supported for s in lines)
    assert "FP8 export" in lines[0].what and "dequantized at load" in lines[1].what
    import importlib.util
    from types import SimpleNamespace

    import torch

    cuda = torch.cuda.is_available()
    gpu = STAGE.supports(Config(), SimpleNamespace(label=SimpleNamespace(device="cuda", engine="transformers")))[1]
    assert "fp8_weights=keep" in gpu.what and gpu.supported is cuda and (cuda or gpu.why == "no CUDA device")
    vl = STAGE.supports(Config(), SimpleNamespace(label=SimpleNamespace(device="cuda", engine="vllm")))[1]
    assert vl.supported is (cuda and importlib.util.find_spec("vllm") is not None)


def test_task_home_falls_back_to_the_train_model(model: Path, tmp_path: Path) -> None:
    from adnanny.stages.quantize import task_home

    aligned = tmp_path / "align" / "model"  # adnanny-rl saves weights + tokenizer, no tasks/ or threshold
    aligned.mkdir(parents=True)
    (aligned / "config.json").write_text("{}")
    assert task_home(model, {}) == model
    assert task_home(aligned, {"train": model.parent}) == model
    with pytest.raises(StageInputError, match="stores no task definitions under tasks/"):
        task_home(aligned, {})
