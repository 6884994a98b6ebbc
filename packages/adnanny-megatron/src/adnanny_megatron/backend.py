"""The Megatron implementation of adnanny-sft's :class:`~adnanny_sft.backend.TrainingBackend` protocol.

Numerics (must equal the HF backend's, see ``adnanny_sft.backend``):

* per-sample loss ``ℓ_b = Σ_t loss_mask[b,t] · CE(logits[b,t-1], input_ids[b,t])`` (eq. 1), computed on
  the last pipeline stage from megatron's per-token cross entropy (fp32);
* the gradient accumulated by ``forward_backward`` is ∇ Σ_b sample_weights[b]·ℓ_b over the *whole*
  batch. Every rank receives the same global batch; data-parallel rank r trains on its contiguous
  slice. Megatron's schedule divides each micro-batch loss by the number of micro-batches and its DDP
  averages over DP, so the micro-batch objective handed to the schedule is
  ``dp · n_micro · Σ_{b∈mb} w_b ℓ_b`` — the two factors cancel those divisions exactly;
* with an MTP module (DeepSeek's multi-token prediction, built by the provider) and
  ``TrainSettings.mtp_loss_weight`` λ > 0 the objective gains ``λ/K Σ_k Σ_b w_b ℓ^mtp_{k,b}``: depth k predicts
  token t+1+k at position t, with the loss mask shifted the same way (eq. 1's sum, sample-weighted like the main
  loss; megatron's own token-mean MTP loss is built with weight 0). Returned per-sample values stay the main ℓ_b;
* gradients are reduced across DP (and the embedding/expert groups) once, in :meth:`optimizer_step`
  (``finalize_model_grads``), so several ``forward_backward`` calls accumulate like the HF backend;
* per-sample values are gathered over DP and broadcast from the last stage: every rank returns the
  same float32 CPU tensor [B].

Checkpoints are megatron ``dist_checkpointing`` (torch_dist) directories holding the model, the optimizer
(the §4.1.3 stub contributes nothing) and a small common state (step count, LR schedule position), so
``load`` on a fresh backend of the same — or, for model weights, a different — layout resumes exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_megatron.errors import AdNannyMegatronError

if TYPE_CHECKING:
    import torch

    from adnanny_sft.backend import Batch

__all__ = ["MegatronBackend", "TrainSettings", "lr_factor"]


@dataclass(frozen=True)
class TrainSettings:
    """Step-level knobs of the backend (optimizer knobs live in :class:`adnanny_megatron.optim.OptimSettings`)."""

    micro_batch_size: int = 1  #: largest micro-batch (see MegatronBackend._local_slice); > 1 is faster on GPU
    warmup_steps: int = 0
    total_steps: int = 1
    lr_schedule: str = "constant"  # constant | cosine | linear
    min_lr_ratio: float = 0.1
    #: weight λ of DeepSeek's MTP loss in the objective Σ_b w_b (ℓ_b + λ/K Σ_k ℓ^mtp_{k,b}) (models built with MTP;
    #: 0 = the MTP module is carried through load/save but receives no gradient)
    mtp_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.mtp_loss_weight < 0:
            raise AdNannyMegatronError(f"`mtp_loss_weight` must be >= 0, got {self.mtp_loss_weight!r}")
        if self.micro_batch_size < 1:
            raise AdNannyMegatronError(f"`micro_batch_size` must be >= 1, got {self.micro_batch_size!r}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise AdNannyMegatronError(
                f"`lr_schedule` must be constant, cosine or linear, got {self.lr_schedule!r}"
            )
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise AdNannyMegatronError(
                f"`warmup_steps` must be >= 0 and `total_steps` >= 1, got {self.warmup_steps}, {self.total_steps}"
            )


def lr_factor(step: int, s: TrainSettings) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warm-up then decay."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.lr_schedule == "constant" or s.total_steps <= s.warmup_steps:
        return 1.0
    frac = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    if s.lr_schedule == "linear":
        return 1.0 - (1.0 - s.min_lr_ratio) * frac
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _masks(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids from the padding mask, and megatron's boolean attention mask (True = masked) or ``None``.

    ``None`` when every row is right-padded (real tokens first, as adnanny-sft's ``collate`` writes them):
    causal attention alone is then exact for every real token (padding only follows it), so no [B, 1, T, T]
    mask is built and the SDPA core attention runs its causal kernel. Otherwise (left padding) the dense mask
    is built; each position may always attend to itself, so fully padded query rows stay finite in SDPA.
    """
    import torch

    am = attention_mask.to(torch.long)
    pos = (am.cumsum(dim=1) - 1).clamp_min(0)  # [B, T]
    t = am.shape[1]
    n_real = am.sum(dim=1, keepdim=True)
    if bool((am == (torch.arange(t)[None, :] < n_real).long()).all()):
        return pos, None
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # [T, T] query x key
    allowed = (causal[None] & am.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool)[None]  # [B, T, T]
    return pos, (~allowed)[:, None]  # [B, 1, T, T]


class MegatronBackend:
    """A megatron-core GPTModel (any TP/PP/EP/DP layout) trained through the pipeline schedule."""

    def __init__(self, model_spec: Any, optim: Any, settings: TrainSettings | None = None, *,
                 seed: int | None = None) -> None:
        """Build model (DDP-wrapped), optimizer (with the §4.1.3 stub) for the current process groups.

        ``seed`` re-seeds torch and megatron's model-parallel RNG first, so two backends built with the
        same seed start from identical weights (random init; load real weights with
        :meth:`load_model_weights`).
        """
        from adnanny_megatron import compat

        compat.apply()
        import torch
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        from adnanny_megatron.optim import build_optimizer
        from adnanny_megatron.provider import build_model

        if seed is not None:
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            torch.manual_seed(seed)
            model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not torch.cuda.is_available())
        self.spec = model_spec
        self.optim_settings = optim
        self.settings = settings or TrainSettings()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        config = model_spec.config
        if config.num_moe_experts and config.tensor_model_parallel_size > 1 and not config.sequence_parallel:
            raise AdNannyMegatronError(
                f"training an MoE model with `tp`={config.tensor_model_parallel_size} needs sequence "
                "parallelism, which the local spec cannot do (torch norms); use tp=1 with `ep` for the "
                "experts (the paper's layout) or install TransformerEngine"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = build_model(model_spec)
            if self.device is not None:
                module.cuda(self.device)
            ddp_config = DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=False,
                use_distributed_optimizer=optim.use_distributed_optimizer,
            )
            self.model = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=module)]
        config.finalize_model_grads_func = None  # we reduce once per optimizer step (grad accumulation)
        config.grad_scale_func = None
        self.step = 0
        self.optimizer = build_optimizer(self.model, optim, bf16=bool(config.bf16), step_fn=lambda: self.step)
        self.step = 0
        self._apply_lr()
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self._mtp_hidden: dict[str, Any] = {}
        gpt = self.model[0].module
        if getattr(gpt, "mtp_process", False) and ps.is_pipeline_last_stage():
            gpt.mtp.register_forward_hook(lambda _m, _i, out: self._mtp_hidden.__setitem__("h", out))
        self.zero_grad()

    # ------------------------------------------------------------------------------------ helpers
    def _apply_lr(self) -> float:
        lr = self.optim_settings.lr * lr_factor(self.step, self.settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def zero_grad(self) -> None:
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()

    def _local_slice(self, batch: Batch) -> tuple[int, int, int, int]:
        """``(first row, rows, micro-batches, micro-batch size)`` of this data-parallel rank.

        ``micro_batch_size`` is an upper bound: the schedule needs equal micro-batches, so the backend uses the
        largest divisor of the per-rank batch that does not exceed it (a batch of 8 with ``micro_batch_size``
        4 runs as 2 x 4; a final batch of 3 as 3 x 1). Only the data-parallel split must be exact.
        """
        b = batch.size
        if b % self.dp_size:
            raise AdNannyMegatronError(
                f"batch size {b} must be a multiple of the data-parallel size ({self.dp_size}); pad the batch or "
                "change the layout"
            )
        local = b // self.dp_size
        mbs = max(d for d in range(1, min(local, self.settings.micro_batch_size) + 1) if local % d == 0)
        return self.dp_rank * local, local, local // mbs, mbs

    def _run(self, batch: Batch, *, forward_only: bool, nll: bool, kind: str = "sft",
             loss_fn: Any = None) -> torch.Tensor:
        """One pipeline pass. `kind`: "sft" (eq. 1 sums, or token means with `nll`), "logprobs" (per-token
        log-probabilities [B, T]) or "custom" (the caller's `loss_fn` over per-token log-probabilities)."""
        import torch
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        start, local, n_micro, mbs = self._local_slice(batch)
        t = batch.input_ids.shape[1]
        ids = batch.input_ids[start : start + local]
        labels = torch.zeros_like(ids)
        labels[:, :-1] = ids[:, 1:]  # label at position t is token t+1
        lmask = torch.zeros(ids.shape, dtype=torch.float32)
        lmask[:, :-1] = batch.loss_mask[start : start + local, 1:].to(torch.float32)
        weights = batch.sample_weights[start : start + local].to(torch.float32)
        pos, attn = _masks(batch.attention_mask[start : start + local])
        dev = self.device or torch.device("cpu")
        scale = float(self.dp_size * n_micro)

        def micro(i: int) -> dict[str, torch.Tensor]:
            sl = slice(i * mbs, (i + 1) * mbs)
            return {
                "ids": ids[sl].to(dev), "labels": labels[sl].to(dev), "pos": pos[sl].to(dev),
                "attn": None if attn is None else attn[sl].to(dev), "mask": lmask[sl].to(dev),
                "w": weights[sl].to(dev),
                "rows": torch.arange(start + i * mbs, start + (i + 1) * mbs, device=dev),
            }

        data = iter([micro(i) for i in range(n_micro)])

        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Any]:
            mb = next(data_iterator)
            out = model(mb["ids"], mb["pos"], mb["attn"], labels=mb["labels"])  # [mbs, T] per-token CE

            def loss_func(per_token: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                mtp_hidden = self._mtp_hidden.pop("h", None)  # never kept past its micro-batch
                per_token = per_token.float()
                if kind != "sft":
                    # logp aligned like loss_mask: position t holds log p(token t | < t) = -CE at t-1
                    logp = torch.zeros_like(per_token)
                    logp[:, 1:] = torch.where(mb["mask"][:, :-1] != 0, -per_token[:, :-1],
                                              torch.zeros_like(per_token[:, :-1]))
                    if kind == "logprobs":
                        return logp.sum() * 0.0, {"per_sample": logp.detach()}
                    value = loss_fn(logp, mb["rows"])
                    return value * scale, {"per_sample": value.detach().reshape(1)}
                summed = (per_token * mb["mask"]).sum(dim=1)  # [mbs] eq. 1
                if nll:
                    value = summed / mb["mask"].sum(dim=1)
                    value = torch.where(mb["mask"].sum(dim=1) > 0, value, torch.full_like(value, float("nan")))
                else:
                    value = summed
                objective = summed
                if not forward_only and self.settings.mtp_loss_weight > 0 and mtp_hidden is not None:
                    objective = summed + self.settings.mtp_loss_weight * self._mtp_losses(model, mb, mtp_hidden)
                loss = (objective * mb["w"]).sum() * scale
                return loss, {"per_sample": value.detach()}

            return out, loss_func

        for chunk in self.model:
            chunk.train(not forward_only)
        fb = get_forward_backward_func()
        with torch.set_grad_enabled(not forward_only):
            store = fb(
                forward_step_func=forward_step,
                data_iterator=data,
                model=self.model,
                num_microbatches=n_micro,
                seq_length=t,
                micro_batch_size=mbs,
                forward_only=forward_only,
            )
        shape: tuple[int, ...] = {"sft": (local,), "logprobs": (local, t), "custom": (n_micro,)}[kind]
        if ps.is_pipeline_last_stage():
            local_vals = torch.cat([d["per_sample"].float() for d in store]).to(dev)
        else:
            local_vals = torch.zeros(shape, dtype=torch.float32, device=dev)
        total = {"sft": batch.size, "logprobs": batch.size * t, "custom": n_micro * self.dp_size}[kind]
        return self._gather(local_vals, total)

    def _mtp_losses(self, model: Any, mb: dict[str, Any], hs: torch.Tensor) -> torch.Tensor:
        """Per-sample MTP loss ``1/K Σ_k Σ_t mask[t+1+k] · CE(head(h^k_t), token t+1+k)`` [mbs], with gradient."""
        import torch

        gpt = getattr(model, "module", model)
        # hs: [(1+K)·s, b, h] — the main hidden, then one block per MTP depth
        k = int(gpt.config.mtp_num_layers)
        parts = torch.chunk(hs, 1 + k, dim=0)
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        labels, mask = mb["labels"], mb["mask"]
        total = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
        for depth in range(k):
            labels = torch.cat([labels[:, 1:], torch.zeros_like(labels[:, :1])], dim=1)  # token t+2+depth
            mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
            logits, _ = gpt.output_layer(parts[depth + 1], weight=weight)
            ce = gpt.compute_language_model_loss(labels, logits).float()  # [b, s]
            total = total + (ce * mask).sum(dim=1)
        return total / k

    def _gather(self, local_vals: torch.Tensor, total: int) -> torch.Tensor:
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        out = local_vals
        if self.dp_size > 1:
            parts = [torch.empty_like(local_vals) for _ in range(self.dp_size)]
            dist.all_gather(parts, local_vals, group=ps.get_data_parallel_group())
            out = torch.cat(parts)
        if ps.get_pipeline_model_parallel_world_size() > 1:
            ranks = ps.get_pipeline_model_parallel_group()
            last = dist.get_global_rank(ranks, ps.get_pipeline_model_parallel_world_size() - 1)
            dist.broadcast(out, src=last, group=ranks)
        if out.numel() != total:
            raise AdNannyMegatronError(f"gathered {out.numel()} per-sample values, expected {total}")
        return out.detach().float().cpu()

    # --------------------------------------------------------------------------- the protocol
    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Forward+backward through the pipeline; returns ℓ_b for the whole batch on every rank."""
        return self._run(batch, forward_only=False, nll=False)

    def per_sample_nll(self, batch: Batch) -> torch.Tensor:
        """Token-mean NLL per sample (eq. 3 exponent), no gradient; NaN for samples without targets."""
        import torch

        with torch.no_grad():
            return self._run(batch, forward_only=True, nll=True)

    def token_logprobs(self, batch: Batch) -> torch.Tensor:
        """Per-token log p of the batch's tokens where loss_mask != 0 ([B, T], 0 elsewhere); no gradient."""
        import torch

        with torch.no_grad():
            return self._run(batch, forward_only=True, nll=False, kind="logprobs")

    def forward_backward_fn(self, batch: Batch, loss_fn: Any) -> float:
        """Forward+backward of ``loss_fn(logp, rows)`` per data-parallel slice and micro-batch (it must be a sum
        over rows, see adnanny-sft's protocol); the schedule's 1/n_micro and DDP's 1/dp are cancelled as for
        ``forward_backward``. Returns the sum of the callback's values over the whole batch on every rank."""
        return float(self._run(batch, forward_only=False, nll=False, kind="custom", loss_fn=loss_fn).sum())

    def optimizer_step(self) -> dict[str, float]:
        """Reduce grads once, clip, step (skipping non-finite updates), advance the LR schedule."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads(self.model)
        lr = self._apply_lr()
        found_inf = self.optimizer.prepare_grads()  # main grads in place (idempotent; step() repeats it)
        grad_norm = float(self.optimizer.get_grad_norm())
        if found_inf or not math.isfinite(grad_norm):
            self.zero_grad()
            return {"grad_norm": grad_norm, "lr": lr, "skipped": 1.0}
        ok, _, _ = self.optimizer.step()
        self.zero_grad()
        if not ok:
            return {"grad_norm": grad_norm, "lr": lr, "skipped": 1.0}
        self.step += 1
        return {"grad_norm": grad_norm, "lr": lr, "skipped": 0.0}

    # ---------------------------------------------------------------------------- checkpoints
    def _sharded_state_dict(self, *, is_loading: bool) -> dict[str, Any]:
        # The unwrapped module's keys ("decoder.…", "embedding.…") — the same names adnanny-ckpt writes and
        # reads, so a training checkpoint converts back to HF and an HF conversion loads here.
        from adnanny_megatron.checkpoint import module_sharded_state_dict

        model_sd = module_sharded_state_dict(self.model[0].module)
        # The distributed optimizer's default format uses flattened ranges, which torch_dist refuses;
        # "dp_reshardable" stores each DP rank's buffer shard (reloadable with the same DP size).
        metadata = (
            {"distrib_optim_sharding_type": "dp_reshardable"}
            if self.optim_settings.use_distributed_optimizer
            else None
        )
        return {
            "model": model_sd,
            "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata),
        }

    def save(self, directory: str | Path) -> None:
        """Write a torch_dist checkpoint (model + optimizer + step) into ``directory`` atomically, with
        adnanny-ckpt's descriptor ``adnanny_ckpt.json`` (so ``adnanny-ckpt mcore-to-hf`` converts it back)."""
        import torch.distributed as dist
        from megatron.core import dist_checkpointing

        from adnanny_megatron.checkpoint import atomic_dist_dir

        from adnanny_megatron.checkpoint import write_save_descriptor

        with atomic_dist_dir(directory) as tmp:
            sd = self._sharded_state_dict(is_loading=False)
            sd["adnanny"] = {"step": self.step}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dist_checkpointing.save(sd, str(tmp))
            # adnanny-ckpt's descriptor (layout, architecture, HF source): `adnanny-ckpt mcore-to-hf` reads it
            write_save_descriptor(tmp, spec=self.spec, module=self.model[0], step=self.step,
                                  loaded_from=getattr(self, "weights_from", None))
        dist.barrier()

    def load(self, directory: str | Path) -> None:
        """Restore model, optimizer and step from :meth:`save`'s directory (any layout for the model)."""
        import torch
        from megatron.core import dist_checkpointing

        path = Path(directory)
        if not (path / "metadata.json").is_file():
            raise AdNannyMegatronError(
                f"`{path}` is not a megatron dist_checkpointing directory (no metadata.json)"
            )
        self._init_optimizer_state()
        sd = self._sharded_state_dict(is_loading=True)
        sd["adnanny"] = {"step": 0}
        with warnings.catch_warnings(), torch.no_grad():  # in-place copies into (views of) leaf params
            warnings.simplefilter("ignore")
            loaded = dist_checkpointing.load(sd, str(path))
            self.model[0].module.load_state_dict(loaded["model"], strict=False)
            self.optimizer.load_state_dict(loaded["optimizer"])
        self.step = int(loaded.get("adnanny", {}).get("step", 0))
        self.weights_from = path  # the next save's descriptor names the HF source this checkpoint came from
        self._restore_adam_step()
        self._apply_lr()

    def _init_optimizer_state(self) -> None:
        """Create empty Adam state (incl. ``step``) before a load.

        Without Apex/TE megatron's distributed optimizer reads the shared ``step`` from the inner torch
        optimizer's state while building the *loading* state dict; a fresh backend has none yet.
        """
        import torch

        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if getattr(opt, "is_stub_optimizer", False):
                continue
            inner = opt.optimizer
            for group in inner.param_groups:
                for p in group["params"]:
                    st = inner.state[p]
                    if not st:
                        st["exp_avg"] = torch.zeros_like(p.data)
                        st["exp_avg_sq"] = torch.zeros_like(p.data)
                        st["step"] = torch.zeros((), dtype=torch.float32)

    def _restore_adam_step(self) -> None:
        """Set torch Adam's per-parameter ``step`` to the number of optimizer steps taken.

        Every update in this backend steps all parameters together (skipped updates step none), so the
        count is exact; it makes resume independent of how each megatron optimizer flavour persists it.
        """
        import torch

        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if getattr(opt, "is_stub_optimizer", False):
                continue
            for st in opt.optimizer.state.values():
                if "step" in st:
                    st["step"] = torch.tensor(float(self.step), dtype=torch.float32)

    def load_model_weights(self, directory: str | Path) -> None:
        """Load only model weights from a torch_dist dir (e.g. adnanny-ckpt's HF->Megatron output)."""
        from adnanny_ckpt.names import padded_vocab_size

        from adnanny_megatron.checkpoint import load_model_weights
        from adnanny_megatron.provider import checkpoint_vocab_rule

        rule = checkpoint_vocab_rule(directory)
        if rule is not None:
            tp = self.spec.config.tensor_model_parallel_size
            want = padded_vocab_size(self.spec.vocab_size, rule, tp)
            if want != self.spec.padded_vocab_size:
                raise AdNannyMegatronError(
                    f"`{directory}` was converted with make_vocab_size_divisible_by={rule} (padded vocabulary "
                    f"{want} at tp={tp}) but the model was built with {self.spec.padded_vocab_size} rows: build "
                    f"it with `make_vocab_size_divisible_by={rule}` (provider.checkpoint_vocab_rule reads it)"
                )
        load_model_weights(self.model[0].module, directory)
        self.weights_from = Path(directory)  # save()'s descriptor names the HF source of these weights
        self.optimizer.reload_model_params()  # bf16: refresh the fp32 main params from the new weights
