"""Forward parity between HF transformers and megatron-core (paper §4.1.4, "forward-prop parity").

The same HF checkpoint is loaded twice: into ``transformers`` (the reference implementation) and, through
adnanny-ckpt's HF->Megatron conversion (``hf_to_mcore``, torch_dist format), into our megatron model —
optionally converted in one layout and loaded in another, so ``dist_checkpointing``'s reshard is in the
loop. Both run in fp32 on the same token ids; we compare

* the output of every decoder layer but the last (HF ``hidden_states[i+1]`` vs a hook on megatron's
  ``decoder.layers[i]``),
* the final-norm output (HF applies the final norm to its last ``hidden_states`` entry),
* the logits.

A comparison passes when ``max|a-b| <= tol * max(1, max|ref|)``; the default ``tol`` is 1e-4 (fp32).
What the paper also reports — benchmark accuracy of trained checkpoints — is out of scope for CPU tests.

Conversion uses adnanny-ckpt's vocabulary-padding rule (128 · TP); the provider builds the model with the
rule the checkpoint records and masks the padded logits, so padding changes neither logits nor losses.

Multi-rank layouts: the parent converts once, then launches ``torchrun`` with this module's worker; every
rank runs the forward (pipeline schedule, forward only) and rank 0 gathers the per-layer outputs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["ParityReport", "compare", "convert_for_megatron", "dequantized_reference_dir", "hf_forward",
           "is_fp8_checkpoint", "megatron_forward", "run_parity"]


@dataclass
class ParityReport:
    """Per-tensor max/mean abs diffs and the verdict."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    tol: float = 1e-4
    layout: str = "tp1"
    convert_layout: str = "tp1"
    model_type: str = ""

    @property
    def passed(self) -> bool:
        return all(r["pass"] for r in self.rows) and bool(self.rows)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def table(self) -> str:
        lines = [f"parity {self.model_type}  layout={self.layout} (converted as {self.convert_layout})  "
                 f"tol={self.tol:g}",
                 f"{'tensor':<22}{'max_abs':>12}{'mean_abs':>12}{'ref_absmax':>12}  ok"]
        for r in self.rows:
            lines.append(f"{r['name']:<22}{r['max_abs']:>12.3e}{r['mean_abs']:>12.3e}{r['ref_absmax']:>12.3e}  "
                         f"{'yes' if r['pass'] else 'NO'}")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def compare(name: str, ref: Any, got: Any, tol: float) -> dict[str, Any]:
    """One row of the report; shapes must agree exactly."""
    if tuple(ref.shape) != tuple(got.shape):
        raise AdNannyMegatronError(f"parity: `{name}` shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    diff = (ref.double() - got.double()).abs()
    ref_max = float(ref.double().abs().max())
    max_abs = float(diff.max())
    return {"name": name, "max_abs": max_abs, "mean_abs": float(diff.mean()), "ref_absmax": ref_max,
            "pass": max_abs <= tol * max(1.0, ref_max)}


def parity_inputs(vocab: int, batch_size: int, seq_len: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, seq_len), generator=g)


def is_fp8_checkpoint(hf_dir: str | Path) -> bool:
    """True when ``config.json`` declares DeepSeek's FP8 block quantization."""
    from adnanny_megatron.provider import load_hf_config

    qc = load_hf_config(hf_dir).get("quantization_config") or {}
    return str(qc.get("quant_method", "")).lower() == "fp8"


def dequantized_reference_dir(hf_dir: str | Path, out: str | Path) -> Path:
    """A BF16 copy of an FP8 HF checkpoint, decoded by adnanny-ckpt's block codec (``out``; reused if complete).

    Why: transformers' FP8 loader refuses weights whose dimensions are not whole 128-blocks, while ckpt's codec
    handles ragged edge blocks — and it is the codec the conversion uses, so the reference and the converted
    megatron model hold the same BF16 values (FP8 -> BF16 exactly as ``hf_to_mcore`` decodes it).
    """
    import shutil

    from adnanny_ckpt.safetensors_io import HFCheckpointReader, ShardedSafetensorsWriter, atomic_write_json

    from adnanny_megatron.provider import load_hf_config

    src, dst = Path(hf_dir), Path(out)
    done = dst / ".adnanny-dequantized"
    if done.is_file():
        return dst
    cfg = load_hf_config(src)
    qc = cfg.pop("quantization_config", None) or {}
    block = tuple(qc.get("weight_block_size") or (128, 128))
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    with HFCheckpointReader(src) as reader:
        writer = ShardedSafetensorsWriter(dst)
        for name in reader.names():
            if name.endswith("_scale_inv"):
                continue  # folded into the BF16 values
            writer.add(name, reader.get_dequantized(name, block=block))  # type: ignore[arg-type]
        writer.close()
    atomic_write_json(dst / "config.json", cfg)
    for extra in src.iterdir():  # tokenizer / generation / modeling files, if any
        if extra.is_file() and not extra.name.endswith((".safetensors", ".safetensors.index.json")) and \
                extra.name != "config.json":
            shutil.copy2(extra, dst / extra.name)
    done.write_text(str(src.resolve()))
    return dst


def hf_forward(hf_dir: str | Path, ids: Any, device: str = "cpu") -> dict[str, Any]:
    """Reference outputs from transformers in fp32: ``layer.i`` (i < L-1), ``final_norm``, ``logits``.

    An FP8 checkpoint is first decoded by adnanny-ckpt's codec (:func:`dequantized_reference_dir`, in a temp
    dir), so any FP8 checkpoint ckpt can read — ragged 128-blocks included — has a reference.
    """
    import torch
    from transformers import AutoModelForCausalLM

    ctx = tempfile.TemporaryDirectory(prefix="adnanny-parity-ref-") if is_fp8_checkpoint(hf_dir) else None
    if ctx is not None:
        hf_dir = dequantized_reference_dir(hf_dir, Path(ctx.name) / "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True)
    if ctx is not None:
        ctx.cleanup()
    model.to(device).eval()
    with torch.no_grad():
        out = model(input_ids=ids.to(device), output_hidden_states=True)
    hs = [h.cpu() for h in out.hidden_states]  # L+1 entries: embeddings, layer 0..L-2 outputs, final-norm(layer L-1)
    n = len(hs) - 1
    res = {f"layer.{i}": hs[i + 1].float() for i in range(n - 1)}
    res["final_norm"] = hs[n].float()
    res["logits"] = out.logits.float().cpu()
    return res


def convert_for_megatron(hf_dir: str | Path, out_dir: str | Path, sizes: Any) -> Path:
    """adnanny-ckpt's HF->torch_dist conversion in layout ``sizes``; returns the checkpoint dir itself."""
    from adnanny_ckpt import hf_to_mcore

    out = Path(out_dir)
    if not (out / "latest_checkpointed_iteration.txt").is_file():
        hf_to_mcore(str(hf_dir), str(out), pp=sizes.pp, ep=sizes.ep, tp=sizes.tp, progress=False,
                    overwrite=True)
    it = (out / "latest_checkpointed_iteration.txt").read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


def megatron_forward(hf_dir: str | Path, ckpt_dir: str | Path, ids: Any, sizes: Any) -> dict[str, Any] | None:
    """Our megatron model's outputs for ``ids`` (rank 0 gets the dict, other ranks ``None``).

    Process groups must be initialized with ``sizes``. Every data-parallel rank runs the same input.
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from adnanny_megatron import provider
    from adnanny_megatron.backend import _masks
    from adnanny_megatron.checkpoint import load_model_weights

    # no sequence parallelism: the hooks need whole sequences on every TP rank (forward only, so allowed)
    rule = provider.checkpoint_vocab_rule(ckpt_dir)
    spec = provider.transformer_config_from_hf(hf_dir, bf16=False, tp=sizes.tp, pp=sizes.pp, ep=sizes.ep,
                                               sequence_parallel=False, mtp=False,  # forward without labels
                                               **({} if rule is None else {"make_vocab_size_divisible_by": rule}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = provider.build_model(spec)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())  # megatron's local norms are created on the CPU
    load_model_weights(model, ckpt_dir)
    model.eval()
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(_mod: Any, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            captured[name] = t.detach().transpose(0, 1).float().cpu()  # [s,b,h] -> [b,s,h]
        return fn

    n_layers = spec.config.num_layers
    for layer in model.decoder.layers:
        idx = layer.layer_number - 1  # megatron numbers layers globally from 1
        if idx < n_layers - 1:
            layer.register_forward_hook(hook(f"layer.{idx}"))
    if model.decoder.final_layernorm is not None:
        model.decoder.final_layernorm.register_forward_hook(hook("final_norm"))
    pos, attn = _masks(torch.ones_like(ids))
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    logits: list[torch.Tensor] = []

    def forward_step(data_iterator: Any, m: Any) -> tuple[Any, Any]:
        next(data_iterator)
        out = m(ids.to(dev), pos.to(dev), None if attn is None else attn.to(dev))

        def loss_func(t: Any) -> tuple[Any, dict[str, Any]]:
            full = gather_from_tensor_model_parallel_region(t)  # vocab-parallel -> full vocab
            logits.append(full.detach().float().cpu())
            return t.sum() * 0.0, {}

        return out, loss_func

    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
            num_microbatches=1, seq_length=ids.shape[1], micro_batch_size=ids.shape[0], forward_only=True,
        )
    if logits:
        captured["logits"] = logits[0][..., : spec.vocab_size]
    gathered: list[dict[str, Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, captured if ps.get_data_parallel_rank() == 0 and
                           ps.get_tensor_model_parallel_rank() == 0 else {})
    if dist.get_rank() != 0:
        return None
    merged: dict[str, Any] = {}
    for part in gathered:
        merged.update(part)
    return merged


def run_parity(hf_dir: str | Path, *, layout: str = "tp1", convert_layout: str | None = None,
               tol: float | None = None, batch_size: int = 2, seq_len: int = 16, seed: int = 0,
               workdir: str | Path | None = None) -> ParityReport:
    """Convert, run both models, compare; multi-rank layouts are launched under torchrun."""
    from adnanny_megatron import parallel
    from adnanny_megatron.provider import load_hf_config

    sizes = parallel.parse_sizes(layout)
    conv_sizes = parallel.parse_sizes(convert_layout or layout)
    tol = 1e-4 if tol is None else tol
    cfg = load_hf_config(hf_dir)
    ctx = tempfile.TemporaryDirectory(prefix="adnanny-parity-") if workdir is None else None
    base = Path(ctx.name if ctx else workdir)  # type: ignore[arg-type]
    try:
        ckpt = convert_for_megatron(hf_dir, base / f"mcore-{convert_layout or layout}".replace(",", "_"),
                                    conv_sizes)
        out_json = base / "megatron_outputs.pt"
        if sizes.world_size == 1:
            import torch

            parallel.initialize(sizes)
            try:
                got = megatron_forward(hf_dir, ckpt, parity_inputs(cfg["vocab_size"], batch_size, seq_len, seed),
                                       sizes)
            finally:
                parallel.destroy()
            torch.save(got, out_json)
        else:
            from adnanny_megatron.launch import check_ok, run_torchrun

            args = ["parity", "--hf", str(hf_dir), "--layout", layout, "--batch-size", str(batch_size),
                    "--seq-len", str(seq_len), "--seed", str(seed), "--_worker", "--_out", str(out_json),
                    "--workdir", str(ckpt)]
            check_ok(run_torchrun(sizes.world_size, args, timeout_s=600))
        import torch

        got = torch.load(out_json, weights_only=False)
        ref = hf_forward(hf_dir, parity_inputs(cfg["vocab_size"], batch_size, seq_len, seed))
        report = ParityReport(tol=tol, layout=layout, convert_layout=convert_layout or layout,
                              model_type=str(cfg.get("model_type")))
        missing = sorted(set(ref) - set(got))
        if missing:
            raise AdNannyMegatronError(f"parity: megatron produced no output for {missing}")
        order = sorted((k for k in ref if k.startswith("layer.")), key=lambda k: int(k.split(".")[1]))
        for name in [*order, "final_norm", "logits"]:
            report.rows.append(compare(name, ref[name], got[name], tol))
        return report
    finally:
        if ctx is not None:
            ctx.cleanup()


def _worker(args: Any) -> int:
    """One rank of a multi-process parity run (launched by :func:`run_parity`)."""
    import torch
    import torch.distributed as dist

    from adnanny_megatron import parallel
    from adnanny_megatron.provider import load_hf_config

    sizes = parallel.parse_sizes(args.layout, int(os.environ.get("WORLD_SIZE", "1")))
    parallel.initialize(sizes)
    cfg = load_hf_config(args.hf)
    got = megatron_forward(args.hf, args.workdir, parity_inputs(cfg["vocab_size"], args.batch_size,
                                                                args.seq_len, args.seed), sizes)
    if dist.get_rank() == 0:
        tmp = Path(args._out).with_suffix(".tmp")
        torch.save(got, tmp)
        os.replace(tmp, args._out)
    parallel.destroy()
    return 0


def cli_parity(args: Any) -> int:
    """``adnanny-megatron parity``: print the table (or JSON); exit 1 on failure."""
    if args._worker:
        return _worker(args)
    report = run_parity(args.hf, layout=args.layout, convert_layout=args.convert_layout, tol=args.tol,
                        batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed, workdir=args.workdir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
    sys.stdout.flush()
    return 0 if report.passed else 1
