"""Make megatron-core run without TransformerEngine, and without CUDA at all.

Why this module exists: megatron-core is written for CUDA + TransformerEngine (TE). AdNanny trains on
GPUs, but every test, the parity harness and the CPU benchmark run the *same* megatron code on CPU over
gloo. Two independent groups of fixes make that possible; :func:`apply` installs both, idempotently, and
nothing happens at import time.

1. Missing-TE fixes (applied whenever ``transformer_engine`` is not importable, GPU included):

   - ``megatron.core.transformer.multi_latent_attention.HAVE_TE`` is forced to ``False``: megatron's
     extension module imports even without TE, so the flag is wrongly ``True`` and MLA then dereferences
     TE-only classes.
   - ``megatron.core.transformer.moe.moe_utils.te_general_gemm`` is defined as ``None``: 0.16.1 leaves
     it undefined when the TE import fails, and the fp32 router GEMM then raises ``NameError``.
   - The local layer spec uses ``DotProductAttention`` as MLA's core attention, but MLA passes
     ``k_channels``/``v_channels`` (the q/k head dim 192 differs from the v head dim 128 in DeepSeek-V3).
     :class:`MLADotProductAttention` accepts and drops them; it is correct only with
     ``kv_channels == v_head_dim`` (the model provider sets that) and an explicit ``softmax_scale``
     (MLA always passes one, including YaRN's mscale).

2. CUDA->CPU shims (applied only when ``torch.cuda.is_available()`` is false):

   - a process-wide :class:`torch.overrides.TorchFunctionMode` that rewrites ``device="cuda"`` arguments,
     ``Tensor.cuda()``, ``Tensor.to("cuda")`` and the CUDA type names of ``Tensor.type()`` (megatron's
     optimizers check ``param.type() == "torch.cuda.FloatTensor"``);
   - ``torch.cuda.current_device()`` returns ``"cpu"``; streams and events are inert dummies;
     ``synchronize``/``empty_cache``/``set_device`` are no-ops.

   Callers must also pass ``model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)`` (the
   default CUDA RNG tracker needs CUDA generators); :func:`adnanny_megatron.parallel.initialize` does.

3. Speed without TE (selected by the provider, see :mod:`adnanny_megatron.provider`):

   - :class:`SDPADotProductAttention`: the local spec's core attention on
     ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU): no
     [B, H, T, T] scores are materialised, and with ``attention_mask=None`` (right-padded batches, which the
     backend detects) no [B, 1, T, T] mask either — causality is ``is_causal=True``. Same interface as
     :class:`MLADotProductAttention` (MLA's q/k head dim may differ from v's).
   - :func:`install_torch_grouped_gemm`: megatron's local ``GroupedMLP`` (``moe_grouped_gemm=True``) calls
     ``grouped_gemm.ops.gmm`` from an optional CUDA package that is not installed here; this provides that
     op with torch — ``torch._grouped_mm`` on CUDA when a probe forward+backward succeeds, else one matmul per
     expert — so every local expert runs in one GroupedMLP call whose weights are checkpoint-compatible with
     ``SequentialMLP`` (megatron's own guarantee). megatron restricts GroupedMLP to bf16.

Known to work with: megatron-core 0.16.1 on torch 2.13.0 (CPU, gloo, Python 3.11) — tested. The GPU path
(TE fixes only, torch 2.11 + CUDA, Python 3.12) is exercised by ``benchmarks/megatron_gpu.sh`` and not yet
confirmed by a recorded run. Other megatron-core versions: :func:`apply` refuses nothing,
but the attributes it patches are looked up by name and a missing one raises
:class:`~adnanny_megatron.errors.AdNannyMegatronError` instead of silently skipping.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import warnings
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = [
    "KNOWN_WORKING",
    "MLADotProductAttention",
    "SDPADotProductAttention",
    "apply",
    "install_torch_grouped_gemm",
    "cpu_mode_active",
    "have_te",
    "import_megatron",
]

#: Versions this layer was tested with (megatron-core, torch).
KNOWN_WORKING = {"megatron-core": ("0.16.1",), "torch": ("2.13.0 (cpu, gloo)",)}

_STATE: dict[str, Any] = {"te_fixed": False, "cpu_mode": None}


def have_te() -> bool:
    """True when TransformerEngine's PyTorch extension is importable (then no TE fixes are needed)."""
    try:
        return importlib.util.find_spec("transformer_engine") is not None and importlib.util.find_spec(
            "transformer_engine.pytorch"
        ) is not None
    except (ImportError, ValueError):
        return False


def import_megatron() -> Any:
    """Import ``megatron.core`` quietly (its "TE and Apex are not installed" warnings are expected on CPU).

    pytest runs with warnings as errors, so the import warnings megatron emits when TE/Apex are absent
    would fail every test; they are informational for us.
    """
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import megatron.core  # noqa: F401
        import megatron.core.optimizer  # noqa: F401
        import megatron.core.models.gpt  # noqa: F401
        import megatron.core.transformer.multi_latent_attention  # noqa: F401
        import megatron.core.transformer.moe.moe_utils  # noqa: F401
        import megatron.core.pipeline_parallel  # noqa: F401
        import megatron.core.dist_checkpointing  # noqa: F401
    return importlib.import_module("megatron.core")


def _set_attr(module_name: str, attr: str, value: Any, *, must_exist: bool = True) -> None:
    module = importlib.import_module(module_name)
    if must_exist and not hasattr(module, attr):
        raise AdNannyMegatronError(
            f"megatron-core layout changed: `{module_name}.{attr}` not found; adnanny_megatron.compat is "
            f"known to work with megatron-core {KNOWN_WORKING['megatron-core']}. Pin that version."
        )
    setattr(module, attr, value)


def _make_mla_attention_class() -> type:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class _MLADotProductAttention(DotProductAttention):  # type: ignore[misc, valid-type]
        """``DotProductAttention`` that accepts MLA's ``k_channels``/``v_channels`` keyword arguments.

        The local attention derives the output width from ``config.kv_channels``; the provider sets
        ``kv_channels = v_head_dim``, so dropping ``v_channels`` is exact. ``k_channels`` only matters
        for the default softmax scale, and MLA always passes an explicit one.
        """

        def __init__(self, *args: Any, k_channels: int | None = None, v_channels: int | None = None,
                     **kwargs: Any) -> None:
            config = kwargs.get("config", args[0] if args else None)
            if v_channels is not None and config is not None and config.kv_channels != v_channels:
                raise AdNannyMegatronError(
                    f"local MLA attention needs `kv_channels` == `v_head_dim`; got kv_channels="
                    f"{config.kv_channels}, v_head_dim={v_channels}. Build the config with "
                    "adnanny_megatron.provider.transformer_config_from_hf."
                )
            if kwargs.get("softmax_scale") is None and k_channels is not None:
                kwargs["softmax_scale"] = k_channels**-0.5
            super().__init__(*args, **kwargs)

    _MLADotProductAttention.__name__ = "MLADotProductAttention"
    _MLADotProductAttention.__qualname__ = "MLADotProductAttention"
    return _MLADotProductAttention


def _make_sdpa_attention_class(base: type) -> type:
    import torch
    import torch.nn.functional as F

    class _SDPADotProductAttention(base):  # type: ignore[misc, valid-type]
        """Core attention on ``scaled_dot_product_attention``; inputs/outputs as megatron's local attention.

        ``query`` [sq, b, np, hk], ``key`` [sk, b, ng, hk], ``value`` [sk, b, ng, hv] -> [sq, b, np·hv].
        ``attention_mask`` (megatron's convention, True = masked, [b|1, 1, sq, sk]) or ``None`` = causal.
        """

        def forward(self, query: Any, key: Any, value: Any, attention_mask: Any, attn_mask_type: Any = None,
                    attention_bias: Any = None, packed_seq_params: Any = None) -> Any:
            if packed_seq_params is not None or attention_bias is not None:
                raise AdNannyMegatronError("SDPA core attention supports neither packed sequences nor attention "
                                           "bias; use the TE spec for those")
            rep = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
            if rep > 1:  # GQA: one K/V head serves `rep` query heads
                key = key.repeat_interleave(rep, dim=2)
                value = value.repeat_interleave(rep, dim=2)
            q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, n, s, h]
            p = self.config.attention_dropout if self.training else 0.0
            if attention_mask is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, dropout_p=p,
                                                     scale=self.softmax_scale)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask.bool(), dropout_p=p,
                                                     scale=self.softmax_scale)
            sq, b = out.shape[2], out.shape[0]
            return out.permute(2, 0, 1, 3).reshape(sq, b, -1)  # [sq, b, np*hv]

    _SDPADotProductAttention.__name__ = "SDPADotProductAttention"
    _SDPADotProductAttention.__qualname__ = "SDPADotProductAttention"
    del torch
    return _SDPADotProductAttention


_MLA_CLASS: list[type] = []
_SDPA_CLASS: list[type] = []


def __getattr__(name: str) -> Any:  # lazy: building the class imports megatron
    if name in ("MLADotProductAttention", "SDPADotProductAttention"):
        if not _MLA_CLASS:
            import_megatron()
            _MLA_CLASS.append(_make_mla_attention_class())
        if name == "MLADotProductAttention":
            return _MLA_CLASS[0]
        if not _SDPA_CLASS:
            _SDPA_CLASS.append(_make_sdpa_attention_class(_MLA_CLASS[0]))
        return _SDPA_CLASS[0]
    raise AttributeError(name)


class _TorchGroupedGemmOps:
    """``grouped_gemm.ops`` for megatron's GroupedMLP, in torch (see the module docstring)."""

    def __init__(self) -> None:
        self.use_torch_grouped_mm: bool | None = None  # decided by a probe on first CUDA use

    def _probe(self, device: Any) -> bool:
        import torch

        if not hasattr(torch, "_grouped_mm"):
            return False
        try:
            a = torch.randn(48, 32, device=device, dtype=torch.bfloat16, requires_grad=True)
            b = torch.randn(3, 32, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
            offs = torch.tensor([16, 32, 48], device=device, dtype=torch.int32)
            out = torch._grouped_mm(a, b, offs=offs)
            out.float().sum().backward()
            ref = torch.cat([a[16 * i:16 * (i + 1)].float() @ b[i].float() for i in range(3)])
            return bool((out.float() - ref).abs().max() <= 0.05 * ref.abs().max())
        except (RuntimeError, TypeError, NotImplementedError):
            return False

    def gmm(self, a: Any, b: Any, batch_sizes: Any, trans_b: bool = False) -> Any:
        """``out[rows of group g] = a[rows of g] @ (b[g].T if trans_b else b[g])``; ``batch_sizes`` = rows/group."""
        import torch

        w = b.transpose(-2, -1) if trans_b else b
        if a.is_cuda:
            if self.use_torch_grouped_mm is None:
                self.use_torch_grouped_mm = self._probe(a.device)
            if self.use_torch_grouped_mm and a.dtype == torch.bfloat16:
                offs = torch.cumsum(batch_sizes.to(device=a.device, dtype=torch.int32), 0, dtype=torch.int32)
                try:
                    return torch._grouped_mm(a, w, offs=offs)
                except RuntimeError as exc:  # e.g. shapes/strides this kernel refuses: per-expert from now on
                    warnings.warn(f"torch._grouped_mm refused {tuple(a.shape)} x {tuple(w.shape)} ({exc}); "
                                  "using one matmul per expert", stacklevel=2)
                    self.use_torch_grouped_mm = False
        sizes = [int(x) for x in batch_sizes.tolist()]
        if sum(sizes) != a.shape[0]:
            raise AdNannyMegatronError(f"grouped GEMM: batch sizes sum to {sum(sizes)}, input has {a.shape[0]} rows")
        return torch.cat([x @ w[g] for g, x in enumerate(a.split(sizes))])


class _TorchGroupedGemmModule:
    """Stands in for the ``grouped_gemm`` package inside ``megatron.core.transformer.moe.grouped_gemm_util``."""

    def __init__(self) -> None:
        self.ops = _TorchGroupedGemmOps()


def install_torch_grouped_gemm() -> Any:
    """Provide ``grouped_gemm.ops.gmm`` to megatron's GroupedMLP with torch (idempotent); returns the ops."""
    import_megatron()
    gg = importlib.import_module("megatron.core.transformer.moe.grouped_gemm_util")
    if isinstance(getattr(gg, "grouped_gemm", None), _TorchGroupedGemmModule):
        return gg.ops
    if getattr(gg, "grouped_gemm", None) is not None:  # the real CUDA package is installed: keep it
        return gg.ops
    mod = _TorchGroupedGemmModule()
    _set_attr("megatron.core.transformer.moe.grouped_gemm_util", "grouped_gemm", mod)
    _set_attr("megatron.core.transformer.moe.grouped_gemm_util", "ops", mod.ops)
    return mod.ops


def _apply_te_fixes() -> None:
    if _STATE["te_fixed"] or have_te():
        return
    import_megatron()
    _set_attr("megatron.core.transformer.multi_latent_attention", "HAVE_TE", False)
    # 0.16.1 leaves the name undefined when the TE import fails, so the router's
    # ``if te_general_gemm is not None`` raises NameError: define it.
    _set_attr("megatron.core.transformer.moe.moe_utils", "te_general_gemm", None, must_exist=False)
    _STATE["te_fixed"] = True


# --------------------------------------------------------------------------------------------- CPU shims


class _DummyStream:
    """Inert stand-in for ``torch.cuda.Stream``: on CPU every op is already synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event if event is not None else _DummyEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> _DummyStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _DummyEvent:
    """Inert stand-in for ``torch.cuda.Event``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _cpu_device(value: Any) -> Any:
    import torch

    if isinstance(value, str) and value.startswith("cuda"):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    if isinstance(value, int) and not isinstance(value, bool):
        return "cpu"
    return value


def _make_cpu_mode() -> Any:
    import torch
    from torch.overrides import TorchFunctionMode

    tensor_cuda = torch.Tensor.cuda
    tensor_to = torch.Tensor.to
    tensor_type = torch.Tensor.type

    class _CudaToCpuMode(TorchFunctionMode):
        """Rewrites CUDA placement requests to CPU for every torch call in the process."""

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = dict(kwargs or {})
            if func is tensor_cuda:
                return args[0]
            if func is tensor_type:
                if len(args) == 1 and "dtype" not in kwargs:
                    name = func(*args, **kwargs)
                    return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
                if len(args) > 1 and isinstance(args[1], str):
                    args = (args[0], args[1].replace("torch.cuda.", "torch."), *args[2:])
                if isinstance(kwargs.get("dtype"), str):
                    kwargs["dtype"] = kwargs["dtype"].replace("torch.cuda.", "torch.")
                return func(*args, **kwargs)
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            if func is tensor_to and len(args) > 1:
                args = (args[0], _cpu_device(args[1]) if not isinstance(args[1], int) else "cpu",
                        *args[2:])
            return func(*args, **kwargs)

    return _CudaToCpuMode()


def _apply_cpu_shims() -> None:
    import torch

    if _STATE["cpu_mode"] is not None:
        return
    cuda = torch.cuda
    cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    cuda.Stream = _DummyStream  # type: ignore[assignment,misc]
    cuda.Event = _DummyEvent  # type: ignore[assignment,misc]
    cuda.current_stream = lambda *a, **k: _DummyStream()  # type: ignore[assignment]
    cuda.default_stream = lambda *a, **k: _DummyStream()  # type: ignore[assignment]
    cuda.stream = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    cuda.empty_cache = lambda *a, **k: None  # type: ignore[assignment]
    cuda.set_device = lambda *a, **k: None  # type: ignore[assignment]
    mode = _make_cpu_mode()
    mode.__enter__()  # process-wide on purpose: megatron allocates on "cuda" everywhere
    _STATE["cpu_mode"] = mode


def cpu_mode_active() -> bool:
    """Whether the CUDA->CPU shims are installed in this process."""
    return _STATE["cpu_mode"] is not None


def apply() -> None:
    """Install the fixes this process needs (idempotent); call before building any megatron module."""
    import torch

    import_megatron()
    _apply_te_fixes()
    if not torch.cuda.is_available():
        _apply_cpu_shims()
