"""benchmarks/run_all.py: headline lookup with wildcards, the summary table, unknown names refused."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_lookup_and_summary(tmp_path: Path, monkeypatch) -> None:
    mod = _module()
    data = {"ratio": 2.5, "rows": [{"speed_ratio_vs_naive": 1.1}, {"speed_ratio_vs_naive": 0.9}], "x": {"y": "z"}}
    assert mod.lookup(data, "ratio") == {"ratio": 2.5}
    assert mod.lookup(data, "rows.*.speed_ratio_vs_naive") == {"rows.0.speed_ratio_vs_naive": 1.1,
                                                                "rows.1.speed_ratio_vs_naive": 0.9}
    assert mod.lookup(data, "missing.key") == {}
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    (tmp_path / "rl_speed.json").write_text(json.dumps({"ratio": 3.0}))
    bench = next(b for b in mod.BENCHMARKS if b.name == "rl_speed")
    row = mod.summarise(bench, None)
    assert row["status"] == "ok" and row["headline"] == {"ratio": 3.0}
    missing = mod.summarise(next(b for b in mod.BENCHMARKS if b.name == "eval_speed"), None)
    assert missing["status"] == "no result"
    table = mod.markdown([row, missing])
    assert "| rl_speed | TRL GRPOTrainer | ratio = 3 | ok |" in table and "no result" in table
    assert mod.main(["--summary", "--only", "rl_speed"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["headline"] == {"ratio": 3.0}


def test_unknown_benchmark_is_refused(capsys) -> None:
    mod = _module()
    assert mod.main(["--summary", "--only", "nope"]) == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err
