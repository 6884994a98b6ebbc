"""Inference engines behind one interface: :class:`Engine` ``.generate(prompts, SamplingParams)``.

The transformers and vLLM engines are imported lazily from their modules (they pull torch / vllm).
"""

from adnanny_serve.engines.base import Engine, Generation, LogLikelihood, SamplingParams, encode_pair

__all__ = ["Engine", "Generation", "LogLikelihood", "SamplingParams", "encode_pair", "load_engine"]


def load_engine(model: str, *, engine: str = "transformers", device: str = "cpu", dtype: str | None = None,
                batch_size: int = 8, allow_pickle: bool = False, fp8_weights: str | None = None) -> Engine:
    """Build an engine by name on a local model dir (pickle weights only with ``allow_pickle``; ``fp8_weights``
    ``keep``/``dequantize`` for FP8 checkpoints on the transformers engine, default keep on CUDA)."""
    from adnanny_serve.errors import ConfigError

    if engine == "transformers":
        from adnanny_serve.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(model, device=device, dtype=dtype, batch_size=batch_size,
                                                 allow_pickle=allow_pickle, fp8_weights=fp8_weights)
    if engine == "vllm":
        from adnanny_ckpt.errors import AdNannyCkptError
        from adnanny_ckpt.models import check_model_dir

        from adnanny_serve.engines.vllm_engine import VLLMEngine
        from adnanny_serve.errors import EngineError

        try:  # the same weight-file rule as the transformers engine
            check_model_dir(model, allow_pickle=allow_pickle)
        except AdNannyCkptError as e:
            raise EngineError(str(e)) from None

        return VLLMEngine(model, **({"dtype": dtype} if dtype else {}))
    raise ConfigError(f"`engine` must be 'transformers' or 'vllm'; got {engine!r}.")
