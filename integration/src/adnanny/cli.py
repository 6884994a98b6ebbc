"""`adnanny`: run the whole flow, see where a run stands, render its report, walk a label's lineage.

    adnanny run [--config flow.toml] [--out DIR] [--dry-run] [--seed 3] [--tasks query_ad] [--train.steps 40] ...
    adnanny status RUN_DIR [--json]
    adnanny report RUN_DIR
    adnanny lineage RUN_DIR --id ID [--json] [--full]

Every flow config key is a flag of the same name (nested stage keys dotted: `--train.steps`), generated from the
config model by pydantic-settings (adnanny-cook's one config mechanism). Without `--config` the embedded default
(`adnanny/configs/default.toml`) runs. Exit status: 0 ok; 1 a stage failed; 2 an invalid config or command line;
3 `--dry-run` found something the installed packages do not support yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["dry_run", "main"]


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def dry_run(cfg: Any, stages: Any) -> tuple[str, bool, dict[str, Any]]:
    """(text, everything supported, JSON) of `--dry-run`: the validated config, then per stage what the run would
    do and what of its config the installed packages support — each `Support` line as the stage states it."""
    from adnanny.flow import FlowError, plan_flow
    from adnanny.stage import Support

    lines = [f"flow config valid: stages {list(cfg.stages)}, tasks {list(cfg.tasks)}, run dir {cfg.run_dir}"]
    try:
        plans = {p.name: p for p in plan_flow(cfg, stages)}
    except FlowError as e:
        plans = {}
        lines.append(f"plan: {e}")
    everything = True
    js: dict[str, Any] = {"stages": {}, "tasks": list(cfg.tasks), "run_dir": cfg.run_dir}
    for name in cfg.stages:
        st = stages[name]
        p = plans.get(name)
        lines.append(f"\n{name}" + (f"  [would {p.action}: {p.reason}]" if p else ""))
        try:
            sup = list(st.supports(getattr(cfg, name), cfg))
        except Exception as e:  # a stage that cannot even tell is not supported, and says why
            sup = [Support(f"{name} stage checks", False, f"supports() raised {type(e).__name__}: {e}")]
        for s in sup:
            everything &= bool(s.supported)
            mark = "yes" if s.supported else "NOT YET"
            lines.append(f"  [{mark:>7}] {s.what}" + (f" — {s.why}" if s.why else ""))
        js["stages"][name] = {"plan": p.action if p else None, "reason": p.reason if p else None,
                              "supports": [{"what": s.what, "supported": s.supported, "why": s.why} for s in sup]}
    from adnanny import stages as pkg

    for name in pkg.STAGE_ORDER:  # a flow stage whose module is not installed cannot run: say so
        if name not in stages:
            everything = False
            why = f"no module adnanny.stages.{name} in this environment"
            lines.append(f"\n{name}\n  [NOT YET] the `{name}` stage — {why}")
            js["stages"][name] = {"plan": None, "reason": None,
                                  "supports": [{"what": f"the `{name}` stage", "supported": False, "why": why}]}
    n_no = sum(1 for v in js["stages"].values() for s in v["supports"] if not s["supported"])
    n_all = sum(len(v["supports"]) for v in js["stages"].values())
    lines.append(f"\n{n_all - n_no} of {n_all} capabilities this config asks for are supported by the installed "
                 f"packages" + ("." if not n_no else f"; {n_no} are not yet (marked NOT YET above)."))
    js["supported"], js["unsupported"] = n_all - n_no, n_no
    return "\n".join(lines), everything, js


def _cmd_run(a: argparse.Namespace) -> int:
    from adnanny.config import installed_stages, load_flow_config
    from adnanny.flow import run_flow

    stages = installed_stages()
    cfg = load_flow_config(a.config, cli=a.settings_source(parsed_args=a),
                           overrides={"run_dir": a.out} if a.out else None, stages=stages)
    if a.dry_run:
        text, ok, js = dry_run(cfg, stages)
        print(json.dumps(js, indent=2) if a.json else text)
        return 0 if ok else 3
    done = run_flow(cfg, stages)
    run_dir = Path(cfg.run_dir)
    walls = sum(m.wall_s or 0 for m in done.values())
    print(f"flow finished: {len(done)} stages in {run_dir} ({_fmt_s(walls)} of stage time); report: "
          f"{run_dir / 'report' / 'report.md'} (HTML: {run_dir / 'report' / 'report.html'})")
    return 0


def _cmd_status(a: argparse.Namespace) -> int:
    from adnanny.flow import stage_states

    rows = stage_states(a.run_dir)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stage':<10} {'state':<12} {'wall':>9} {'attempts':>8}  finished")
    for r in rows:
        print(f"{r['stage']:<10} {r['state']:<12} {_fmt_s(r['wall_s']):>9} {r['attempts']:>8}  "
              f"{r['finished_at'] or '-'}" + (f"  error: {r['error']}" if r["error"] else ""))
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from adnanny.report import write_report

    paths = write_report(a.run_dir)
    print(f"report: {paths['md']} (HTML: {paths['html']})")
    return 0


def _cmd_lineage(a: argparse.Namespace) -> int:
    from adnanny.lineage import format_lineage, trace_lineage

    tree = trace_lineage(a.run_dir, a.id, start=a.stage)
    print(json.dumps(tree, indent=2, default=str) if a.json else format_lineage(tree, full=a.full))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from adnanny.config import flow_model
    from adnanny_cook.settings import add_settings_flags

    top = argparse.ArgumentParser(prog="adnanny", description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the flow (cook -> train -> align -> quantize -> label -> distill)",
                       description="Run the flow into a run directory. Unchanged stages are skipped; a stage that "
                                   "was killed resumes in its folder. Without --config the embedded default runs "
                                   "(sample world, <= 15 min on 2 cores). Every config key is also a flag below.")
    r.add_argument("--config", help="flow TOML (default: the embedded adnanny/configs/default.toml)")
    r.add_argument("--out", help="the run directory (same as --run_dir)")
    r.add_argument("--dry-run", action="store_true",
                   help="validate every key and list, stage by stage, what the installed packages support")
    r.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    try:
        r.set_defaults(fn=_cmd_run, settings_source=add_settings_flags(r, flow_model()))
    except ImportError as e:  # a broken stage module: `run` says so; status/report/lineage still work
        broken = f"a stage module failed to import ({type(e).__name__}: {e}); `adnanny run` needs every stage"

        def _broken(a: argparse.Namespace) -> int:
            from adnanny.flow import FlowError

            raise FlowError(broken)

        r.set_defaults(fn=_broken)
    s = sub.add_parser("status", help="stage states and wall times of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_status)
    p = sub.add_parser("report", help="(re)write RUN_DIR/report/report.md and report.html from the manifests")
    p.add_argument("run_dir")
    p.set_defaults(fn=_cmd_report)
    g = sub.add_parser("lineage", help="a label back to its model, corpus, base model and teacher exchange")
    g.add_argument("run_dir")
    g.add_argument("--id", required=True, help="the row / label id (the `id` column of the predictions)")
    g.add_argument("--json", action="store_true")
    g.add_argument("--full", action="store_true", help="print prompts and responses whole")
    g.add_argument("--stage", help="start the walk at this stage (default: label when it knows the id, else "
                                   "the latest stage that does)")
    g.set_defaults(fn=_cmd_lineage)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    from adnanny.config import FlowConfigError
    from adnanny.flow import FlowError
    from adnanny_cook.errors import AdNannyCookError

    try:
        parser = build_parser()
    except FlowConfigError as e:
        print(f"adnanny: error: {e}", file=sys.stderr)
        return 2
    a = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(a.fn(a))
    except FlowConfigError as e:
        print(f"adnanny: error: {e}", file=sys.stderr)
        return 2
    except (FlowError, AdNannyCookError) as e:
        print(f"adnanny: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adnanny: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
