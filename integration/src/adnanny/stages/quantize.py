"""The `quantize` stage: an FP8 export of the trained AdNanny with `adnanny-serve quantize` (paper §5.5, Table 9).

Input: the aligned model (`align`'s folder), or the SFT model (`train`'s) when alignment is disabled. Output:
`quantize/model-fp8/` — DeepSeek-V3's own FP8 layout (projection weights `float8_e4m3fn` with 128x128
`weight_scale_inv` blocks, the rest BF16, `quantization_config` in `config.json`), written atomically by
adnanny-serve — plus the model's task definitions and `adnanny_model.json` (calibrated thresholds), so that the
label stage can run the FP8 copy exactly as it runs the BF16 one (same prompts, same threshold).

Metric `weight_bytes`: `bf16` is what the weights take in BF16 (every floating tensor at 2 bytes, the way
DeepSeek ships its BF16 checkpoint; our CPU-trained models are stored in FP32, which is recorded as `input`);
`fp8` is the size of the exported safetensors shards, scales included. The ratio is the memory half of
Table 9's claim; the accuracy half is measured by the label stage on the same rows.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from adnanny.stage import StageContext, StageResult, Support
from adnanny_cook.settings import Settings

__all__ = ["FP8_DIR", "Config", "QuantizeStage", "STAGE", "model_dir_of", "source_model", "task_home"]

FP8_DIR = "model-fp8"
#: files of an exported AdNanny model dir that describe how to use it (not weights); copied next to the FP8 weights
_MODEL_EXTRAS = ("adnanny_model.json",)


class StageInputError(ValueError):
    """An input stage folder does not hold what this stage needs (names the folder and what is missing)."""


class Config(Settings):
    """`[quantize]` table of the flow config."""

    source: str = Field("auto", description="which model to quantize: `auto` (align's when the flow ran it, else "
                                            "train's), `align` or `train`")
    max_shard_gb: float = Field(5.0, gt=0, description="largest safetensors shard of the FP8 export, in GiB")


def model_dir_of(folder: Path) -> Path:
    """The exported HF model dir inside a finished stage folder.

    Reads the folder's `manifest.json` artifact `model` (what the engine recorded from the stage's
    `StageResult.artifacts`), else `<folder>/model` (train, align) or `<folder>/model-fp8` (quantize), else the
    folder itself when it holds `config.json`.
    """
    folder = Path(folder)
    candidates: list[Path] = []
    mf = folder / "manifest.json"
    if mf.is_file():
        try:
            arts = json.loads(mf.read_text()).get("artifacts") or {}
        except ValueError:
            arts = {}
        if isinstance(arts, dict) and isinstance(arts.get("model"), str):
            candidates.append(folder / arts["model"])
    candidates += [folder / "model", folder / FP8_DIR, folder]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise StageInputError(f"stage folder `{folder}` holds no exported model (looked for "
                          f"{', '.join(str(c) for c in candidates)} with a config.json)")


def source_model(inputs: dict[str, Path] | Any, source: str = "auto") -> tuple[str, Path]:
    """(stage name, model dir) of the model a downstream stage works on: align's, or train's without align."""
    order = {"auto": ("align", "train"), "align": ("align",), "train": ("train",)}.get(source)
    if order is None:
        raise StageInputError(f"`source` must be auto, align or train; got {source!r}")
    for name in order:
        if name in inputs and inputs[name] is not None:
            return name, model_dir_of(Path(inputs[name]))
    raise StageInputError(f"no {' or '.join(order)} stage folder among the inputs {sorted(inputs)}; "
                          "enable the train stage (and align, if `source = \"align\"`)")


def task_home(model_dir: Path, inputs: Any) -> Path:
    """The model dir whose `tasks/*.toml` (and `adnanny_model.json`) describe `model_dir`'s tasks: itself when it
    has them (an adnanny-sft export), else the train stage's model it was made from (an aligned model that was
    saved without them)."""
    if (Path(model_dir) / "tasks").is_dir():
        return Path(model_dir)
    if "train" in inputs and inputs["train"] is not None:
        train = model_dir_of(Path(inputs["train"]))
        if (train / "tasks").is_dir():
            return train
    raise StageInputError(f"model dir `{model_dir}` stores no task definitions under tasks/ (an adnanny-sft export "
                          "writes them) and no train stage folder provides them")


def weight_bytes(model_dir: Path) -> dict[str, int]:
    """{"input": bytes as stored, "bf16": bytes in BF16 (floating tensors at 2 bytes)} of an HF checkpoint."""
    from adnanny_ckpt.safetensors_io import HFCheckpointReader

    stored = bf16 = 0
    with HFCheckpointReader(model_dir) as reader:
        for name in reader.names():
            info = reader.info(name)
            stored += int(info.nbytes)
            numel = 1
            for d in info.shape:
                numel *= int(d)
            floating = info.dtype in ("float32", "float64", "bfloat16", "float16")
            bf16 += numel * 2 if floating else int(info.nbytes)
    return {"input": stored, "bf16": bf16}


class QuantizeStage:
    """FP8 export of the stage's source model (see the module docstring)."""

    name = "quantize"
    requires: tuple[str, ...] = ("train", "align")
    optional_requires: tuple[str, ...] = ("align",)  # absent when the flow switches them off
    Config = Config

    def run(self, ctx: StageContext) -> StageResult:
        from adnanny_serve import quantize_checkpoint

        cfg: Config = ctx.config
        src_stage, src = source_model(ctx.inputs, cfg.source)
        dst = ctx.out / FP8_DIR
        ctx.log(f"quantize: FP8 export of {src_stage}'s model {src} -> {dst}")
        # overwrite: a killed earlier attempt never leaves a half export under the final name (adnanny-serve
        # writes a temporary sibling and renames), so an existing dir here is a finished export of older inputs
        rep = quantize_checkpoint(src, dst, max_shard_bytes=int(cfg.max_shard_gb * (1 << 30)), overwrite=True)
        for extra in _MODEL_EXTRAS:
            if (src / extra).is_file():
                shutil.copy2(src / extra, dst / extra)
        # the task definitions the model was trained on (adnanny-serve label reads them); an aligned model saved
        # without them gets its train model's. Its threshold file is copied only from the model itself: a threshold
        # calibrated for another model would not describe this one.
        home = task_home(src, ctx.inputs)
        shutil.copytree(home / "tasks", dst / "tasks", dirs_exist_ok=True)
        sizes = weight_bytes(src)
        metrics = {
            "weight_bytes": {"bf16": sizes["bf16"], "fp8": int(rep.bytes_out), "input": sizes["input"]},
            "fp8_tensors": rep.fp8_tensors, "bf16_tensors": rep.bf16_tensors, "seconds": round(rep.seconds, 3),
        }
        ratio = rep.bytes_out / sizes["bf16"] if sizes["bf16"] else float("nan")
        notes = [f"FP8 export of {src_stage}'s model: {rep.fp8_tensors} projection weights in FP8 (128x128 block "
                 f"scales), {rep.bf16_tensors} tensors kept BF16; weights {sizes['bf16'] / 2**20:.2f} MiB in BF16 -> "
                 f"{rep.bytes_out / 2**20:.2f} MiB ({ratio:.0%})."]
        if ratio > 0.75:
            notes.append("This model is small enough that the BF16 embeddings, norms and lm_head (never quantized) "
                         "dominate its size; at DeepSeek-V3 scale the projections are >95% of the weights.")
        return StageResult(metrics=metrics, artifacts={"model": FP8_DIR}, notes=notes,
                           lineage={"quantized_from": str(src)})

    def supports(self, config: Any, flow: Any) -> list[Support]:
        lab = getattr(flow, "label", None)
        device = str(getattr(lab, "device", "cpu"))
        engine = str(getattr(lab, "engine", "transformers"))
        out = [Support("FP8 export (DeepSeek-V3 format, 128x128 block scales) with adnanny-serve quantize", True)]
        if device.startswith("cuda") or engine == "vllm":  # what the label stage's config asks of the FP8 copy
            cuda = _cuda_available()
            vllm = importlib.util.find_spec("vllm") is not None
            if engine == "vllm":
                out.append(Support("FP8 inference on vLLM", cuda and vllm,
                                   "" if cuda and vllm else "vllm is not installed (adnanny-serve[vllm], GPU only)"
                                   if not vllm else "no CUDA device"))
            else:
                out.append(Support("FP8 weights kept in FP8 at inference (adnanny-serve fp8_weights=keep on CUDA)",
                                   cuda, "" if cuda else "no CUDA device"))
        else:
            out.append(Support("FP8 copy labeled on CPU: weights dequantized at load (Table 9 measures the codec's "
                               "accuracy, not FP8 matmuls)", True))
        return out

    def trace(self, out: Path, row_id: str) -> dict[str, Any] | None:
        """No rows live here; lineage of a label passes through `quantized_from` (recorded by the engine)."""
        return None


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


STAGE = QuantizeStage()
