"""`resolve_model`: built-in names, directories passing through, and errors that name the known names."""

from __future__ import annotations

from pathlib import Path

import adnanny_ckpt
import pytest
from adnanny_ckpt import models
from adnanny_ckpt.errors import AdNannyCkptError, CheckpointFormatError
from adnanny_ckpt.models import UnknownModelError, builtin_model_names, resolve_model


def test_builtin_names_route_to_the_smollm2_cache(monkeypatch, tmp_path):
    """Every alias goes through gguf.smollm2_hf_dir (patched: the real conversion is tested in test_gguf)."""
    calls = []
    fake = tmp_path / "cache" / "smol"

    def fake_dir(cache_dir=None):
        calls.append(cache_dir)
        return fake

    from adnanny_ckpt import gguf

    monkeypatch.setattr(gguf, "smollm2_hf_dir", fake_dir)
    monkeypatch.chdir(tmp_path)  # no folder named like a built-in here
    for name in ("smollm2", "SmolLM2", " smollm2-135m-instruct", "smollm2-135m"):
        assert resolve_model(name) == fake, name
    assert len(calls) == 4
    assert adnanny_ckpt.resolve_model is resolve_model
    assert {"smollm2", "smollm2-135m-instruct"} <= set(builtin_model_names())


def test_existing_directory_passes_through_and_wins_over_a_name(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_smollm2", lambda: pytest.fail("a directory must not resolve as a built-in"))
    d = tmp_path / "my-model"
    d.mkdir()
    assert resolve_model(d) == d
    assert resolve_model(str(d)) == d
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()  # a user's fine-tuned folder named like the built-in
    monkeypatch.setitem(models.BUILTIN_MODELS, "smollm2", ("x", models._smollm2))
    assert resolve_model("smollm2") == Path("smollm2")


def test_unknown_values_raise_naming_value_and_known_names(tmp_path):
    with pytest.raises(UnknownModelError, match=r"`model` 'gpt-17' is neither an existing directory.*'smollm2'"):
        resolve_model("gpt-17")
    missing = tmp_path / "nope"
    with pytest.raises(UnknownModelError, match=r"nope' is neither an existing directory"):
        resolve_model(missing)
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(UnknownModelError, match=r"is a file, not a model directory"):
        resolve_model(f)
    with pytest.raises(UnknownModelError, match=r"`model` is empty"):
        resolve_model("  ")
    with pytest.raises(UnknownModelError, match=r"got int 3"):
        resolve_model(3)  # type: ignore[arg-type]
    assert issubclass(UnknownModelError, AdNannyCkptError) and issubclass(UnknownModelError, ValueError)


# ------------------------------------------------------------------------------------ the weight-file rule
def _st(path, tensors=None):
    import torch
    from safetensors.torch import save_file

    save_file(tensors or {"w": torch.ones(4, 4), "b": torch.zeros(4)}, str(path))
    return path


def _model(tmp_path, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "tokenizer.json").write_text("{}")
    return d


def test_pickle_only_folder_refused_unless_allowed_naming_the_file(tmp_path):
    from adnanny_ckpt.errors import UnsafeInputError
    from adnanny_ckpt.models import check_model_dir, check_weight_files

    d = _model(tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (d / "training_args.bin").write_bytes(b"x")
    with pytest.raises(UnsafeInputError, match=r"weight file `.*/m/pytorch_model.bin` is a pickle.*--allow-pickle"):
        check_model_dir(d)
    assert check_weight_files(d, allow_pickle=True) == [d / "pytorch_model.bin"]
    _st(d / "model.safetensors")  # safetensors beside the pickle: those are what is read, no opt-in needed
    assert check_model_dir(d) == [d / "model.safetensors"]


def test_corrupt_safetensors_named_with_what_is_wrong(tmp_path):
    import json
    import struct

    from adnanny_ckpt.models import check_weight_files

    good = _st(tmp_path / "good.safetensors")
    raw = good.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])

    def case(name, data):
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(data)
        return d

    with pytest.raises(CheckpointFormatError, match=r"`.*trunc/model.safetensors` is truncated.*need 80 data bytes"):
        check_weight_files(case("trunc", raw[:-10]))
    huge = dict(header)
    huge["w"] = {**header["w"], "data_offsets": [header["w"]["data_offsets"][0], 1 << 40]}
    hb = json.dumps(huge).encode()
    with pytest.raises(CheckpointFormatError, match=r"huge/model.safetensors`: tensor `w` spans bytes"):
        check_weight_files(case("huge", struct.pack("<Q", len(hb)) + hb + raw[8 + hlen:]))
    with pytest.raises(CheckpointFormatError, match=r"big/model.safetensors` has a 104857600-byte .*limit"):
        check_weight_files(case("big", struct.pack("<Q", 100 << 20) + b" " * 64))
    with pytest.raises(CheckpointFormatError, match=r"short/model.safetensors` is truncated \(3 bytes\)"):
        check_weight_files(case("short", b"abc"))
    with pytest.raises(CheckpointFormatError, match=r"json/model.safetensors` has a corrupt safetensors header"):
        check_weight_files(case("json", struct.pack("<Q", 4) + b"{no}"))
    d = case("idx", raw)
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00002.safetensors"}}')
    with pytest.raises(CheckpointFormatError, match=r"model-00002.safetensors` is listed in .* does not exist"):
        check_weight_files(d)
    assert check_weight_files(case("ok", raw)) == [tmp_path / "ok" / "model.safetensors"]


def test_folder_without_tokenizer_or_weights_or_config(tmp_path):
    from adnanny_ckpt.models import check_model_dir

    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(CheckpointFormatError, match=r"`.*/m` has no config.json"):
        check_model_dir(d)
    (d / "config.json").write_text("{}")
    with pytest.raises(CheckpointFormatError, match=r"`.*/m` has no weight files"):
        check_model_dir(d)
    _st(d / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"`.*/m` has no tokenizer \(none of tokenizer.json"):
        check_model_dir(d)
    assert check_model_dir(d, tokenizer=False) == [d / "model.safetensors"]
