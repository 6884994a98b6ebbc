"""The embedded flow's tables as one JSON record: run `adnanny run` (or read a finished run dir) and collect what the
report prints — Tables 1-5 (AdNanny vs the prompted teacher vs the lexical baseline, bootstrap intervals, paired
differences), Table 6 (teacher / AdNanny / student / student+DQC), Table 9 (BF16 vs FP8), Table 10 (cost from the
measured throughput), the injection row, the cooking funnel and the train/align summaries, plus each stage's wall
time.

    hatch run python benchmarks/flow_tables.py                       # run the embedded default, then collect
    hatch run python benchmarks/flow_tables.py --config ci.toml      # another flow config
    hatch run python benchmarks/flow_tables.py --run-dir adnanny-run # only read a finished run dir

Numbers come only from the stages' manifests (the same source the report reads), so a JSON entry can be traced to
the stage that measured it; a table a stage did not measure is absent, never filled in. Metrics are fractions in
[0, 1] as adnanny-eval returns them; `summary` repeats the headline numbers in percent. Output:
`benchmarks/results/flow_tables.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def run_embedded(config: str | None, run_dir: Path) -> float:
    """Run the flow (resuming/skipping what is done) and return its wall time in seconds."""
    from adnanny.config import installed_stages, load_flow_config
    from adnanny.flow import run_flow

    cfg = load_flow_config(config, overrides={"run_dir": str(run_dir)})
    t0 = time.perf_counter()
    run_flow(cfg, installed_stages(), log=lambda s: print(s, file=sys.stderr, flush=True))
    return time.perf_counter() - t0


def _manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    p = run_dir / stage / "manifest.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def collect(run_dir: Path) -> dict[str, Any]:
    """The tables of a run dir, from its manifests (see the module docstring)."""
    m = {s: _manifest(run_dir, s) for s in ("cook", "train", "align", "quantize", "label", "distill")}
    met = {s: (v or {}).get("metrics") or {} for s, v in m.items()}
    label, distill = met["label"], met["distill"]
    out: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        "stages": {s: {"status": v.get("status"), "wall_s": v.get("wall_s"), "attempts": v.get("attempts")}
                   for s, v in m.items() if v},
        "units": "metrics are fractions in [0, 1]; throughput samples/s; cost US$ per 1M samples",
    }
    if label.get("tables"):
        out["tables_1_5"] = {"tables": label["tables"], "paired": label.get("paired", {})}
    if distill.get("table6"):
        out["table6"] = {"table": distill["table6"], "view": distill.get("table6_view"),
                         "funnel": distill.get("funnel")}
    if label.get("precision") or met["quantize"].get("weight_bytes"):
        out["table9"] = {"precision": label.get("precision"), "weight_bytes": met["quantize"].get("weight_bytes")}
    if label.get("cost") or label.get("throughput"):
        out["table10"] = {"throughput": label.get("throughput"), "cost": label.get("cost")}
    if label.get("injection"):
        out["injection"] = label["injection"]
    for s in ("cook", "train", "align"):
        if met[s]:
            out[s] = met[s]
    out["notes"] = {s: (v or {}).get("notes") or [] for s, v in m.items() if v}
    out["summary"] = summary(out)
    return out


def _pct(x: Any) -> float | None:
    return None if x is None else round(100.0 * float(x), 2)


def summary(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows in percent: BACC per task/view/system with its interval, paired differences, Table 6."""
    rows: list[dict[str, Any]] = []
    t15 = tables.get("tables_1_5") or {}
    for task, views in (t15.get("tables") or {}).items():
        for view, systems in views.items():
            for system, r in systems.items():
                ci = (r.get("ci") or {}).get("bacc")
                rows.append({"table": "1-5", "task": task, "view": view, "system": system, "n": r.get("n"),
                             "bacc": _pct(r["metrics"].get("bacc")), "bacc_ci": [_pct(c) for c in ci] if ci else None,
                             "model_dr": _pct(r["metrics"].get("model_dr")), "dr": _pct(r["metrics"].get("dr"))})
            for key, d in ((t15.get("paired") or {}).get(task, {}).get(view) or {}).items():
                rows.append({"table": "1-5 paired", "task": task, "view": view, "system": key,
                             "bacc_diff": _pct(d["diff"]), "ci": [_pct(d["lo"]), _pct(d["hi"])],
                             "excludes_zero": d["lo"] > 0 or d["hi"] < 0})
    for task, systems in ((tables.get("table6") or {}).get("table") or {}).items():
        for system, r in systems.items():
            rows.append({"table": "6", "task": task, "system": system, "n": r.get("n"),
                         "bacc": _pct(r["metrics"].get("bacc"))})
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["table"] == "1-5 paired":
            print(f"{r['task']:<10} {r['view']:<9} {r['system']:<22} ΔBACC {r['bacc_diff']:+7.2f} "
                  f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]{'  *' if r['excludes_zero'] else ''}")
        else:
            b = "n/a" if r.get("bacc") is None else f"{r['bacc']:6.2f}"
            print(f"T{r['table']:<4} {r['task']:<10} {r.get('view', ''):<9} {r['system']:<18} n={r.get('n')!s:<5} "
                  f"BACC {b}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="flow config TOML (default: the embedded default)")
    p.add_argument("--run-dir", help="read this finished run dir instead of running (or: where to run)")
    p.add_argument("--run", action="store_true", help="with --run-dir: run (or resume) the flow there first")
    p.add_argument("--out", default=str(RESULTS / "flow_tables.json"), help="JSON output path")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wall = None
    if a.run_dir and not a.run:
        run_dir = Path(a.run_dir)
        if not (run_dir / "label" / "manifest.json").is_file():
            print(f"flow_tables: `{run_dir}` has no finished label stage; pass --run to run the flow there",
                  file=sys.stderr)
            return 2
    else:
        run_dir = Path(a.run_dir or "adnanny-flow-tables-run")
        wall = run_embedded(a.config, run_dir)
    rec = collect(run_dir)
    rec["flow_wall_s"] = wall
    rec["config"] = a.config or "embedded default"
    rec["machine"] = {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "python": platform.python_version()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    _print(rec["summary"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
