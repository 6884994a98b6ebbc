"""The public API is pinned, and `import adnanny_sft` stays light (no torch/transformers)."""

from __future__ import annotations

import subprocess
import sys

import adnanny_sft

EXPECTED = [
    "AdNannySftError",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "ContaminationError",
    "DataError",
    "NonFiniteLossError",
    "SFTConfig",
    "Threshold",
    "TrainResult",
    "TrainingBackend",
    "__version__",
    "calibrate_threshold",
    "instance_weight",
    "load_config",
    "read_model_manifest",
    "task_weights",
    "train",
]


def test_all_is_pinned() -> None:
    assert sorted(adnanny_sft.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(adnanny_sft, name) is not None


def test_import_is_light() -> None:
    code = ("import sys, adnanny_sft, adnanny_sft.backend, adnanny_sft.weighting, adnanny_sft.config, "
            "adnanny_sft.calibration, adnanny_sft.export, adnanny_sft.fixture; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'polars') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
