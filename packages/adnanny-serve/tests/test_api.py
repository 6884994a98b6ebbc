"""Public API pins and the light-import rule."""

from __future__ import annotations

import subprocess
import sys

import adnanny_serve
import pytest
from adnanny_serve.errors import AdNannyServeError, ConfigError, EngineError, LabelError, QuantizeError


def test_all_is_pinned() -> None:
    assert sorted(adnanny_serve.__all__) == sorted([
        "AdNannyServeError", "ConfigError", "Engine", "EngineError", "Generation", "LabelConfig", "LabelError",
        "QuantizeError", "SamplingParams", "__version__", "baseline_cost_per_million", "cost_per_million",
        "label_file", "load_engine", "quantize_checkpoint",
    ])
    for name in adnanny_serve.__all__:
        assert getattr(adnanny_serve, name) is not None


def test_errors_share_one_base() -> None:
    for cls in (ConfigError, EngineError, LabelError, QuantizeError):
        assert issubclass(cls, AdNannyServeError)


def test_import_is_light() -> None:
    code = ("import adnanny_serve, adnanny_serve.engines, adnanny_serve.server, sys; "
            "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'uvicorn', 'polars', 'ray', 'vllm') "
            "if m in sys.modules]; print(heavy); assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lazy_attribute_error() -> None:
    with pytest.raises(AttributeError, match="nope"):
        adnanny_serve.nope  # noqa: B018
