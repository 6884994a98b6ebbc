"""The rewards over HTTP, so users of verl, TRL or OpenRLHF can score with AdNanny's ads rewards.

Schema (JSON in, JSON out):

    POST /v1/rewards
    {"task": "query_ad", "rows": [{...input fields..., "labels": {...}}, ...],
     "completions": ["<Label>Good</Label>", ...], "group_size": 4}
    -> 200 {"task": "query_ad", "rewards": [0.0, ...], "components": {"agreement": [...], ...}}

`rows` and `completions` are prompt-major (rows p·G … p·G+G−1 belong to prompt p), as the batch rewards of
eq. 8 need; `group_size` defaults to 1 (per-sample rewards). Bad requests get 4xx with a `detail` naming the field:
422 for a malformed body (FastAPI's validation, the field's path in `loc`), 404 for an unknown task, 400 for rows
the reward cannot use (the message names the row). GET /v1/tasks lists the tasks and their rewards.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adnanny_rl.errors import AdNannyRLError, RLConfigError

__all__ = ["RewardRequest", "build_app", "serve_main"]


class RewardRequest(BaseModel):
    """The body of POST /v1/rewards (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    task: str
    rows: list[dict[str, Any]]
    completions: list[str]
    group_size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _lengths(self) -> RewardRequest:
        if len(self.rows) != len(self.completions):
            raise ValueError(f"`rows` ({len(self.rows)}) and `completions` ({len(self.completions)}) must have "
                             f"one length")
        if len(self.completions) % self.group_size:
            raise ValueError(f"`completions` ({len(self.completions)}) is not whole groups of `group_size`="
                             f"{self.group_size}")
        return self


def build_app(rewards: dict[str, Any]) -> Any:
    """A FastAPI app over `rewards` (task name -> reward callable)."""
    from fastapi import FastAPI, HTTPException

    from adnanny_rl.rewards.base import as_output

    app = FastAPI(title="adnanny-rl rewards")

    @app.get("/v1/tasks")
    def tasks() -> dict[str, Any]:
        return {"tasks": {k: getattr(v, "name", type(v).__name__) for k, v in rewards.items()}}

    @app.post("/v1/rewards")
    def score(req: RewardRequest) -> dict[str, Any]:
        reward = rewards.get(req.task)
        if reward is None:
            raise HTTPException(404, detail=f"`task` {req.task!r} is not served; served: {sorted(rewards)}")
        try:
            out = as_output(reward(req.rows, req.completions, group_size=req.group_size), len(req.completions),
                            task=req.task)
        except (AdNannyRLError, KeyError, ValueError, TypeError) as e:
            raise HTTPException(400, detail=f"task `{req.task}`: {e}") from None
        return {"task": req.task, "rewards": out.total, "components": out.components}

    return app


def serve_main(argv: list[str]) -> int:
    """`adnanny-rl serve-rewards --config rl.toml [--host 127.0.0.1] [--port 8000]`."""
    from pathlib import Path

    p = argparse.ArgumentParser(prog="adnanny-rl serve-rewards", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="an RL config; its [[tasks]] tables define the rewards")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workdir", default=None, help="where frozen models (the CTR model) are kept; default: "
                                                     "the config's output_dir")
    a = p.parse_args(argv)
    from adnanny_rl.config import load_config
    from adnanny_rl.train import build_tasks

    cfg = load_config(a.config)
    tasks = build_tasks(cfg, Path(a.workdir or cfg.output_dir))
    names = [t.spec.name for t in tasks]
    if len(set(names)) != len(names):
        raise RLConfigError(f"the config lists a task twice ({names}); the service keys rewards by task name")
    import uvicorn

    uvicorn.run(build_app({t.spec.name: t.reward for t in tasks}), host=a.host, port=a.port, log_level="warning")
    return 0
