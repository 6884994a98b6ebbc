"""adnanny-sft: multi-task SFT of the AdNanny paper (§4.2, eq. 1-7).

* ``TrainingBackend`` / ``Batch`` (``adnanny_sft.backend``): the training-step protocol; the HF backend lives in
  ``adnanny_sft.hf_backend``, the Megatron one in adnanny-megatron.
* ``instance_weight`` (eq. 3-5) and ``task_weights`` (eq. 6-7); stateful versions in ``adnanny_sft.weighting``.
* ``SFTConfig`` / ``load_config`` / ``train``: the ``adnanny-sft train`` recipe as a Python API.
* ``calibrate_threshold`` / ``Threshold`` (``adnanny_sft.calibration``): the decision threshold on P(non-defect)
  that an exported model carries in ``adnanny_model.json`` (``read_model_manifest``).
* ``adnanny_sft.testing.fine_tuned_fixture()``: the shared fine-tuned tiny model for other packages' tests.

Importing this package loads neither torch nor transformers; they are imported when a run starts.
"""

from adnanny_sft.__about__ import __version__
from adnanny_sft.backend import Batch, TrainingBackend
from adnanny_sft.calibration import Threshold, calibrate_threshold
from adnanny_sft.config import SFTConfig, load_config
from adnanny_sft.errors import (
    AdNannySftError,
    CheckpointError,
    ConfigError,
    ContaminationError,
    DataError,
    NonFiniteLossError,
)
from adnanny_sft.export import read_model_manifest
from adnanny_sft.train import TrainResult, train
from adnanny_sft.weighting import instance_weight, task_weights

__all__ = [
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
