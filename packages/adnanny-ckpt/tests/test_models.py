"""`resolve_model`: built-in names, directories passing through, and errors that name the known names."""

from __future__ import annotations

from pathlib import Path

import adnanny_ckpt
import pytest
from adnanny_ckpt import models
from adnanny_ckpt.errors import AdNannyCkptError
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
