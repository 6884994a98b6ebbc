"""adnanny-sft's backend conformance kit run against the Megatron backend.

Not collected directly (its name does not start with ``test_``): megatron's CUDA->CPU shim is
process-wide, so ``test_backend.py`` runs this module in a fresh pytest subprocess.
"""

from __future__ import annotations

import pytest

from adnanny_sft.testing import TrainingBackendConformance, tiny_llama_config

pytestmark = pytest.mark.filterwarnings("ignore")

_STATE: dict = {}


def _init() -> None:
    if not _STATE:
        from adnanny_megatron import parallel

        parallel.initialize(parallel.Sizes())
        _STATE["ok"] = True


class TestMegatronBackendConformance(TrainingBackendConformance):
    vocab_size = 64
    atol = 1e-5

    def make_backend(self):
        _init()
        from adnanny_megatron import provider
        from adnanny_megatron.backend import MegatronBackend, TrainSettings
        from adnanny_megatron.optim import OptimSettings

        spec = provider.transformer_config_from_hf(tiny_llama_config(self.vocab_size), bf16=False)
        return MegatronBackend(spec, OptimSettings(lr=1e-2, clip_grad=1.0), TrainSettings(), seed=0)


class TestMegatronBackendConformanceSDPA(TrainingBackendConformance):
    """The same kit with the SDPA core attention and all three samples in one micro-batch (mbs 3)."""

    vocab_size = 64
    atol = 1e-5

    def make_backend(self):
        _init()
        from adnanny_megatron import provider
        from adnanny_megatron.backend import MegatronBackend, TrainSettings
        from adnanny_megatron.optim import OptimSettings

        spec = provider.transformer_config_from_hf(tiny_llama_config(self.vocab_size), bf16=False,
                                                   core_attention="sdpa")
        return MegatronBackend(spec, OptimSettings(lr=1e-2, clip_grad=1.0), TrainSettings(micro_batch_size=3),
                               seed=0)
