"""The transformers/peft implementation of :class:`adnanny_sft.backend.TrainingBackend`.

Numerics follow ``adnanny_sft.backend`` exactly (conformance-tested against ``adnanny_sft.objective``).
One speed choice worth knowing: by default the LM head is applied only at the positions whose next token
carries loss ("selective head"). The prompt usually dominates an SFT sequence, and for a 49k-vocabulary
model the [B, T, V] logits tensor is the largest activation of the step; computing it for prompt tokens
only to multiply the result by zero is pure waste. It is exact (same logits at the kept positions) for
models whose head is a plain projection of the decoder's last hidden state; set ``selective_head=False``
for models that post-process logits (e.g. soft-capping), which are detected and refused automatically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_sft.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

    from adnanny_sft.backend import Batch

__all__ = ["LoraSettings", "HFBackend", "load_causal_lm", "build_hf_backend", "resolve_device"]

_MODEL_FILE = "trainable.safetensors"
_OPTIM_FILE = "optimizer.pt"
_SCHED_FILE = "scheduler.pt"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft). ``target_modules="all-linear"`` adapts every linear layer but the head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"`lora_r` must be >= 1; got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"`lora_dropout` must be in [0, 1); got {self.dropout}.")


def resolve_device(device: str) -> str:
    """``cpu`` / ``cuda`` / ``auto`` (cuda when a GPU is visible) -> the torch device the HF backend uses."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device` = 'cuda' but no CUDA device is visible; use 'cpu' or 'auto'.")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"`device` must be cpu, cuda or auto; got {device!r}.")
    return device


def load_causal_lm(
    model: str | Path | dict[str, Any],
    *,
    dtype: str = "float32",
    seed: int = 0,
    allow_pickle: bool = False,
) -> Any:
    """A ``transformers`` causal LM from an HF directory, or randomly initialised from a config dict.

    ``model`` as a dict is an HF ``config.json`` mapping with ``model_type`` (e.g. the output of
    ``adnanny_ckpt.synthetic.tiny_deepseek_v3_config``); its weights are drawn with ``torch.manual_seed(seed)``
    so two calls give identical models. Offline only: a path must exist locally. A directory passes
    adnanny-ckpt's one weight rule first (``check_model_dir``: pickle-only weights refused unless
    ``allow_pickle``, corrupt safetensors named), and transformers then reads exactly the checked files; any
    load failure is a one-line ``ConfigError`` naming the folder.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = _dtype(dtype)
    if isinstance(model, dict):
        cfg = dict(model)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise ConfigError("`model` config dict has no `model_type`; pass an HF config.json mapping.")
        cfg.pop("architectures", None)
        cfg.pop("torch_dtype", None)
        cfg.pop("dtype", None)
        cfg.pop("quantization_config", None)  # random init: nothing is quantised
        config = AutoConfig.for_model(model_type, **cfg)
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        return lm
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"`model` = {str(path)!r} is not an HF model directory (no config.json); "
                          "pass a local directory or a config dict.")
    from adnanny_ckpt.errors import AdNannyCkptError
    from adnanny_ckpt.models import check_model_dir

    try:
        files = check_model_dir(path, allow_pickle=allow_pickle, tokenizer=False)
    except AdNannyCkptError as e:  # ckpt's CheckpointFormatError / UnsafeInputError name the file
        raise ConfigError(f"`model` = {str(path)!r}: {e}") from None
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                    use_safetensors=files[0].suffix == ".safetensors")
    except Exception as e:  # noqa: BLE001 - transformers/safetensors tracebacks become one line naming the dir
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the model in `{path}`: {first}") from None


def _dtype(name: str) -> torch.dtype:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"`dtype` must be one of {sorted(table)}; got {name!r}.")
    return table[name]


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """LR factor for optimizer step ``step`` (0-based): linear warm-up, then constant/linear/cosine decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"`lr_schedule` must be constant, linear or cosine; got {schedule!r}.")


class HFBackend:
    """A causal LM (full fine-tuning or LoRA) with AdamW and a warm-up + decay schedule, on one device."""

    def __init__(
        self,
        model: Any,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float = 1.0,
        warmup_steps: int = 0,
        total_steps: int = 1,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        selective_head: bool = True,
        share_prefix: bool = False,
        device: str = "cpu",
    ) -> None:
        import torch

        if lr <= 0:
            raise ConfigError(f"`lr` must be > 0; got {lr}.")
        if max_grad_norm < 0:
            raise ConfigError(f"`max_grad_norm` must be >= 0 (0 disables clipping); got {max_grad_norm}.")
        lr_multiplier(0, warmup_steps=warmup_steps, total_steps=total_steps, schedule=lr_schedule,
                      min_lr_ratio=min_lr_ratio)  # validates the schedule name
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.max_grad_norm = float(max_grad_norm)
        self.selective_head = bool(selective_head) and self._head_is_plain()
        self.share_prefix = bool(share_prefix)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        if not self._params:
            raise ConfigError("the model has no trainable parameter (`requires_grad` is False everywhere).")
        decay = [p for p in self._params if p.dim() >= 2]
        no_decay = [p for p in self._params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=betas, eps=eps, foreach=False,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, warmup_steps=warmup_steps, total_steps=total_steps,
                                    schedule=lr_schedule, min_lr_ratio=min_lr_ratio),
        )

    # -- the protocol ---------------------------------------------------------------------------
    def forward_backward(self, batch: Batch) -> torch.Tensor:
        import torch

        self.model.train()
        b = batch.to(self.device)
        losses, _ = self._losses(b)  # [B] summed NLL over target tokens (eq. 1)
        weighted = (losses * b.sample_weights.to(losses.dtype)).sum()
        if weighted.requires_grad:
            weighted.backward()
        return losses.detach().to(torch.float32).cpu()

    def per_sample_nll(self, batch: Batch) -> torch.Tensor:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                b = batch.to(self.device)
                losses, counts = self._losses(b)
                mean = torch.where(counts > 0, losses / counts.clamp_min(1e-12),
                                   torch.full_like(losses, float("nan")))
        finally:
            self.model.train(was_training)
        return mean.to(torch.float32).cpu()

    def token_logprobs(self, batch: Batch) -> torch.Tensor:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self._token_logprobs(batch.to(self.device))
        finally:
            self.model.train(was_training)
        return out.to(torch.float32).cpu()

    def forward_backward_fn(self, batch: Batch, loss_fn: Any) -> float:
        import torch

        self.model.train()
        b = batch.to(self.device)
        logp = self._token_logprobs(b)  # [B, T] with grad
        loss = loss_fn(logp, torch.arange(b.size, device=logp.device))
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    def optimizer_step(self) -> dict[str, float]:
        import torch

        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        else:
            norm = torch.zeros(())
        grad_norm = float(norm)
        lr = float(self.optimizer.param_groups[0]["lr"])
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": grad_norm, "lr": lr, "skipped": 1.0}
        if self.max_grad_norm > 0 and grad_norm > self.max_grad_norm:
            scale = self.max_grad_norm / (grad_norm + 1e-6)
            for g in grads:
                g.mul_(scale)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr, "skipped": 0.0}

    def save(self, directory: str | Path) -> None:
        import torch
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {n: p.detach().contiguous().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        _atomic(out / _MODEL_FILE, lambda tmp: save_file(state, str(tmp)))
        _atomic(out / _OPTIM_FILE, lambda tmp: torch.save(self.optimizer.state_dict(), tmp))
        _atomic(out / _SCHED_FILE, lambda tmp: torch.save(self.scheduler.state_dict(), tmp))

    def load(self, directory: str | Path) -> None:
        import torch
        from safetensors.torch import load_file

        src = Path(directory)
        for name in (_MODEL_FILE, _OPTIM_FILE, _SCHED_FILE):
            if not (src / name).is_file():
                raise CheckpointError(f"checkpoint {str(src)!r} lacks `{name}`; it is incomplete or not an "
                                      "adnanny-sft HF-backend checkpoint.")
        state = load_file(str(src / _MODEL_FILE))
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise CheckpointError(f"checkpoint {str(src / _MODEL_FILE)!r} does not match the model: missing "
                                  f"{missing[:5]}, unexpected {extra[:5]} (different model or LoRA settings?).")
        with torch.no_grad():
            for n, p in params.items():
                if tuple(state[n].shape) != tuple(p.shape):
                    raise CheckpointError(f"tensor `{n}` in {str(src / _MODEL_FILE)!r} has shape "
                                          f"{tuple(state[n].shape)}, the model expects {tuple(p.shape)}.")
                p.copy_(state[n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(torch.load(src / _OPTIM_FILE, weights_only=True))
        self.scheduler.load_state_dict(torch.load(src / _SCHED_FILE, weights_only=True))

    # -- extras of the HF backend (not part of the protocol) -----------------------------------------
    def export(self, directory: str | Path, *, tokenizer: Any = None, merge_lora: bool = True) -> Path:
        """Write a standalone HF model directory (LoRA merged unless ``merge_lora=False``) for serve/rl."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if merge_lora and hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        return out

    def _head_is_plain(self) -> bool:
        cfg = getattr(self.model, "config", None)
        if cfg is None:
            return False
        for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
            if getattr(cfg, attr, None) not in (None, 1.0, 0):
                return False
        try:
            return self.model.get_decoder() is not None and self.model.get_output_embeddings() is not None
        except (AttributeError, NotImplementedError):
            return False

    def _losses(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_t m·nll [B], Σ_t m [B]) for target tokens t ≥ 1; see the module docstring (selective head)."""
        import torch
        import torch.nn.functional as F

        from adnanny_sft.objective import token_nll

        attn = b.attention_mask.long()
        position_ids = (attn.cumsum(dim=1) - 1).clamp_min(0)  # [B, T]: right or left padding alike
        mask = b.loss_mask[:, 1:].float()  # [B, T-1]: weight of predicting token t from position t-1
        counts = mask.sum(dim=1)
        if not self.selective_head:
            out = self.model(input_ids=b.input_ids, attention_mask=attn, position_ids=position_ids,
                             use_cache=False)
            nll = token_nll(out.logits, b.input_ids)[:, 1:]  # [B, T-1]
            return (nll * mask).sum(dim=1), counts
        decoder = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        if self.share_prefix:
            p = shared_prefix_length(b)
            if p >= _MIN_SHARED_PREFIX:
                return self._losses_shared_prefix(b, p, decoder, head), counts
        hidden = decoder(input_ids=b.input_ids, attention_mask=attn, position_ids=position_ids,
                         use_cache=False).last_hidden_state  # [B, T, H]
        sel = mask != 0  # [B, T-1]
        rows = torch.nonzero(sel, as_tuple=True)
        h = hidden[:, :-1, :][rows]  # [N, H]: positions predicting a target token
        logits = head(h).float()  # [N, V]
        targets = b.input_ids[:, 1:][rows]  # [N]
        nll = F.cross_entropy(logits, targets, reduction="none") * mask[rows]  # [N]
        losses = torch.zeros(b.input_ids.shape[0], dtype=nll.dtype, device=nll.device)
        losses = losses.index_add(0, rows[0], nll)
        return losses, counts


    def _losses_shared_prefix(self, b: Batch, p: int, decoder: Any, head: Any) -> torch.Tensor:
        """``_losses`` when every row starts with the same ``p`` tokens (no loss on them): the prefix runs once
        (batch 1), its keys/values are broadcast to the batch, and only the suffixes run per row. Exact up to
        float summation order: causal attention makes a prefix position independent of what follows, and MoE
        routing is per token. WHY: a task's system prompt is the same for every row and is most of a short
        labeling sequence (query_ad label-only: ~90 of ~115 tokens), so this cuts the step's work ~2-3×."""
        import torch
        import torch.nn.functional as F

        from transformers import DynamicCache

        ids, attn = b.input_ids, b.attention_mask.long()
        n = ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        _decoder_call(decoder, input_ids=ids[:1, :p], attention_mask=attn[:1, :p],
                      position_ids=torch.arange(p, device=ids.device)[None], cache=cache)
        for layer in cache.layers:
            layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            layer.values = layer.values.expand(n, *layer.values.shape[1:])
        position_ids = (attn.cumsum(dim=1) - 1).clamp_min(0)[:, p:]
        hidden = _decoder_call(decoder, input_ids=ids[:, p:], attention_mask=attn, position_ids=position_ids,
                               cache=cache).last_hidden_state  # [B, T-p, H]
        mask = b.loss_mask[:, p + 1:].float()  # predicting token t (t > p) from suffix position t-1
        rows = torch.nonzero(mask != 0, as_tuple=True)
        logits = head(hidden[:, :-1, :][rows]).float()
        nll = F.cross_entropy(logits, ids[:, p + 1:][rows], reduction="none") * mask[rows]
        losses = torch.zeros(n, dtype=nll.dtype, device=nll.device)
        return losses.index_add(0, rows[0], nll)

    def _token_logprobs(self, b: Batch) -> torch.Tensor:
        """``[B, T]`` log p(token t | < t) on positions with a non-zero loss mask (0 elsewhere)."""
        import torch

        attn = b.attention_mask.long()
        position_ids = (attn.cumsum(dim=1) - 1).clamp_min(0)  # [B, T]
        sel = b.loss_mask[:, 1:] != 0  # [B, T-1]: predicting token t from position t-1
        rows = torch.nonzero(sel, as_tuple=True)
        if self.selective_head:
            hidden = self.model.get_decoder()(input_ids=b.input_ids, attention_mask=attn, position_ids=position_ids,
                                              use_cache=False).last_hidden_state  # [B, T, H]
            logits = self.model.get_output_embeddings()(hidden[:, :-1, :][rows]).float()  # [N, V]
        else:
            out = self.model(input_ids=b.input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False)
            logits = out.logits[:, :-1, :][rows].float()  # [N, V]
        targets = b.input_ids[:, 1:][rows]  # [N]
        lp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # [N]
        full = torch.zeros(b.input_ids.shape, dtype=lp.dtype, device=lp.device)  # [B, T]
        return full.index_put((rows[0], rows[1] + 1), lp)


#: Shorter common prefixes are not worth a separate forward pass.
_MIN_SHARED_PREFIX = 8


def shared_prefix_length(b: Batch) -> int:
    """How many leading positions every row of ``b`` shares and may run once: same token ids, attended, and no
    loss on them; minus one, so the position that predicts the first differing (or first target) token stays
    in the per-row part. 0 for a single-row batch."""
    import torch

    ids, attn, mask = b.input_ids, b.attention_mask, b.loss_mask
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0) & (attn != 0).all(dim=0) & (mask == 0).all(dim=0)  # [T]
    run = int(torch.cumprod(same.to(torch.int64), dim=0).sum())
    return max(0, min(run, ids.shape[1] - 1) - 1)


def _decoder_call(decoder: Any, **kw: Any) -> Any:
    """The decoder with a KV cache (``cache=`` in transformers >= 5, ``past_key_values=`` before)."""
    cache = kw.pop("cache")
    try:
        return decoder(**kw, cache=cache, use_cache=True)
    except TypeError:
        return decoder(**kw, past_key_values=cache, use_cache=True)


def _atomic(path: Path, write: Any) -> None:
    """Write via ``write(tmp_path)`` to a temp name, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_hf_backend(
    model: str | Path | dict[str, Any],
    *,
    dtype: str = "float32",
    seed: int = 0,
    lora: LoraSettings | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
    **optim: Any,
) -> HFBackend:
    """Load/initialise a causal LM, wrap it in LoRA when ``lora`` is given, and return its backend.

    ``device``: cpu, cuda or auto. ``optim`` keywords go to :class:`HFBackend` (lr, weight_decay, warmup_steps,
    total_steps, ...).
    """
    device = resolve_device(device)
    lm = load_causal_lm(model, dtype=dtype, seed=seed, allow_pickle=allow_pickle)
    if lora is not None:
        import torch
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed + 1)  # LoRA A matrices are random: make them reproducible too
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        lm = get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                           target_modules=target, task_type="CAUSAL_LM"))
    return HFBackend(lm, device=device, **optim)
