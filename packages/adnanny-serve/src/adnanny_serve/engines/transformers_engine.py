"""Batched generation with Hugging Face transformers (CPU fp32, GPU bf16).

Prompts are sorted by token length and cut into batches of ``batch_size`` so each batch pads little;
padding is on the left so every row's next token sits in the last column. Stop strings are checked on
the decoded tail of each row after every step (a row that hits one is finished while the others go
on), then the text is cut at the first stop string. Log-probabilities come from the raw logits
(before temperature / top-p), like vLLM's default.

Prefix caching. Labeling prompts share a long prefix (system prompt, guidelines, worked example: ~300 of
~350 tokens for query_ad), so the engine computes the KV cache of the prompts' longest common token prefix
once (kept across calls while the prefix stays the same, as vLLM's automatic prefix caching does) and
prefills only each prompt's own suffix. Rows are laid out as ``prefix | pads | suffix``; position ids come
from the attention mask's cumulative sum, so every real token keeps the position it has without the cache,
and greedy outputs equal the uncached ones (tested).

Log-likelihood scoring (:meth:`TransformersEngine.loglikelihood`, the benchmarks' multiple choice). The
requests are grouped by context (the choices of one item share it) and many items go into one forward pass
of up to ``batch_size`` scored continuations. Each item is one row, its context followed by all its choices,
with a block attention mask (every choice sees the whole context and its own earlier tokens, never another
choice) and position ids that restart after the context for each choice, so the context's keys and values
are computed once per item and shared by its choices instead of recomputed per choice, and no padding is
spent on choices of unequal length. Logits are computed only from the shortest context's end on. The sums
equal a direct per-token forward of context + continuation (tested).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_serve._compat import cache_kwarg
from adnanny_serve.engines.base import Generation, LogLikelihood, SamplingParams, encode_pair
from adnanny_serve.errors import ConfigError, EngineError

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersEngine"]


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    text = str(e).strip().splitlines()
    return (text[0] if text else repr(e))[:limit]


def _stop_criteria_class():  # built lazily: importing transformers is slow
    import torch
    from transformers import StoppingCriteria

    class _StopOnStrings(StoppingCriteria):
        """Marks a row finished once its decoded completion contains a stop string or EOS."""

        def __init__(self, tokenizer: Any, prompt_len: int, stops: tuple[str, ...], eos_ids: set[int],
                     cancelled: Any = None, on_tokens: Any = None):
            self.cancelled = cancelled  # row -> bool: the server's client went away, stop spending steps on it
            self.on_tokens = on_tokens  # (row, completion token ids so far) after each step: streaming
            self.cancelled_rows: set[int] = set()
            self.tok = tokenizer
            self.prompt_len = prompt_len
            self.stops = stops
            self.eos_ids = eos_ids
            # A stop string spans at most len(s) tokens (every token decodes to >= 1 char, mostly);
            # decode a few more to be safe with byte-level pieces.
            self.tail = max((len(s) for s in stops), default=0) + 8
            self.stopped_at: dict[int, int] = {}  # row -> number of completion tokens when it stopped

        def __call__(self, input_ids: "torch.Tensor", scores: Any, **kwargs: Any) -> "torch.Tensor":
            b, t = input_ids.shape
            n = t - self.prompt_len
            done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
            for row in range(b):
                if row in self.stopped_at:
                    done[row] = True
                    continue
                if self.on_tokens is not None:
                    self.on_tokens(row, input_ids[row, self.prompt_len:].tolist())
                if self.cancelled is not None and self.cancelled(row):
                    self.stopped_at[row] = n
                    self.cancelled_rows.add(row)
                    done[row] = True
                    continue
                last = int(input_ids[row, -1])
                if last in self.eos_ids:
                    self.stopped_at[row] = n
                    done[row] = True
                    continue
                if self.stops:
                    tail_ids = input_ids[row, max(self.prompt_len, t - self.tail):].tolist()
                    text = self.tok.decode(tail_ids, skip_special_tokens=False)
                    if any(s in text for s in self.stops):
                        self.stopped_at[row] = n
                        done[row] = True
            return done

    return _StopOnStrings


class TransformersEngine:
    """The :class:`~adnanny_serve.engines.base.Engine` on a transformers causal LM.

    Build it with :meth:`from_pretrained` (a local HF dir; FP8 checkpoints are dequantized at load on
    CPU) or from an already loaded model and tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, add_special_tokens: bool = False,
                 prefix_caching: bool = True, min_prefix_tokens: int = 32, jump_forward: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"`batch_size` must be an integer >= 1; got {batch_size!r}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        self.prefix_caching = prefix_caching
        self.min_prefix_tokens = min_prefix_tokens
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_cache: Any = None
        self.jump_forward = jump_forward
        self.jump_stats: Any = None  # adnanny_serve.engines.jump_forward.JumpStats of the last generate call
        self._skeletons: dict[Any, Any] = {}
        self.weights_version = 0  # bumped by load_weights: anything cached under an older version is stale
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        # Chat templates end the assistant turn with a token such as <|im_end|>: stop there too.
        for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
            tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
            if tid is not None:
                self.eos_ids.add(int(tid))
        self.model_name = str(getattr(model.config, "_name_or_path", "") or "model")
        self.fp8_weights: str | None = getattr(model, "fp8_weights", None)  # "keep" | "dequantize" | None

    # ------------------------------------------------------------------ weight updates (RL)
    def load_weights(self, weights: Any = None) -> None:
        """Take new weights and drop every cached prefix KV (stale after any change of weights).

        ``weights``: a mapping or iterable of ``(name, tensor)`` in the model's own ``state_dict`` names, copied
        in; ``None`` when the parameters were already updated in place — on CPU, RL runs this engine on the
        policy's own module, so the update is free and only the caches must go. Unknown names or wrong shapes
        are refused by name before anything is copied.
        """
        import torch

        if weights is not None:
            items = list(weights.items() if hasattr(weights, "items") else weights)
            own = self.model.state_dict()
            unknown = [n for n, _ in items if n not in own]
            if unknown:
                raise EngineError(f"`load_weights`: {len(unknown)} unknown tensor names, e.g. {unknown[:3]}; "
                                  f"expected the model's state_dict names such as {next(iter(own))!r}.")
            bad = [(n, tuple(t.shape), tuple(own[n].shape)) for n, t in items
                   if tuple(t.shape) != tuple(own[n].shape)]
            if bad:
                raise EngineError(f"`load_weights`: tensor `{bad[0][0]}` has shape {bad[0][1]}, the model expects "
                                  f"{bad[0][2]}.")
            given = {n for n, _ in items}
            with torch.no_grad():
                for n, t in items:
                    if own[n].dtype == torch.float8_e4m3fn and t.dtype != torch.float8_e4m3fn:
                        # FP8-resident weights: a full-precision update is re-quantized by adnanny-ckpt's codec,
                        # its block scales replaced with it (a plain copy would drop the scales)
                        from adnanny_ckpt.fp8 import quantize_blocks

                        scale = n + "_scale_inv"
                        if scale in given:
                            raise EngineError(f"`load_weights`: tensor `{n}` is full precision but `{scale}` is given "
                                              "too; pass FP8 weights with their scales, or full-precision ones alone.")
                        q, s = quantize_blocks(t.detach().to("cpu", torch.float32), name=n)
                        own[n].copy_(q.to(own[n].device))
                        own[scale].copy_(s.to(own[scale].device))
                    else:
                        own[n].copy_(t.to(device=own[n].device, dtype=own[n].dtype))
        self._prefix_ids, self._prefix_cache = (), None
        self.model.eval()
        self.weights_version += 1

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
        fp8_loader: str = "adnanny",
        prefix_caching: bool = True,
        allow_pickle: bool = False,
        fp8_weights: str | None = None,
    ) -> "TransformersEngine":
        """Load a local HF checkpoint. ``dtype`` defaults to fp32 on CPU and bf16 on CUDA.

        FP8 checkpoints (``quantization_config.quant_method == "fp8"``): ``fp8_loader="adnanny"``
        dequantizes them at load with adnanny-ckpt's codec (works for any shape); ``"transformers"``
        uses transformers' own path (on CPU it also dequantizes, but needs shapes that are whole
        multiples of the block). ``fp8_weights`` (adnanny loader): ``"keep"`` = the projection weights stay FP8
        in memory (:mod:`adnanny_serve.fp8_linear`: blockwise scaled matmul on sm_90 GPUs, else a per-layer
        dequantize in the forward), ``"dequantize"`` = expanded once at load; default ``keep`` on CUDA and
        ``dequantize`` on CPU (CPUs have no FP8 matmul, and re-expanding every weight at every step is slow).
        ``engine.fp8_weights`` says which was used (None for a non-FP8 checkpoint).

        Before anything is loaded the folder passes adnanny-ckpt's one weight-file rule
        (:func:`adnanny_ckpt.models.check_model_dir`): pickle weights are refused unless ``allow_pickle``, and a
        truncated or forged safetensors file, a missing tokenizer or a model transformers cannot build is an
        :class:`EngineError` naming the file and what is wrong (the CLIs print it in one line, exit 2).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from adnanny_serve._compat import dtype_kwarg
        from adnanny_serve.fp8_load import is_fp8_checkpoint, load_fp8_dequantized

        from adnanny_ckpt.errors import AdNannyCkptError
        from adnanny_ckpt.models import check_model_dir

        p = Path(path)
        if not (p / "config.json").is_file():
            raise EngineError(f"`model` must be a local HF checkpoint dir with a config.json; got {str(p)!r}.")
        try:
            weight_files = check_model_dir(p, allow_pickle=allow_pickle)
        except AdNannyCkptError as e:
            raise EngineError(str(e)) from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"`device` is {device!r} but CUDA is not available; pass `--device cpu`.")
        dt_name = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dt_name)
        if dt is None:
            raise ConfigError(f"`dtype` must be float32, bfloat16 or float16; got {dtype!r}.")
        if fp8_loader not in ("adnanny", "transformers"):
            raise ConfigError(f"`fp8_loader` must be 'adnanny' or 'transformers'; got {fp8_loader!r}.")
        if fp8_weights not in (None, "keep", "dequantize"):
            raise ConfigError(f"`fp8_weights` must be 'keep' or 'dequantize'; got {fp8_weights!r}.")
        is_fp8 = is_fp8_checkpoint(p)
        fp8_mode = (fp8_weights or ("keep" if device.startswith("cuda") else "dequantize")) if is_fp8 else None
        if fp8_mode == "keep" and fp8_loader != "adnanny":
            raise ConfigError("`fp8_weights='keep'` needs `fp8_loader='adnanny'`.")
        try:
            tok = AutoTokenizer.from_pretrained(p)
        except Exception as e:  # transformers' messages name neither the folder nor the missing file
            raise EngineError(f"the tokenizer in `{p}` cannot be loaded: {type(e).__name__}: {_first_line(e)}") from None
        try:
            if fp8_mode == "keep":
                from adnanny_serve.fp8_linear import load_fp8_resident

                model = load_fp8_resident(p, device=device, dtype=dt)
            elif is_fp8 and fp8_loader == "adnanny":
                model = load_fp8_dequantized(p, dtype=dt)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    p, use_safetensors=weight_files[0].suffix == ".safetensors", **{dtype_kwarg(): dt})
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"the model in `{p}` cannot be loaded (weights {[f.name for f in weight_files][:3]}): "
                              f"{type(e).__name__}: {_first_line(e)}") from None
        model.to(device)
        eng = cls(model, tok, batch_size=batch_size, prefix_caching=prefix_caching)
        eng.fp8_weights = fp8_mode
        return eng

    # ------------------------------------------------------------------ helpers
    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt string for ``messages`` with the generation prompt (assistant turn) opened."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise EngineError("the tokenizer has no chat template; send raw prompts to /v1/completions.")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[str], params: SamplingParams, *,
                 cancelled: Any = None, on_tokens: Any = None) -> list[Generation]:
        """Generate for all prompts, ``batch_size`` at a time, shortest prompts batched together.

        ``cancelled(i) -> bool`` (optional; the server passes it) is asked after every decoding step: a prompt
        whose client went away stops there (``finish_reason == "cancelled"``), and a batch whose prompts are all
        cancelled is not started. A batch ends as soon as all its rows are finished or cancelled.
        ``on_tokens(i, token_ids)`` (optional; streaming) is called after every step with prompt ``i``'s completion
        tokens so far (the final :class:`Generation` is still what counts: it is cut at stop strings).

        Greedy requests with ``params.skeleton`` (labeling) decode by jump-forward
        (:mod:`adnanny_serve.engines.jump_forward`): the answer's fixed tags go through the model as a verified
        draft, so outputs equal plain greedy decoding in fewer forward passes; ``engine.jump_stats`` counts them
        (``jump_forward=False`` turns it off).
        """
        if isinstance(prompts, str):
            raise ConfigError("`prompts` must be a list of strings; got a single string. Wrap it in a list.")
        if not prompts:
            return []
        from adnanny_serve.engines.jump_forward import JumpStats

        self.jump_stats = JumpStats()
        enc = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        if any(len(x) == 0 for x in enc):
            raise ConfigError("a prompt tokenized to zero tokens; send non-empty prompts.")
        n_prefix = self._shared_prefix_len(enc)
        order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if cancelled is not None and all(cancelled(i) for i in idx):
                for i in idx:
                    out[i] = Generation(text="", prompt_tokens=len(enc[i]), completion_tokens=0,
                                        finish_reason="cancelled")
                continue
            row_cancelled = None if cancelled is None else (lambda r, idx=idx: bool(cancelled(idx[r])))
            row_tokens = None if on_tokens is None else (lambda r, ids, idx=idx: on_tokens(idx[r], ids))
            if params.skeleton is not None and params.temperature == 0 and self.jump_forward:
                from adnanny_serve.engines.jump_forward import generate_jump_forward

                gens = generate_jump_forward(self, [enc[i] for i in idx], params, n_prefix, row_cancelled,
                                             row_tokens, stats=self.jump_stats)
            else:
                gens = self._generate_batch([enc[i] for i in idx], params, n_prefix, row_cancelled, row_tokens)
            for i, g in zip(idx, gens):
                out[i] = g
        return out  # type: ignore[return-value]

    def _shared_prefix_len(self, enc: list[list[int]]) -> int:
        """Tokens of the longest common prefix worth caching (0: none); every prompt keeps >= 1 own token."""
        if not self.prefix_caching:
            return 0
        first = enc[0]
        n = min(len(x) for x in enc) - 1
        if len(enc) == 1:  # a lone prompt reuses as much of the cached prefix as it starts with
            cached = self._prefix_ids
            k = 0
            while k < min(n, len(cached)) and first[k] == cached[k]:
                k += 1
            n = k
        for x in enc[1:]:
            k = 0
            while k < n and x[k] == first[k]:
                k += 1
            n = k
        return n if n >= self.min_prefix_tokens else 0

    def normalized_skeleton(self, skeleton: Any) -> Any:
        """``skeleton`` as this tokenizer decodes it (cached per skeleton)."""
        got = self._skeletons.get(skeleton)
        if got is None:
            got = self._skeletons[skeleton] = skeleton.normalized(self.tokenizer)
        return got

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers < 4.56 builds it without a config
            return DynamicCache()

    def prefix_cache_copy(self, prefix: list[int], batch: int) -> Any:
        """A fresh KV cache of ``prefix`` for ``batch`` rows (the cached one copied, cut to ``prefix`` when the
        cached prefix is longer, repeated per row)."""
        import copy

        cache = copy.deepcopy(self._prefix_kv(prefix))
        n = len(prefix)
        for layer in cache.layers:
            if layer.keys.shape[-2] > n:
                layer.keys = layer.keys[..., :n, :]
                layer.values = layer.values[..., :n, :]
        cache.batch_repeat_interleave(batch)
        return cache

    def _prefix_kv(self, prefix: list[int]) -> Any:
        """KV cache of ``prefix`` (batch 1), computed once and reused while the prefix is unchanged (a cached
        longer prefix that starts with it serves too: :meth:`prefix_cache_copy` cuts it)."""
        import torch

        key = tuple(prefix)
        if self._prefix_cache is not None and self._prefix_ids[:len(key)] == key:
            return self._prefix_cache
        if key != self._prefix_ids or self._prefix_cache is None:
            cache = self._new_cache()
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                           **{cache_kwarg(self.model): cache})
            self._prefix_ids, self._prefix_cache = key, cache
        return self._prefix_cache

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams, n_prefix: int = 0,
                        cancelled: Any = None, on_tokens: Any = None) -> list[Generation]:
        import torch

        dev = self.device
        width = max(len(x) for x in ids)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):  # left padding of the part after the cached prefix
            input_ids[r, width - len(x) + n_prefix:] = torch.tensor(x[n_prefix:], dtype=torch.long)
            attn[r, width - len(x) + n_prefix:] = 1
            if n_prefix:  # prefix | pads | suffix
                input_ids[r, :n_prefix] = torch.tensor(x[:n_prefix], dtype=torch.long)
                attn[r, :n_prefix] = 1
        crit = _stop_criteria_class()(self.tokenizer, width, params.stop, self.eos_ids, cancelled, on_tokens)
        extra: dict[str, Any] = {}
        if n_prefix:
            extra[cache_kwarg(self.model)] = self.prefix_cache_copy(ids[0][:n_prefix], len(ids))
        kwargs: dict[str, Any] = dict(**extra,
            input_ids=input_ids.to(dev), attention_mask=attn.to(dev), max_new_tokens=params.max_tokens,
            stopping_criteria=[crit], pad_token_id=pad, return_dict_in_generate=True,
            output_logits=params.logprobs is not None,
        )
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p),
                          top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            res = self.model.generate(**kwargs)
        seqs = res.sequences[:, width:].cpu()
        chosen = top_v = top_i = None
        if params.logprobs is not None:
            # One step at a time: stacking [B, steps, V] log-probs would cost GBs on long reasoning.
            k = max(1, params.logprobs)
            ch, tv, ti = [], [], []
            for j, lg in enumerate(res.logits):
                lp = lg.float().log_softmax(-1)  # [B, V]
                ch.append(lp.gather(1, seqs[:, j:j + 1].to(lp.device)).squeeze(1).cpu())
                v, i = lp.topk(min(k, lp.shape[-1]), dim=-1)
                tv.append(v.cpu())
                ti.append(i.cpu())
            chosen, top_v, top_i = torch.stack(ch, 1), torch.stack(tv, 1), torch.stack(ti, 1)  # [B, steps(, k)]
        gens = []
        for r in range(len(ids)):
            row = seqs[r].tolist()
            n = crit.stopped_at.get(r, len(row))
            # EOS ends a row even when it was emitted at the very last step (criteria saw it then too).
            for j, t in enumerate(row[:n]):
                if t in self.eos_ids:
                    n = j + 1
                    break
            toks = row[:n]
            finish = "stop" if (r in crit.stopped_at or (toks and toks[-1] in self.eos_ids)) else "length"
            if r in crit.cancelled_rows:
                finish = "cancelled"
            text_ids = toks[:-1] if toks and toks[-1] in self.eos_ids else toks
            text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
            hit = [(text.find(s), s) for s in params.stop if s in text]
            if hit:
                pos, s = min(hit)
                text = text[: pos + len(s)] if params.include_stop_str_in_output else text[:pos]
                finish = "stop"
            g = Generation(text=text, prompt_tokens=len(ids[r]), completion_tokens=len(toks),
                           finish_reason=finish, token_ids=toks)
            if chosen is not None and top_v is not None and top_i is not None:
                g.logprobs = chosen[r, : len(toks)].tolist()
                if params.logprobs:
                    g.top_logprobs = [
                        {int(t): float(v) for t, v in zip(top_i[r, j].tolist(), top_v[r, j].tolist())
                         if math.isfinite(v)}
                        for j in range(len(toks))
                    ]
                else:
                    g.top_logprobs = [{} for _ in toks]
            gens.append(g)
        return gens

    # ------------------------------------------------------------------ log-likelihood
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]

    def loglikelihood(self, requests: list[tuple[str, str]], *, batch_size: int | None = None
                      ) -> list[LogLikelihood]:
        """Score each ``(context, continuation)``; ``batch_size`` (default the engine's) continuations per pass.

        Contexts longer than the model's ``max_position_embeddings`` (minus the continuation) lose their
        left end, as in lm-evaluation-harness.
        """
        if isinstance(requests, tuple) and len(requests) == 2 and all(isinstance(x, str) for x in requests):
            raise ConfigError("`requests` must be a list of (context, continuation) pairs; got one pair. Wrap it in a list.")
        bs = self.batch_size if batch_size is None else batch_size
        if not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"`batch_size` must be an integer >= 1; got {bs!r}.")
        if not requests:
            return []
        start_ids = [t for t in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) if t is not None][:1]
        max_len = getattr(self.model.config, "max_position_embeddings", None)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            if not (isinstance(req, (tuple, list)) and len(req) == 2 and all(isinstance(x, str) for x in req)):
                raise ConfigError(f"request {i} must be a (context, continuation) pair of strings; got {req!r}.")
            ctx, cont = encode_pair(self._encode, req[0], req[1], start_ids)
            if max_len and len(ctx) + len(cont) > max_len:
                if len(cont) >= max_len:
                    raise ConfigError(f"request {i}: the continuation alone has {len(cont)} tokens, more than "
                                      f"the model's {max_len} positions.")
                ctx = ctx[len(ctx) + len(cont) - max_len:]
            groups.setdefault(tuple(ctx), []).append((i, cont))
        # Longest first (as the harness does): the first batch shows at once whether memory suffices.
        order = sorted(groups.items(), key=lambda kv: -(len(kv[0]) + max(len(c) for _, c in kv[1])))
        out: list[LogLikelihood | None] = [None] * len(requests)
        batch: list[tuple[tuple[int, ...], list[tuple[int, list[int]]]]] = []
        rows = 0
        for ctx, conts in order:
            for k in range(0, len(conts), bs):  # an item with more choices than a batch is split
                part = conts[k:k + bs]
                if batch and rows + len(part) > bs:
                    self._score_batch(batch, out)
                    batch, rows = [], 0
                batch.append((ctx, part))
                rows += len(part)
        if batch:
            self._score_batch(batch, out)
        return out  # type: ignore[return-value]

    def _score_batch(self, batch: list[tuple[tuple[int, ...], list[tuple[int, list[int]]]]],
                     out: list[LogLikelihood | None]) -> None:
        """One forward pass: each item's row is its context then all its choices, each choice seeing only
        the context and its own earlier tokens (a block mask), so the context is computed once per item."""
        import torch

        dev = self.device
        pad = int(self.tokenizer.pad_token_id)
        rows, segs = [], []  # segs[g] = [(request index, continuation, start of its inputs in the row)]
        for ctx, part in batch:
            ids, seg = list(ctx), []
            for i, c in part:
                seg.append((i, c, len(ids)))
                ids.extend(c[:-1])  # a continuation's last token is only predicted, never an input
            rows.append(ids)
            segs.append(seg)
        width = max(len(r) for r in rows)
        ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
        pos_t = torch.zeros((len(rows), width), dtype=torch.long)
        allow = torch.zeros((len(rows), width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for g, ((ctx, _), ids, seg) in enumerate(zip(batch, rows, segs)):
            n_ctx = len(ctx)
            ids_t[g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            pos_t[g, :n_ctx] = torch.arange(n_ctx)
            allow[g, :n_ctx, :n_ctx] = causal[:n_ctx, :n_ctx]
            for _, c, s in seg:
                e = s + len(c) - 1
                pos_t[g, s:e] = torch.arange(n_ctx, n_ctx + e - s)
                allow[g, s:e, :n_ctx] = True  # the whole context
                allow[g, s:e, s:e] = causal[: e - s, : e - s]  # and its own earlier tokens
            idx = torch.arange(len(ids), width)
            allow[g, idx, idx] = True  # padding attends to itself only (keeps the softmax finite)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill_(~allow, torch.finfo(dtype).min).unsqueeze(1)
        first = min(len(c) for c, _ in batch) - 1  # no logits are needed before the shortest context's end
        with torch.inference_mode():
            res = self.model(input_ids=ids_t.to(dev), attention_mask=mask.to(dev), position_ids=pos_t.to(dev),
                             use_cache=False, logits_to_keep=width - first)
            logits = res.logits  # [G, width - first, V]
            for g, ((ctx, _), seg) in enumerate(zip(batch, segs)):
                for i, c, s in seg:
                    # token t of the continuation is predicted at the context's last position (t = 0) or at
                    # the position of its own token t - 1
                    at = torch.tensor([len(ctx) - 1] + list(range(s, s + len(c) - 1))) - first
                    lp = logits[g, at.to(logits.device)].float().log_softmax(-1).cpu()
                    tgt = torch.tensor(c, dtype=torch.long)
                    total = float(lp.gather(1, tgt.unsqueeze(1)).sum())
                    greedy = bool((lp.argmax(-1) == tgt).all())
                    out[i] = LogLikelihood(logprob=total, is_greedy=greedy, n_tokens=len(c))
