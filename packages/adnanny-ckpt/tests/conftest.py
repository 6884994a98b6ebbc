import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg():
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    return tiny_deepseek_v3_config(num_nextn_predict_layers=1)


@pytest.fixture(scope="session")
def tiny_fp8_dir(tmp_path_factory, tiny_cfg):
    from adnanny_ckpt.synthetic import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("fp8"), tiny_cfg, dtype="fp8", seed=1,
                                      max_shard_bytes=256 << 10)


@pytest.fixture(scope="session")
def tiny_bf16_dir(tmp_path_factory, tiny_cfg):
    from adnanny_ckpt.synthetic import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("bf16"), tiny_cfg, dtype="bf16", seed=2,
                                      max_shard_bytes=256 << 10)
