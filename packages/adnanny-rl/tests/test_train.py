"""The GRPO recipe end to end on adnanny-sft's fine-tuned tiny fixture: mechanics, exact resume, learning."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from adnanny_rl.config import load_config
from adnanny_rl.train import main
from adnanny_sft.logs import read_log
from adnanny_sft.testing import fine_tuned_fixture


@pytest.fixture(scope="module")
def policy() -> Path:
    return Path(fine_tuned_fixture())


def _corpus(policy: Path) -> str:
    from adnanny_sft.export import read_model_manifest

    return str(read_model_manifest(policy)["corpus"])            # the sample corpus the fixture was trained on


def _cfg(policy: Path, out: Path, **kw: object):
    base = dict(policy=str(policy), output_dir=str(out), steps=3, prompts_per_step=4, group_size=4, micro_batch=8,
                max_completion_tokens=12, eval_prompts=8, save_every=2, seed=0, lr=1e-4, threads=1,
                tasks=[{"task": "query_ad", "data": _corpus(policy), "mode": "label", "format_penalty": -1.0}])
    base.update(kw)
    return load_config(None, overrides=base)


def test_rollouts_rewards_and_logs(policy: Path, tmp_path: Path) -> None:
    summary = main(_cfg(policy, tmp_path / "run"))
    recs = [r for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        t = r["tasks"]["query_ad"]
        assert t["parse_error_rate"] < 0.5                      # the fixture answers in the tag format
        assert 0.0 <= r["zero_advantage_share"] <= 1.0 and r["kl"] >= 0.0 and math.isfinite(r["entropy"])
    # at least one group had different rewards, so the policy actually moved
    assert any(r["zero_advantage_share"] < 1.0 for r in recs) and any(r["grad_norm"] > 0 for r in recs)
    assert (Path(summary["model"]) / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
    _assert_recalibrated(policy, Path(summary["model"]), summary)


def _assert_recalibrated(policy: Path, model_dir: Path, summary: dict) -> None:
    """The aligned model ships the policy's task definitions and a threshold refitted on its own held-out scores
    (not the SFT model's copied one): recomputed here from the exported weights with adnanny-sft's scorer."""
    from transformers import AutoModelForCausalLM

    from adnanny_cook.tasks import load_task_from_dir
    from adnanny_rl.data import load_prompt_rows
    from adnanny_sft.calibration import calibrate_threshold
    from adnanny_sft.export import read_model_manifest
    from adnanny_sft.models import load_tokenizer
    from adnanny_sft.scoring import score_rows

    entry = read_model_manifest(model_dir)["tasks"]["query_ad"]
    assert (model_dir / "tasks" / "query_ad.toml").is_file()
    assert entry["calibrated_by"] == "adnanny-rl"
    assert summary["calibration"]["query_ad"]["before"]["threshold"] == \
        read_model_manifest(policy)["tasks"]["query_ad"]["threshold"]
    spec = load_task_from_dir(model_dir, "query_ad")
    _, held = load_prompt_rows(_corpus(policy), spec)
    gold = [spec.map_label("label", r.labels["label"]) in spec.defect_values["label"] for r in held]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    _, scores = score_rows(model, load_tokenizer(model_dir), spec, [r.input for r in held], field="label")
    th = calibrate_threshold(scores, gold, entry["threshold_method"])
    assert entry["threshold"] == pytest.approx(th.value, abs=1e-6) and entry["n"] == len(held)


def test_label_prompts_are_drawn_class_balanced() -> None:
    """An imbalanced labeling set (90% `bad`) is drawn ~1/3 per relevance value with `class_balance` (the default
    for a labels reward) and ~90% `bad` without it; the draw order stays a checkpointable list."""
    from collections import Counter

    from adnanny_cook.tasks import load_task
    from adnanny_rl.data import PromptRow
    from adnanny_rl.train import TaskRuntime, _draw, class_weights

    spec = load_task("query_ad")
    rows = [PromptRow(id=str(i), input={}, labels={"label": "bad" if i < 90 else ("fair" if i < 95 else "good")},
                      extra={}) for i in range(100)]
    shares = {}
    for balanced in (True, False):
        rt = TaskRuntime(cfg=None, spec=spec, train=rows, held=[], reward=None,  # type: ignore[arg-type]
                         row_weights=class_weights(spec, rows) if balanced else None)
        rt.cfg = type("C", (), {"weight": 1.0})()
        picks = _draw(random.Random(0), [rt], 3000)
        counts = Counter(r.labels["label"] for _, r in picks)
        shares[balanced] = {k: v / 3000 for k, v in counts.items()}
        assert all(isinstance(i, int) for i in rt.order)
    assert all(abs(shares[True][v] - 1 / 3) < 0.05 for v in ("bad", "fair", "good")), shares
    assert abs(shares[False]["bad"] - 0.9) < 0.02, shares
    assert class_weights(spec, rows[:90]) is None                         # one gold value: nothing to balance


def test_killed_run_resumes_bit_for_bit(policy: Path, tmp_path: Path) -> None:
    import safetensors.torch as st

    main(_cfg(policy, tmp_path / "straight", steps=4))
    main(_cfg(policy, tmp_path / "resumed", steps=2))              # "killed" after its step-2 checkpoint
    main(_cfg(policy, tmp_path / "resumed", steps=4))              # the same command again continues
    a = st.load_file(str(tmp_path / "straight" / "checkpoint" / "backend" / "trainable.safetensors"))
    b = st.load_file(str(tmp_path / "resumed" / "checkpoint" / "backend" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [r for r in read_log(tmp_path / "straight") if r["kind"] == "train"]
    lb = [r for r in read_log(tmp_path / "resumed") if r["kind"] == "train"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(la) == strip(lb)
    with pytest.raises(Exception, match="config differs"):
        main(_cfg(policy, tmp_path / "resumed", steps=5, beta=0.5))


def _paired_interval(diffs: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of paired (after - before) differences over prompts."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


#: the bound the learning tests hold the policy to: mean per-token KL(π_θ ‖ π_ref) (k3) of every step's rollouts
KL_BOUND = 0.5


def _learning_report(summary: dict, out: Path, task: str) -> tuple[float, float, float, float, float]:
    before, after = summary["eval_before"][task], summary["eval_after"][task]
    lo, hi = _paired_interval([a - b for a, b in zip(after, before, strict=True)])
    kl = max(r["kl"] for r in read_log(out) if r["kind"] == "train")
    mb, ma = sum(before) / len(before), sum(after) / len(after)
    print(f"{task}: held-out mean reward {mb:.3f} -> {ma:.3f} over {len(before)} prompts, paired 95% interval of "
          f"the gain [{lo:.3f}, {hi:.3f}], max step KL {kl:.4f} (bound {KL_BOUND})")
    return mb, ma, lo, hi, kl


def test_one_update_moves_probability_towards_better_completions(policy: Path) -> None:
    """The fast guard of learning (default suite): one on-policy GRPO update through the recipe's own pieces
    raises the log-probability of the completions with positive advantage relative to those with negative
    advantage — Σ_i A_i·Δ(mean-token log π) > 0. A flipped sign, advantages aligned to the wrong rows, a mask
    off by one token or a loss that never reaches the weights all fail it."""
    from adnanny_cook.tasks import load_task_from_dir
    from adnanny_rl.data import load_prompt_rows
    from adnanny_rl.objective import aggregation_weights, group_advantages
    from adnanny_rl.rewards.labels import LabelReward
    from adnanny_rl.train import TaskRuntime, _batch, _render, _score, policy_update
    from adnanny_serve.engines import SamplingParams
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.models import load_tokenizer

    torch.manual_seed(0)
    cfg = _cfg(policy, Path("unused"), prompts_per_step=6, group_size=8, micro_batch=16, lr=1e-3, beta=0.0)
    spec = load_task_from_dir(policy, "query_ad")
    train, _ = load_prompt_rows(_corpus(policy), spec)
    rt = TaskRuntime(cfg=cfg.tasks[0], spec=spec, train=train, held=[],
                     reward=LabelReward(spec, mode="label", format_penalty=-1.0))
    backend = build_hf_backend(str(policy), seed=0, lr=cfg.lr, max_grad_norm=0.0, weight_decay=0.0, total_steps=1,
                               lr_schedule="constant")
    tok = load_tokenizer(policy)
    engine = TransformersEngine(backend.model, tok, batch_size=48)
    rows = train[:cfg.prompts_per_step]
    prompts = [_render(engine, rt, r, cfg.max_prompt_tokens) for r in rows]
    gens = engine.generate([p for p in prompts for _ in range(cfg.group_size)],
                           SamplingParams(max_tokens=cfg.max_completion_tokens, temperature=1.0, seed=1))
    rewards = torch.tensor(_score(rt, [r for r in rows for _ in range(cfg.group_size)], [g.text for g in gens],
                                  cfg.group_size).total).view(len(rows), cfg.group_size)
    adv = group_advantages(rewards).reshape(-1)
    assert (adv != 0).any(), f"every group had equal rewards: {rewards.tolist()}"
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = _batch([ids[i // cfg.group_size] for i in range(len(gens))], [list(g.token_ids) or [pad] for g in gens],
                   pad)
    mask = batch.loss_mask[:, 1:]
    before = backend.token_logprobs(batch)
    weights = aggregation_weights(batch.loss_mask, cfg.loss_aggregation)
    stats, info = policy_update(backend, batch, adv, weights, None, None, cfg)
    after = backend.token_logprobs(batch)
    per_seq = lambda lp: (lp[:, 1:] * mask).sum(1) / mask.sum(1).clamp(min=1)  # noqa: E731
    moved = per_seq(after) - per_seq(before)
    assert info["grad_norm"] > 0 and torch.isfinite(moved).all()
    assert float((adv * moved).sum()) > 0, (adv.tolist(), moved.tolist())
    pos, neg = moved[adv > 0].mean(), moved[adv < 0].mean()
    assert float(pos) > float(neg), (float(pos), float(neg))


def test_dynamic_sampling_keeps_groups_with_a_reward_spread(policy: Path) -> None:
    """DAPO's dynamic sampling in `_rollout`: a reward that varies within a group only for rows in `spread` makes
    every kept group one of those; without it the first P draws are kept whatever their rewards; when the draw
    budget runs out the batch is topped up with flat groups and keeps its P x G shape."""
    from adnanny_cook.tasks import load_task_from_dir
    from adnanny_rl.data import load_prompt_rows
    from adnanny_rl.train import TaskRuntime, _rollout
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_sft.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    spec = load_task_from_dir(policy, "query_ad")
    train, _ = load_prompt_rows(_corpus(policy), spec)
    spread = {r.id for r in train[:40:2]}

    def reward(rows, completions, *, group_size):  # noqa: ANN001, ANN202
        return [float(i % group_size) if r["id"] in spread else 1.0 for i, r in enumerate(rows)]

    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(policy).eval(), load_tokenizer(policy),
                                batch_size=16)

    def run(**kw: object):  # noqa: ANN202
        cfg = _cfg(policy, Path("unused"), prompts_per_step=4, group_size=2, micro_batch=8, max_completion_tokens=4,
                   **kw)
        rt = TaskRuntime(cfg=cfg.tasks[0], spec=spec, train=train[:40], held=[], reward=reward)
        return _rollout(engine, [rt], random.Random(3), cfg, 1)

    picks, prompts, gens, rewards, per_task, draws = run(dynamic_sampling=True, max_draw_rounds=20)
    assert [row.id in spread for _, row in picks] == [True] * 4 and draws > 4
    assert rewards.shape == (4, 2) and (rewards[:, 0] != rewards[:, 1]).all()
    assert len(prompts) == 4 and len(gens) == 8 and len(per_task["query_ad"]["reward"]) == 8
    picks, _, _, rewards, _, draws = run()
    assert draws == 4 and not all(row.id in spread for _, row in picks)
    picks, _, gens, rewards, _, draws = run(dynamic_sampling=True, max_draw_rounds=1)
    assert draws == 4 and rewards.shape == (4, 2) and len(gens) == 8


@pytest.mark.slow
def test_grpo_raises_held_out_label_reward(policy: Path, tmp_path: Path) -> None:
    """(a) GRPO on `query_ad` labels from the shared fixture: the expected reward of the sampling policy on 400
    held-out prompts (the corpus's eval split; 4 samples each, one fixed sampler seed before and after) rises
    with a paired bootstrap interval above 0, while every step's KL to the reference stays < KL_BOUND.

    The recipe (probes in the README, "Learning"): prompts the fixture never trained on (`label_prompt_files`),
    the relevance label scored in its Bad view (`agreement = "defect"`: the fixture tells fair from good no better
    than a coin, so the exact reward's advantages are noise there), the natural class mix (a balanced draw
    over-weights non-bad), DAPO's dynamic sampling (80-90% of this confident policy's groups are flat),
    P 8 x G 8, lr 2e-4, 30 steps."""
    import polars as pl

    from adnanny_rl.testing import label_prompt_files, world_of_fixture

    train, held = label_prompt_files(world_of_fixture(policy), tmp_path / "prompts")
    tr = {json.loads(line)["query"] for line in train.read_text().splitlines()}
    seen = {json.loads(i)["query"] for i in pl.read_parquet(Path(_corpus(policy)) / "corpus.parquet")
            .filter(pl.col("task") == "query_ad")["input"]}
    assert len(tr) > 1000 and not tr & seen              # no RL prompt is an SFT input
    out = tmp_path / "learn"
    s = main(_cfg(policy, out, steps=30, prompts_per_step=8, group_size=8, micro_batch=64, lr=2e-4, beta=0.04,
                  dynamic_sampling=True, max_draw_rounds=6, eval_prompts=400, eval_samples=4, save_every=100,
                  tasks=[{"task": "query_ad", "data": str(train), "eval_data": str(held), "mode": "label",
                          "agreement": "defect", "field_weights": {"label": 1.0}, "class_balance": False}]))
    mb, ma, lo, _, kl = _learning_report(s, out, "query_ad")
    assert lo > 0 and ma > mb and kl < KL_BOUND


def test_a_too_long_prompt_is_refused_by_name(policy: Path, tmp_path: Path) -> None:
    from adnanny_rl.errors import RLConfigError

    with pytest.raises(RLConfigError, match=r"task `query_ad` row `[^`]+`: the prompt has \d+ tokens, more than "
                                            r"`max_prompt_tokens`=16"):
        main(_cfg(policy, tmp_path / "long", max_prompt_tokens=16))


def test_a_raising_reward_names_its_task_and_rows() -> None:
    from adnanny_cook.tasks import get_task
    from adnanny_rl.config import TaskConfig
    from adnanny_rl.data import PromptRow
    from adnanny_rl.errors import RewardError
    from adnanny_rl.train import TaskRuntime, _score

    def broken(rows, completions, *, group_size):  # noqa: ANN001, ANN202
        raise KeyError("ad_id")

    rows = [PromptRow(id=f"r{i}", input={"query": "q", "ad_title": "t"}, labels={}, extra={}) for i in range(2)]
    rt = TaskRuntime(cfg=TaskConfig(task="query_ad", data="d"), spec=get_task("query_ad"), train=rows, held=[],
                     reward=broken)
    with pytest.raises(RewardError, match=r"task `query_ad`: reward `.*broken.*` raised on rows \['r0', 'r1'\].*"
                                          r"KeyError: 'ad_id'"):
        _score(rt, rows, ["a", "b"], 2)


@pytest.mark.slow
def test_grpo_raises_held_out_retrieval_reward(policy: Path, tmp_path: Path) -> None:
    """(b) GRPO on `keyword_query` with the retrieval reward: generated queries are injected doc2query-style into
    the frozen BM25 index of the fixture world's catalog; the reward is g(NDCG@10 with − without) of the held-out
    sessions' clicked queries (eq. 8 batch term + the per-sample term of the completion's own ad). The policy is
    `query_writer_fixture()` (the shared fixture warm-started on the world's keyword -> query pairs, cached); the
    eval ads never appear in its warm start nor in the RL prompts (checked below). The expected reward of the
    sampling policy on every eval ad (8 samples each, one fixed sampler seed before and after) rises with a paired
    bootstrap interval above 0, while every step's KL to the reference stays < KL_BOUND.

    The recipe (probes in the README): 8 prompts x G 8 per step and the evaluation over every eval ad with 8 samples
    each (64 prompts x 4 samples could not resolve a gain); the per-sample term alone (`batch_weight` 0: the batch
    term is mostly the other prompts' outcomes, noise in a group's advantages), lr 5e-4, 45 steps."""
    from adnanny_rl.testing import query_writer_fixture, retrieval_prompt_files, world_of_fixture

    writer = query_writer_fixture(policy, threads=1)
    world = world_of_fixture(writer)
    train, held = retrieval_prompt_files(world, tmp_path / "prompts")
    tr, ev = ([json.loads(line) for line in p.read_text().splitlines()] for p in (train, held))
    assert len(ev) >= 80 and not {r["ad_id"] for r in tr} & {r["ad_id"] for r in ev}
    warm = writer.parent / "keyword_query_pairs.jsonl"           # what the warm start was trained on
    if warm.is_file():
        seen = {json.loads(line)["ad_title"] for line in warm.read_text().splitlines() if line.strip()}
        assert not seen & {r["ad_title"] for r in ev}
    out = tmp_path / "learn-retrieval"
    task = {"task": "keyword_query", "data": str(train), "eval_data": str(held), "world": str(world),
            "reward": "retrieval", "metric": "ndcg", "k": 10, "transform": "scale", "transform_scale": 10.0,
            "sample_weight": 3.0, "batch_weight": 0.0, "format_penalty": -1.0}
    s = main(_cfg(writer, out, steps=45, prompts_per_step=8, group_size=8, micro_batch=32, lr=5e-4, beta=0.04,
                  max_completion_tokens=16, eval_prompts=len(ev), eval_samples=8, save_every=100, tasks=[task]))
    assert len(s["eval_before"]["keyword_query"]) == len(ev)     # every eval ad was scored
    mb, ma, lo, _, kl = _learning_report(s, out, "keyword_query")
    assert lo > 0 and ma > mb and kl < KL_BOUND
