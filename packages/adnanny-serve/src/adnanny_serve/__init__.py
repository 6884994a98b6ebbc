"""adnanny-serve: FP8 export, inference engines, batch labeling, an OpenAI-compatible server, cost model.

Narrow API (heavy dependencies load on first use):

* :func:`quantize_checkpoint` — HF checkpoint -> DeepSeek-style FP8 (128x128 block scales);
* :class:`Engine` / :class:`SamplingParams` / :class:`Generation` and :func:`load_engine`;
* :func:`label_file` with :class:`LabelConfig` — Parquet in, predictions Parquet out (resumable);
* :func:`cost_per_million` / :func:`baseline_cost_per_million` — paper Table 10;
* the server: :mod:`adnanny_serve.server` (``create_app``, ``ServerThread``).
"""

from adnanny_serve.__about__ import __version__
from adnanny_serve.cost import baseline_cost_per_million, cost_per_million
from adnanny_serve.engines import Engine, Generation, SamplingParams, load_engine
from adnanny_serve.errors import AdNannyServeError, ConfigError, EngineError, LabelError, QuantizeError

__all__ = [
    "AdNannyServeError",
    "ConfigError",
    "Engine",
    "EngineError",
    "Generation",
    "LabelConfig",
    "LabelError",
    "QuantizeError",
    "SamplingParams",
    "__version__",
    "baseline_cost_per_million",
    "cost_per_million",
    "label_file",
    "load_engine",
    "quantize_checkpoint",
]


def __getattr__(name: str):  # label / quantize pull polars and adnanny-ckpt; load them on first use
    if name in ("LabelConfig", "label_file"):
        from adnanny_serve import label

        return getattr(label, name)
    if name == "quantize_checkpoint":
        from adnanny_serve.quantize import quantize_checkpoint

        return quantize_checkpoint
    raise AttributeError(f"module 'adnanny_serve' has no attribute {name!r}")
