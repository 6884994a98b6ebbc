import json
import os

import pytest
import torch

from adnanny_ckpt.errors import CheckpointFormatError, UnsafeInputError
from adnanny_ckpt.safetensors_io import (
    INDEX_NAME,
    HFCheckpointReader,
    ShardedSafetensorsWriter,
    atomic_write_json,
    plan_shards,
)


def _write(d, n=10, max_bytes=3000):
    tensors = {f"t.{i}.weight": torch.arange(i * 100, i * 100 + 256, dtype=torch.float32).view(16, 16)
               for i in range(n)}
    with ShardedSafetensorsWriter(d, max_shard_bytes=max_bytes) as w:
        for k, v in tensors.items():
            w.add(k, v)
    atomic_write_json(d / "config.json", {"x": 1})
    return tensors


def test_writer_shards_and_index_roundtrip(tmp_path):
    tensors = _write(tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]  # 2 x 1 KiB per 3000 B shard
    assert index["metadata"]["total_size"] == 10 * 1024
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left
    r = HFCheckpointReader(tmp_path)
    assert r.names() == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(r.get(k), v)
    assert r.config() == {"x": 1}


def test_reader_bytes_equal_safe_open(tiny_fp8_dir):
    from safetensors import safe_open

    r = HFCheckpointReader(tiny_fp8_dir)
    n = 0
    for name in r.names():
        with safe_open(str(tiny_fp8_dir / r.info(name).file), framework="pt") as fh:
            want = fh.get_tensor(name)
        got = r.get(name)
        assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
        n += 1
    assert n == len(r) > 100


def test_single_shard_has_no_index(tmp_path):
    _write(tmp_path, n=2, max_bytes=1 << 20)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / INDEX_NAME).exists()
    assert len(HFCheckpointReader(tmp_path)) == 2


def test_duplicate_add_refused(tmp_path):
    w = ShardedSafetensorsWriter(tmp_path)
    w.add("a", torch.zeros(2))
    with pytest.raises(CheckpointFormatError, match="`a` was added twice"):
        w.add("a", torch.zeros(2))


def test_truncated_and_missing_shards(tmp_path):
    _write(tmp_path)
    shard = tmp_path / "model-00003-of-00005.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(CheckpointFormatError, match="model-00003-of-00005.safetensors` is truncated"):
        HFCheckpointReader(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointFormatError, match="model-00003-of-00005.safetensors` is listed in the index"):
        HFCheckpointReader(tmp_path)


def test_corrupt_header(tmp_path):
    _write(tmp_path, n=1)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        HFCheckpointReader(tmp_path)


def test_pickle_refused_unless_opted_in(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeInputError, match="allow_pickle=True"):
        HFCheckpointReader(tmp_path)
    r = HFCheckpointReader(tmp_path, allow_pickle=True)
    assert torch.equal(r.get("w"), torch.ones(3))


def test_missing_scale_inv_named(tiny_fp8_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "ck"
    shutil.copytree(tiny_fp8_dir, d)
    index = json.loads((d / INDEX_NAME).read_text())
    name = "model.layers.2.self_attn.o_proj.weight_scale_inv"
    f = index["weight_map"].pop(name)
    sd = load_file(d / f)
    del sd[name]
    save_file(sd, d / f)
    (d / INDEX_NAME).write_text(json.dumps(index))
    r = HFCheckpointReader(d)
    with pytest.raises(CheckpointFormatError, match="o_proj.weight` .* has no `model.layers.2.self_attn.o_proj"):
        r.get_dequantized("model.layers.2.self_attn.o_proj.weight")


def test_plan_shards_is_greedy_and_deterministic():
    sizes = [("a", 5), ("b", 5), ("c", 11), ("d", 1)]
    assert plan_shards(sizes, 10) == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(CheckpointFormatError, match="`max_shard_bytes` must be > 0"):
        plan_shards(sizes, 0)


def test_stream_writer_matches_safetensors_and_checks_order(tmp_path):
    from safetensors.torch import load_file

    from adnanny_ckpt.safetensors_io import SafetensorsStreamWriter

    g = torch.Generator().manual_seed(0)
    ts = {
        "w": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "q": torch.randn(5, 7, generator=g).to(torch.float8_e4m3fn),
        "s": torch.randn(3, generator=g),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(1.5, dtype=torch.float16),
        "empty": torch.empty(0, 4, dtype=torch.bfloat16),
    }
    path = tmp_path / "x.safetensors"
    with SafetensorsStreamWriter(path, [(k, v.dtype, v.shape) for k, v in ts.items()]) as w:
        for k, v in ts.items():
            w.write(k, v)
    back = load_file(str(path))
    assert list(back) and set(back) == set(ts)
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
    assert w.max_write_bytes == 33 * 17 * 2  # the largest tensor, never the file

    bad = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointFormatError, match="expected tensor `a` next, got `b`"):
        with SafetensorsStreamWriter(bad, [("a", "bfloat16", (2,)), ("b", "bfloat16", (2,))]) as w:
            w.write("b", torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(CheckpointFormatError, match=r"`a` .* is float32 \(2,\); the header declared bfloat16"):
        with SafetensorsStreamWriter(bad, [("a", "bfloat16", (2,))]) as w:
            w.write("a", torch.zeros(2))
    with pytest.raises(CheckpointFormatError, match="tensor `b` and later ones were never written"):
        with SafetensorsStreamWriter(bad, [("a", "bfloat16", (2,)), ("b", "bfloat16", (2,))]) as w:
            w.write("a", torch.zeros(2, dtype=torch.bfloat16))
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))  # nothing published, temp removed
