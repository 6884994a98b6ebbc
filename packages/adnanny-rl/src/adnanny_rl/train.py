"""`adnanny-rl train`: KL-regularised GRPO over classification- and generation-style ads tasks (paper §4.3).

One rollout step, top to bottom:

1. draw P prompts across tasks by their weights (seeded; the sampler's state is checkpointed; with
   `dynamic_sampling`, groups whose G rewards are all equal are set aside and more prompts drawn);
2. render each with its task definition (adnanny-cook) and the policy's chat template; generate G completions
   per prompt through adnanny-serve's `Engine` (the G copies of a prompt share its cached prefix);
3. score them with each task's reward (labels, frozen retrieval, frozen CTR — `adnanny_rl.rewards`); batch
   rewards are formed across prompts (batch j = completion j of every prompt, see `batch_reward`);
4. group-relative advantages; old-policy (μ > 1) and reference log-probabilities recomputed by the backends —
   never taken from the engine, whose log-probabilities come before temperature and from a possibly stale copy;
5. μ policy updates of the GRPO loss (`adnanny_rl.objective`, written once) through the training backend's
   `forward_backward_fn`, micro-batched exactly; then `engine.load_weights()` so no stale prefix KV survives;
6. log per task (reward and components, KL, entropy, clip fraction, response length, parse errors, share of
   zero-advantage groups) and checkpoint (policy, optimizer, sampler and RNG states, reference hash).

Entropy is estimated as the mean of −log π(sampled token) over completion tokens, which is unbiased for the
policy's per-token entropy when the samples are on-policy (temperature 1) — no full-vocabulary pass needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adnanny_rl.config import RLConfig, TaskConfig
from adnanny_rl.errors import RLConfigError, RewardError

__all__ = ["TaskRuntime", "build_tasks", "evaluate", "main", "policy_update"]

STATE_FILE = "trainer_state.json"


@dataclass
class TaskRuntime:
    """A task ready to sample: its definition, prompt rows, reward and sampler position."""

    cfg: TaskConfig
    spec: Any
    train: list[Any]
    held: list[Any]
    reward: Any
    order: list[int] = field(default_factory=list)
    pos: int = 0
    #: per-row draw weights (class balancing); None: a plain shuffled cycle over `train`
    row_weights: list[float] | None = None


def _param_hash(model: Any) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _reward_for(t: TaskConfig, spec: Any, train: list[Any], held: list[Any], out_dir: Path
                ) -> tuple[Any, list[Any], list[Any]]:
    """Build the task's reward (and attach the ad ids its frozen downstream model needs)."""
    from adnanny_rl.batch_reward import RewardTransform
    from adnanny_rl.rewards.labels import LabelReward

    transform = RewardTransform(t.transform, scale=t.transform_scale)
    if t.reward == "labels":
        return (LabelReward(spec, field_weights=t.field_weights or None, mode=t.mode,
                            format_penalty=t.format_penalty, agreement=t.agreement), train, held)
    from adnanny_rl.data import attach_ad_ids, clicked_queries, load_world, split_world

    world_dir = Path(t.world) if t.world else _world_of(Path(t.data))
    train_logs, held_logs = split_world(world_dir, load_world(world_dir))
    world = held_logs
    if t.reward == "retrieval":
        from adnanny_rl.rewards.retrieval import RetrievalReward

        train, held = attach_ad_ids(train, world), attach_ad_ids(held, world)
        return (RetrievalReward(spec, world.ads, clicked_queries(world), k=t.k, metric=t.metric,
                                retriever=t.retriever, transform=transform, format_penalty=t.format_penalty,
                                sample_weight=t.sample_weight, batch_weight=t.batch_weight),
                train, held)
    from adnanny_rl.rewards.ctr import CTRModel, CTRReward

    ctr_dir = out_dir / "ctr"
    if (ctr_dir / "ctr.json").is_file():
        model = CTRModel.load(ctr_dir)          # trained once per run; a resumed run reuses the same file
    else:
        imps = train_logs.impressions          # fitted on the earlier sessions only
        model = CTRModel.fit([r["query"] for r in imps], [world.ads[r["ad_id"]] for r in imps],
                             [bool(r["clicked"]) for r in imps], [int(r["position"]) for r in imps])
        model.save(ctr_dir)
    return CTRReward(spec, model, format_penalty=t.format_penalty), train, held


def _world_of(data: Path) -> Path:
    """The sample world a corpus belongs to: `WORLD/corpus/corpus.parquet` -> `WORLD`."""
    d = data if data.is_dir() else data.parent
    for cand in (d, d.parent):
        if (cand / "catalog" / "ads.parquet").is_file():
            return cand
    raise RLConfigError(f"cannot find the sample world of `{data}`; set `world` in the task's table")


def _task_spec(ref: str, data: Path, model_dir: Path | None) -> Any:
    """The task definition a prompt must be rendered with: a TOML file when `ref` is a path; else the exact
    (selected) definition stored with the data (a corpus folder's `tasks/`) or with the policy (sft's export),
    so a relevance-only model is prompted for `<Label>` alone; else the registered task."""
    from adnanny_cook.tasks import load_task, load_task_from_dir

    if ref.endswith(".toml") or "/" in ref:
        return load_task(ref)
    for folder in (data if data.is_dir() else data.parent, model_dir):
        if folder is not None and (folder / "tasks" / f"{ref}.toml").is_file():
            return load_task_from_dir(folder, ref)
    return load_task(ref)


def build_tasks(cfg: RLConfig, out_dir: Path, model_dir: Path | None = None) -> list[TaskRuntime]:
    from adnanny_rl.data import load_prompt_rows

    tasks = []
    for t in cfg.tasks:
        spec = _task_spec(t.task, Path(t.data), model_dir)
        train, held = load_prompt_rows(t.data, spec)
        if t.eval_data:                       # a separate held-out file: all of `data` trains
            more, other = load_prompt_rows(t.eval_data, spec, allow_no_train=True)
            train, held = train + held, more + other
        reward, train, held = _reward_for(t, spec, train, held, out_dir)
        weights = class_weights(spec, train) if t.class_balance or (t.class_balance is None and
                                                                    t.reward == "labels") else None
        tasks.append(TaskRuntime(cfg=t, spec=spec, train=train, held=held, reward=reward, row_weights=weights))
    return tasks


def class_weights(spec: Any, rows: list[Any]) -> list[float] | None:
    """Per-row draw weights 1 / count(gold value of the primary field), so each value is drawn equally often.

    WHY: GRPO's label reward pushes each prompt towards its own gold value, so on an imbalanced set the
    largest value wins on balance: on the flow's corpus (46% `bad`, 27% each `fair`/`good`) 16 steps moved the
    held-out mean P(non-bad) from 0.52 to 0.37 and every row past the calibrated threshold. None when the task
    has no primary field or a single gold value (nothing to balance)."""
    field_name = getattr(spec, "primary_field", None)
    if field_name is None:
        return None
    values = [spec.map_label(field_name, r.labels[field_name]) if r.labels.get(field_name) is not None else None
              for r in rows]
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    if len(counts) < 2:
        return None
    return [1.0 / counts[v] for v in values]


# ------------------------------------------------------------------------------------------ rollouts
def _render(engine: Any, rt: TaskRuntime, row: Any, max_prompt_tokens: int) -> str:
    messages = rt.spec.render_messages(row.input, rt.cfg.mode)
    prompt = engine.apply_chat_template(messages)
    n = engine.count_tokens(prompt)
    if n > max_prompt_tokens:
        raise RLConfigError(f"task `{rt.spec.name}` row `{row.id}`: the prompt has {n} tokens, more than "
                            f"`max_prompt_tokens`={max_prompt_tokens}")
    return prompt


def _score(rt: TaskRuntime, rows: list[Any], texts: list[str], group_size: int) -> Any:
    from adnanny_rl.rewards.base import as_output

    try:
        out = rt.reward([r.as_reward_row() for r in rows], texts, group_size=group_size)
    except RewardError:
        raise
    except Exception as e:  # noqa: BLE001 - named and re-raised
        raise RewardError(f"task `{rt.spec.name}`: reward `{getattr(rt.reward, 'name', rt.reward)}` raised on "
                          f"rows {[r.id for r in rows[:3]]}...: {type(e).__name__}: {e}") from e
    return as_output(out, len(texts), task=rt.spec.name)


def _draw(rng: random.Random, tasks: list[TaskRuntime], n: int) -> list[tuple[int, Any]]:
    """n (task index, row) pairs: tasks by weight, rows in a per-task shuffled cycle (or, class-balanced, in
    cycles of weighted draws)."""
    weights = [t.cfg.weight for t in tasks]
    picks = []
    for _ in range(n):
        k = rng.choices(range(len(tasks)), weights=weights)[0]
        t = tasks[k]
        if t.pos >= len(t.order):
            if t.row_weights is None:
                t.order = list(range(len(t.train)))
                rng.shuffle(t.order)
            else:                              # balanced: one epoch's worth of draws, with replacement
                t.order = rng.choices(range(len(t.train)), weights=t.row_weights, k=len(t.train))
            t.pos = 0
        picks.append((k, t.train[t.order[t.pos]]))
        t.pos += 1
    return picks


def _batch(tokenizer_ids: list[list[int]], completions: list[list[int]], pad_id: int) -> Any:
    """Prompt + completion ids, right-padded; loss_mask = 1 on completion tokens (the backend's alignment)."""
    import torch

    from adnanny_sft.backend import Batch

    n = len(completions)
    width = max(len(p) + len(c) for p, c in zip(tokenizer_ids, completions, strict=True))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i, (p, c) in enumerate(zip(tokenizer_ids, completions, strict=True)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, :len(p) + len(c)] = 1
        mask[i, len(p):len(p) + len(c)] = 1.0
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=mask, sample_weights=torch.ones(n))


def _rows_slice(batch: Any, lo: int, hi: int) -> Any:
    from adnanny_sft.backend import Batch

    return Batch(input_ids=batch.input_ids[lo:hi], attention_mask=batch.attention_mask[lo:hi],
                 loss_mask=batch.loss_mask[lo:hi], sample_weights=batch.sample_weights[lo:hi])


def evaluate(engine: Any, tasks: list[TaskRuntime], n: int, max_tokens: int, max_prompt_tokens: int, *,
             samples: int = 0, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0
             ) -> dict[str, list[float]]:
    """The reward of each of the first `n` held-out prompts per task.

    `samples` = 0: one greedy completion per prompt. `samples` = S > 0: S completions sampled as in the rollouts
    (`temperature`, `top_p`; one fixed `seed`, so before and after share the sampler's random numbers) and the
    prompt's value is their mean reward — the expected reward of the sampling policy, which is what GRPO
    maximises (a greedy answer moves only once the policy's argmax flips).

    A batch-level reward (eq. 8, `batch_level = True`: retrieval) gives one value to a whole batch, so each
    held-out completion is scored as its own batch — its ad alone expanded, its ad's held-out clicked queries —
    and the per-prompt values are independent (what a paired bootstrap over prompts needs)."""
    from adnanny_serve.engines import SamplingParams

    out: dict[str, list[float]] = {}
    reps = max(samples, 1)
    params = (SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed) if samples
              else SamplingParams(max_tokens=max_tokens, temperature=0.0))
    for rt in tasks:
        rows = rt.held[:n]
        if not rows:
            continue
        prompts = [_render(engine, rt, r, max_prompt_tokens) for r in rows]
        gens = engine.generate([p for p in prompts for _ in range(reps)], params)
        texts = [g.text for g in gens]
        rep_rows = [r for r in rows for _ in range(reps)]
        if getattr(rt.reward, "batch_level", False):
            vals = [_score(rt, [r], [t], 1).total[0] for r, t in zip(rep_rows, texts, strict=True)]
        else:
            vals = _score(rt, rep_rows, texts, reps).total
        out[rt.spec.name] = [sum(vals[i * reps:(i + 1) * reps]) / reps for i in range(len(rows))]
    return out


def _rollout(engine: Any, tasks: list[TaskRuntime], rng: random.Random, cfg: RLConfig, step: int
             ) -> tuple[list[tuple[int, Any]], list[str], list[Any], Any, dict[str, dict[str, list[float]]], int]:
    """Steps 1-3 of the recipe: draw prompts, generate G completions each, score them.

    Returns (picks, prompts, generations, rewards [P, G], per-task logged values, prompts drawn). Rows are
    prompt-major: rows p*G .. p*G+G-1 are prompt p's G completions.

    With `dynamic_sampling` (DAPO's), prompts are drawn P at a time and a group whose rewards are all equal is set
    aside, until P groups with a reward spread are kept or `max_draw_rounds` rounds are spent; the batch is then
    topped up with set-aside groups so its shape stays P x G. WHY: a confident policy answers most prompts the same
    way G times; those groups have zero advantage, so a plain batch's update is driven by the few others (one or
    two of eight prompts on the shared fixture), and Adam turns that into a full-size step on one prompt's noise."""
    import torch

    from adnanny_serve.engines import SamplingParams

    # one group: (task index, row), rendered prompt, its G generations, their rewards, its logged values
    kept: list[tuple[tuple[int, Any], str, list[Any], list[float], dict[str, list[float]]]] = []
    flat: list[tuple[tuple[int, Any], str, list[Any], list[float], dict[str, list[float]]]] = []
    rounds = cfg.max_draw_rounds if cfg.dynamic_sampling else 1
    draws = 0
    for r in range(rounds):
        picks = _draw(rng, tasks, cfg.prompts_per_step)
        draws += len(picks)
        prompts = [_render(engine, tasks[k], row, cfg.max_prompt_tokens) for k, row in picks]
        gens = engine.generate([p for p in prompts for _ in range(cfg.group_size)],
                               SamplingParams(max_tokens=cfg.max_completion_tokens, temperature=cfg.temperature,
                                              top_p=cfg.top_p, seed=cfg.seed * 1_000_003 + step + r * 7_919_111))
        group_rewards: list[list[float]] = [[] for _ in picks]
        group_logs: list[dict[str, list[float]]] = [defaultdict(list) for _ in picks]
        for k, rt in enumerate(tasks):
            idx = [p for p, (kk, _) in enumerate(picks) if kk == k]
            if not idx:
                continue
            rows = [picks[p][1] for p in idx for _ in range(cfg.group_size)]
            texts = [gens[p * cfg.group_size + g].text for p in idx for g in range(cfg.group_size)]
            res = _score(rt, rows, texts, cfg.group_size)
            for j, p in enumerate(idx):
                sl = slice(j * cfg.group_size, (j + 1) * cfg.group_size)
                group_rewards[p] = list(res.total[sl])
                group_logs[p]["reward"] += res.total[sl]
                for name, vals in res.components.items():
                    group_logs[p][name] += vals[sl]
                group_logs[p]["length"] += [float(gens[p * cfg.group_size + g].completion_tokens)
                                            for g in range(cfg.group_size)]
        for p, pick in enumerate(picks):
            item = (pick, prompts[p], gens[p * cfg.group_size:(p + 1) * cfg.group_size], group_rewards[p],
                    group_logs[p])
            spread = max(group_rewards[p]) != min(group_rewards[p])
            (kept if spread or not cfg.dynamic_sampling else flat).append(item)
        if len(kept) >= cfg.prompts_per_step:
            break
    chosen = (kept + flat)[:cfg.prompts_per_step]
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (k, _), *_rest, logs in chosen:
        for name, vals in logs.items():
            per_task[tasks[k].spec.name][name] += vals
    rewards = torch.tensor([c[3] for c in chosen], dtype=torch.float32)
    return ([c[0] for c in chosen], [c[1] for c in chosen], [g for c in chosen for g in c[2]], rewards, per_task,
            draws)


def policy_update(backend: Any, batch: Any, adv: Any, weights: Any, old_logp: Any, ref_logp: Any, cfg: RLConfig
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """μ optimizer steps of the GRPO loss on one rollout batch, micro-batched exactly (step 5 of the recipe).

    `adv` [N] and `weights` [N, T] (from `aggregation_weights` over the whole batch) index the rollout rows;
    `old_logp` is None when μ = 1 (on-policy: ratio 1 with the gradient A·∇logp). Returns the mean KL, entropy
    and clip fraction over the μ passes, and the last optimizer step's info."""
    from adnanny_rl.objective import grpo_loss

    n_rollout = int(batch.input_ids.shape[0])
    stats: dict[str, float] = defaultdict(float)
    step_info: dict[str, float] = {}
    for _ in range(cfg.mu):
        for lo in range(0, n_rollout, cfg.micro_batch):
            mb = _rows_slice(batch, lo, min(lo + cfg.micro_batch, n_rollout))

            def loss_fn(logp: Any, rows: Any, lo: int = lo) -> Any:
                # rows index the micro-batch; lo + rows index the rollout batch (row-additive loss)
                idx = lo + rows.cpu()
                w = weights[idx].to(logp)
                o = grpo_loss(logp, logp.detach() if old_logp is None else old_logp[idx].to(logp),
                              None if ref_logp is None else ref_logp[idx].to(logp), adv[idx],
                              batch.loss_mask[idx].to(logp), beta=cfg.beta, clip_low=cfg.clip_low,
                              clip_high=cfg.clip_high, kl_estimator=cfg.kl_estimator, token_weights=w)
                stats["kl"] += o.kl / cfg.mu
                stats["clip_fraction"] += o.clip_fraction * len(idx) / n_rollout / cfg.mu
                stats["entropy"] += float(-(logp.detach() * w).sum()) / cfg.mu
                return o.loss

            backend.forward_backward_fn(mb, loss_fn)
        step_info = backend.optimizer_step()
        if step_info.get("skipped"):
            raise RLConfigError(f"non-finite gradient norm {step_info['grad_norm']}; the last checkpoint is kept")
    return dict(stats), step_info


# ------------------------------------------------------------------------------------------ the loop
def main(cfg: RLConfig) -> dict[str, Any]:
    """Run (or resume) a GRPO run; returns the summary also written to `output_dir/summary.json`.

    The output folder is locked for the run: a second `adnanny-rl train` on it is refused, naming this one."""
    from adnanny_cook.lock import FolderLock, FolderLockedError

    try:
        with FolderLock(cfg.output_dir, "adnanny-rl train"):
            return _run(cfg)
    except FolderLockedError as e:
        raise RLConfigError(str(e)) from None


def _run(cfg: RLConfig) -> dict[str, Any]:
    import torch

    from adnanny_ckpt.models import resolve_model
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.logs import RunLog
    from adnanny_sft.models import load_tokenizer

    from adnanny_rl.objective import aggregation_weights, group_advantages, zero_advantage_share

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy_dir = resolve_model(cfg.policy)
    ref_dir = resolve_model(cfg.reference) if cfg.reference else policy_dir
    torch.manual_seed(cfg.seed)
    n_rollout = cfg.prompts_per_step * cfg.group_size
    backend = build_hf_backend(str(policy_dir), seed=cfg.seed, lr=cfg.lr, max_grad_norm=cfg.max_grad_norm,
                               weight_decay=0.0, total_steps=cfg.steps * cfg.mu, lr_schedule="constant",
                               warmup_steps=cfg.warmup_steps)
    tokenizer = load_tokenizer(policy_dir)
    engine = TransformersEngine(backend.model, tokenizer, batch_size=min(n_rollout, 32))
    reference = build_hf_backend(str(ref_dir), seed=cfg.seed, lr=1e-9) if cfg.beta > 0 else None
    ref_hash = _param_hash(reference.model) if reference is not None else None
    tasks = build_tasks(cfg, out, policy_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    ev_kw = {"samples": cfg.eval_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
             "seed": cfg.seed * 1_000_003 + 999_983}
    rng = random.Random(cfg.seed)
    start = 0
    _recover_checkpoint(out)
    state_path = out / "checkpoint" / STATE_FILE
    log = RunLog(out, tensorboard=cfg.tensorboard)
    if state_path.is_file():
        st = json.loads(state_path.read_text())
        if st.get("reference_sha256") != ref_hash:
            raise RLConfigError(f"`{state_path}`: the reference model changed since this run started "
                                f"(sha256 {st.get('reference_sha256')} -> {ref_hash})")
        if st.get("config") != cfg.model_dump(exclude={"steps", "output_dir", "eval_every", "save_every"}):
            raise RLConfigError(f"`{state_path}`: the config differs from the run being resumed; use a new "
                                f"`output_dir` (only `steps`, `eval_every`, `save_every` may change)")
        backend.load(out / "checkpoint" / "backend")
        engine.load_weights()
        rng.setstate(_tuple_state(st["python_rng"]))
        torch.set_rng_state(torch.load(out / "checkpoint" / "torch_rng.pt", weights_only=True))
        for rt, s in zip(tasks, st["tasks"], strict=True):
            rt.order, rt.pos = s["order"], s["pos"]
        start = st["step"]
        log.truncate_after(start)
        before = st["eval_before"]
    else:
        before = evaluate(engine, tasks, cfg.eval_prompts, cfg.max_completion_tokens, cfg.max_prompt_tokens, **ev_kw)
        log.write({"kind": "eval", "step": 0, "reward": {k: sum(v) / len(v) for k, v in before.items()}})

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc="grpo", disable=None)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        _, prompts, gens, rewards, per_task, draws = _rollout(engine, tasks, rng, cfg, step)
        adv = group_advantages(rewards, scale_std=cfg.scale_std).reshape(-1)               # [N]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        batch = _batch([prompt_ids[i // cfg.group_size] for i in range(n_rollout)],
                       [list(g.token_ids) or [pad_id] for g in gens], pad_id)
        weights = aggregation_weights(batch.loss_mask, cfg.loss_aggregation,
                                      normalizer=float(n_rollout * cfg.max_completion_tokens))
        old_logp = backend.token_logprobs(batch) if cfg.mu > 1 else None
        ref_logp = reference.token_logprobs(batch) if reference is not None else None
        try:
            stats, step_info = policy_update(backend, batch, adv, weights, old_logp, ref_logp, cfg)
        except RLConfigError as e:
            raise RLConfigError(f"step {step}: {e}") from None
        engine.load_weights()                    # policy changed in place: drop cached prefixes
        rec: dict[str, Any] = {"kind": "train", "step": step, "kl": stats["kl"], "entropy": stats["entropy"],
                               "clip_fraction": stats["clip_fraction"], "grad_norm": step_info["grad_norm"],
                               "zero_advantage_share": zero_advantage_share(rewards), "prompts_drawn": draws,
                               "seconds": time.perf_counter() - t0, "tasks": {}}
        for name, comps in per_task.items():
            rec["tasks"][name] = {c: sum(v) / len(v) for c, v in comps.items()}
            if "parsed" in comps:
                rec["tasks"][name]["parse_error_rate"] = 1.0 - rec["tasks"][name]["parsed"]
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            ev = evaluate(engine, tasks, cfg.eval_prompts, cfg.max_completion_tokens, cfg.max_prompt_tokens, **ev_kw)
            log.write({"kind": "eval", "step": step, "reward": {k: sum(v) / len(v) for k, v in ev.items()}})
        log.write(rec)
        bar.update(1)
        bar.set_postfix(reward=f"{float(rewards.mean()):.3f}", kl=f"{rec['kl']:.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save(out, backend, rng, tasks, step, cfg, ref_hash, before)
    bar.close()
    after = evaluate(engine, tasks, cfg.eval_prompts, cfg.max_completion_tokens, cfg.max_prompt_tokens, **ev_kw)
    log.write({"kind": "eval", "step": cfg.steps, "reward": {k: sum(v) / len(v) for k, v in after.items()}})
    log.close()
    model_dir = backend.export(out / "model", tokenizer=tokenizer)
    calibration = recalibrate(policy_dir, model_dir, tasks, backend.model, tokenizer)
    summary = {"steps": cfg.steps, "eval_before": before, "eval_after": after, "model": str(model_dir),
               "reference_sha256": ref_hash, "calibration": calibration}
    _atomic_json(out / "summary.json", summary)
    return summary


def recalibrate(policy_dir: Path, model_dir: Path, tasks: list[TaskRuntime], model: Any, tokenizer: Any
                ) -> dict[str, Any]:
    """Carry the policy's model manifest (adnanny-sft's ``adnanny_model.json`` + ``tasks/``) to the aligned model,
    with each labeling task's decision threshold refitted on that task's held-out prompts.

    WHY: the threshold is a property of the weights — sft fits it on the validation split from P(non-defect) —
    and RL moves those scores even at a small KL (one answer token among a dozen), so a copied threshold can put
    every row on one side of it. The held-out prompts here are the corpus's eval split, the split sft fitted
    on. Returns {task: {threshold, val_bacc, val_auc, before}}; empty when the policy has no model manifest."""
    import shutil

    from adnanny_sft.export import calibrate_tasks, read_model_manifest, write_model_manifest

    manifest = read_model_manifest(policy_dir)
    if manifest is None:
        return {}
    if (policy_dir / "tasks").is_dir() and not (model_dir / "tasks").exists():
        shutil.copytree(policy_dir / "tasks", model_dir / "tasks")
    old = manifest.get("tasks", {})
    method = {n: e.get("threshold_method", "max_bacc") for n, e in old.items()}
    specs, rows = {}, []
    for rt in tasks:
        if rt.cfg.reward == "labels" and rt.spec.name in old and rt.spec.name not in specs:
            specs[rt.spec.name] = rt.spec
            rows += [{"task": rt.spec.name, "input": r.input, "labels": r.labels} for r in rt.held]
    fitted: dict[str, Any] = {}
    was = model.training
    model.eval()
    for name, spec in specs.items():
        fitted.update(calibrate_tasks(model, tokenizer, {name: spec}, rows, method=method[name]))
    model.train(was)
    entries = {n: {k: v for k, v in e.items() if k not in ("hash", "field", "labels", "defect")}
               for n, e in old.items()}
    report = {}
    for name, th in fitted.items():
        report[name] = {"threshold": th["threshold"], "val_bacc": th["val_bacc"], "val_auc": th["val_auc"],
                        "before": {k: old[name].get(k) for k in ("threshold", "val_bacc", "val_auc")}}
        entries[name] = {**{k: v for k, v in th.items() if k != "warning"}, "calibrated_by": "adnanny-rl"}
    from adnanny_cook.tasks import load_task_from_dir

    all_specs = {n: load_task_from_dir(model_dir, n) for n in old if (model_dir / "tasks" / f"{n}.toml").is_file()}
    extra = {k: v for k, v in manifest.items() if k not in ("tasks", "base_model", "corpus")}
    extra["rl"] = {"policy": str(policy_dir), "recalibrated": sorted(report)}
    write_model_manifest(model_dir, all_specs, entries, base_model=manifest.get("base_model", ""),
                         corpus=manifest.get("corpus", ""), extra=extra)
    return report


def _recover_checkpoint(out: Path) -> None:
    """A kill between the two renames of `_save` leaves the previous checkpoint as `.checkpoint-old-N`."""
    import shutil

    final = out / "checkpoint"
    olds = sorted(out.glob(".checkpoint-old-*"))
    if not final.exists() and olds:
        os.replace(olds[-1], final)
    for extra in [*out.glob(".checkpoint-old-*"), *out.glob(".checkpoint-*.tmp")]:
        shutil.rmtree(extra, ignore_errors=True)


def _tuple_state(s: Any) -> Any:
    return tuple(_tuple_state(x) for x in s) if isinstance(s, list) else s


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save(out: Path, backend: Any, rng: random.Random, tasks: list[TaskRuntime], step: int, cfg: RLConfig,
          ref_hash: str | None, before: dict[str, list[float]]) -> None:
    """Write the checkpoint into a fresh folder, then swap it in: a kill never leaves a half checkpoint."""
    import shutil

    import torch

    tmp = out / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    backend.save(tmp / "backend")
    torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")
    state = {"step": step, "python_rng": rng.getstate(), "reference_sha256": ref_hash, "eval_before": before,
             "config": cfg.model_dump(exclude={"steps", "output_dir", "eval_every", "save_every"}),
             "tasks": [{"order": t.order, "pos": t.pos} for t in tasks]}
    (tmp / STATE_FILE).write_text(json.dumps(state))
    final = out / "checkpoint"
    old = out / f".checkpoint-old-{step}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
