"""FP8 export of an HF checkpoint, in DeepSeek-V3's own format (paper §5.5, Table 9).

What we write, tensor by tensor (streamed: one tensor in memory plus at most one output shard):

* the ``weight`` of every projection linear (adnanny-ckpt's :func:`~adnanny_ckpt.fp8.keeps_bf16` is False)
  -> ``float8_e4m3fn`` + ``<name>_scale_inv`` (FP32, one per 128x128 block, ragged edge blocks allowed),
  with adnanny-ckpt's :func:`~adnanny_ckpt.fp8.quantize_blocks` (DeepSeek's ``amax / 448`` recipe);
* everything else (embeddings, norms, router gate, ``lm_head``) -> BF16 as in DeepSeek's release, except
  ``e_score_correction_bias`` which DeepSeek keeps FP32;
* ``config.json`` gains ``quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme":
  "dynamic", "weight_block_size": [128, 128]}`` and ``torch_dtype = "bfloat16"``, so vLLM and transformers
  load it like DeepSeek's checkpoint; tokenizer and generation files are copied.

The output directory appears atomically (written under a temporary sibling name, then renamed), so a killed
export never leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_serve.errors import QuantizeError

__all__ = ["FP8_QUANTIZATION_CONFIG", "QuantizeReport", "quantize_checkpoint"]

FP8_QUANTIZATION_CONFIG: dict[str, Any] = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}

_SKIP_FILES = {"config.json", "model.safetensors.index.json", "manifest.json"}


@dataclass(frozen=True)
class QuantizeReport:
    """What an export did: counts and bytes in and out."""

    out_dir: str
    fp8_tensors: int
    bf16_tensors: int
    bytes_in: int
    bytes_out: int
    seconds: float


def _should_quantize(name: str, shape: tuple[int, ...], dtype: str) -> bool:
    from adnanny_ckpt.fp8 import keeps_bf16

    return len(shape) == 2 and dtype in ("float32", "bfloat16", "float16") and not keeps_bf16(name)


def quantize_checkpoint(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_bytes: int = 5 << 30,
    overwrite: bool = False,
) -> QuantizeReport:
    """Write an FP8 copy of the BF16/FP32 HF checkpoint ``model_dir`` to ``out_dir``."""
    import torch
    from adnanny_ckpt.fp8 import BLOCK, quantize_blocks, scale_inv_name
    from adnanny_ckpt.safetensors_io import HFCheckpointReader, ShardedSafetensorsWriter, atomic_write_json

    t0 = time.perf_counter()
    src, dst = Path(model_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise QuantizeError(f"`model` must be an HF checkpoint dir with config.json; got {str(src)!r}.")
    from adnanny_ckpt.errors import AdNannyCkptError
    from adnanny_ckpt.models import check_weight_files

    try:  # the shared weight-file rule: safetensors only, each validated (named when truncated or forged)
        check_weight_files(src)
    except AdNannyCkptError as e:
        raise QuantizeError(str(e)) from None
    if dst.exists():
        if not overwrite:
            raise QuantizeError(f"`out` {str(dst)!r} already exists; remove it or pass `--overwrite`.")
    if dst.resolve() == src.resolve():
        raise QuantizeError("`out` must differ from `model`; the export never writes over its input.")
    config = json.loads((src / "config.json").read_text())
    qc = config.get("quantization_config")
    if qc:
        raise QuantizeError(
            f"`model` {str(src)!r} is already quantized (quantization_config={qc!r}); export from the BF16 checkpoint."
        )
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n_fp8 = n_bf16 = 0
    try:
        with HFCheckpointReader(src) as reader:
            bytes_in = reader.total_bytes()
            with ShardedSafetensorsWriter(tmp, max_shard_bytes=max_shard_bytes) as writer:
                for name in reader.names():
                    info = reader.info(name)
                    t = reader.get(name)
                    if _should_quantize(name, tuple(info.shape), info.dtype):
                        q, s = quantize_blocks(t, BLOCK, name=name)  # [M,N] fp8, [ceil(M/128),ceil(N/128)] fp32
                        writer.add(name, q)
                        writer.add(scale_inv_name(name), s)
                        n_fp8 += 1
                    else:
                        if t.dtype.is_floating_point and t.dtype.itemsize > 2 and "e_score_correction_bias" not in name:
                            t = t.to(torch.bfloat16)
                        writer.add(name, t.contiguous())
                        n_bf16 += 1
                    del t
                bytes_out = writer.total_size
        if n_fp8 == 0:
            raise QuantizeError(
                f"`model` {str(src)!r} has no projection weights (`*_proj.weight`) to quantize; nothing was exported."
            )
        config["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
        config["torch_dtype"] = "bfloat16"
        if "dtype" in config:
            config["dtype"] = "bfloat16"
        atomic_write_json(tmp / "config.json", config)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt") and f.name not in _SKIP_FILES:
                shutil.copy2(f, tmp / f.name)
        cfg_hash = hashlib.sha256((src / "config.json").read_bytes()).hexdigest()
        from adnanny_serve.__about__ import __version__

        atomic_write_json(tmp / "manifest.json", {
            "stage": "adnanny-serve quantize", "version": __version__, "input": str(src.resolve()),
            "input_config_sha256": cfg_hash, "quantization_config": FP8_QUANTIZATION_CONFIG,
            "fp8_tensors": n_fp8, "bf16_tensors": n_bf16, "bytes_in": bytes_in, "bytes_out": bytes_out,
        })
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return QuantizeReport(str(dst), n_fp8, n_bf16, bytes_in, bytes_out, time.perf_counter() - t0)
