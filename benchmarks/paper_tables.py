"""Recompute every derived number of the AdNanny paper from its inputs and flag the printed ones that disagree.

    hatch run python benchmarks/paper_tables.py [--paper ../shared/paper/adnanny-paper.md] [--tolerance 0.5]

The paper's tables are the contract of this repository, so before a reproduction is compared with them it is
worth knowing which printed values are themselves consistent. This reads the tables straight from the paper's
Markdown (tab-separated rows under each "Table N:" caption; nothing is transcribed by hand) and recomputes:

- Tables 1-5: Model DR (RR), BACC, Acc, PosPrec, NegPrec, PosF1, NegF1 from the dataset's DR (RR) and each
  model's PosAcc and NegAcc, through adnanny-eval's `metrics_from_counts` on a 10^8-row confusion table, with the
  paper's stated convention (positive = non-defect; NegAcc = recall of the defect class). A flagged row is also
  tried with the two recalls swapped, and the JSON says whether that reading reproduces it. Delta rows are
  recomputed as AdNanny - 4o-1120 from the printed rows.
- Table 8: each relative change and the Avg. row through adnanny-eval's `regression_table` (the paper's
  rounding: averages rounded to 3 decimals, the Avg. change from the displayed averages).
- Table 10: cost per 1M samples from GPU $/s and throughput through adnanny-serve's `cost_per_million`, and
  the cost ratio to the GPT-4o row.
- Prose: the numbers §5.5 derives from Table 10 (per-day capacity of one node, "x times cheaper").

A printed value is flagged when it differs from its recomputation by more than `--tolerance` points (0.5 by
default; percentages are points, Table 8's [0, 1] scores and Table 10's ratios are read x100, dollars as
dollars). Flagged rows are printed naming table, dataset, model and column; everything goes to
`benchmarks/results/paper_tables.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PAPER = REPO.parent / "shared" / "paper" / "adnanny-paper.md"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "paper_tables.json"

_N = 10**8  # rows of the synthetic confusion table: rounding in it is far below the printed precision
_CAPTION = re.compile(r"^Table (\d+):")
# The paper's headers spell Acc as "Ace" in Tables 1-2 (an OCR slip); read both as Acc.
_ALIASES = {"Ace": "Acc", "Model RR": "Model DR"}


@dataclass(frozen=True)
class Check:
    """One printed value and its recomputation."""

    table: int
    dataset: str
    model: str
    column: str
    printed: float
    recomputed: float
    flagged: bool
    note: str = ""

    @property
    def diff(self) -> float:
        return self.printed - self.recomputed


def parse_tables(text: str) -> dict[int, list[list[str]]]:
    """Table number -> its rows (header first) as cells, from the lines after each "Table N:" caption.

    A table is the first run of tab-separated lines after its caption (blank lines before it are skipped; the
    first non-tab line after it ends it).
    """
    lines = text.splitlines()
    tables: dict[int, list[list[str]]] = {}
    for i, line in enumerate(lines):
        m = _CAPTION.match(line.strip())
        if not m:
            continue
        rows: list[list[str]] = []
        for nxt in lines[i + 1:]:
            if "\t" in nxt:
                rows.append([c.strip() for c in nxt.split("\t")])
            elif rows or _CAPTION.match(nxt.strip()):
                break  # the end of this table, or the next caption before any row
        if rows:
            tables[int(m.group(1))] = rows
    return tables


def _num(cell: str) -> float:
    """A printed number: '−5.19%' -> -5.19, '<b>0.867</b>' -> 0.867, '0.658 (−5.19%)' -> 0.658."""
    cleaned = re.sub(r"<[^>]+>|\\", "", cell).replace("−", "-").replace("%", "").strip()
    return float(cleaned.split()[0].strip("()"))


def _recompute_binary(rate: float, pos_acc: float, neg_acc: float) -> dict[str, float]:
    """The paper's columns (percent) from the defect rate and the two recalls, via adnanny-eval."""
    from adnanny_eval.metrics import ConfusionCounts, metrics_from_counts

    n_def = round(_N * rate / 100)
    n_pos = _N - n_def
    tn = round(n_def * neg_acc / 100)
    tp = round(n_pos * pos_acc / 100)
    m = metrics_from_counts(ConfusionCounts(tp=tp, fn=n_pos - tp, fp=n_def - tn, tn=tn), warn=False)
    return {k: v for k, v in m.to_paper().items() if isinstance(v, float)}


def check_binary_table(number: int, rows: list[list[str]], tolerance: float) -> list[Check]:
    """Tables 1-5: rows 'Dataset X DR 56.62 | 4o-1120 | ...', then '| AdNanny | ...', then '| Delta | ...'."""
    header = [_ALIASES.get(h, h) for h in rows[0][2:]]
    shown = {_ALIASES.get(h, h): h.replace("Ace", "Acc") for h in rows[0][2:]}  # the paper's own names
    checks: list[Check] = []
    dataset, rate = "", float("nan")
    printed: dict[str, dict[str, float]] = {}
    for row in rows[1:]:
        if row[0]:
            m = re.match(r"(.*?)\s+(?:DR|RR)\s+([\d.]+)$", row[0])
            if not m:
                raise ValueError(f"Table {number}: cannot read the dataset cell {row[0]!r}")
            dataset, rate, printed = m.group(1), float(m.group(2)), {}
        model, values = row[1], dict(zip(header, (_num(c) for c in row[2:]), strict=True))
        printed[model] = values
        if model == "Delta":
            a, b = printed.get("AdNanny"), printed.get("4o-1120")
            if a is None or b is None:
                continue
            for col, val in values.items():
                want = a[col] - b[col]
                checks.append(Check(number, dataset, model, shown[col], val, round(want, 4),
                                    abs(val - want) > tolerance, "AdNanny - 4o-1120 of the printed rows"))
            continue
        stated = _recompute_binary(rate, values["PosAcc"], values["NegAcc"])
        swapped = _recompute_binary(rate, values["NegAcc"], values["PosAcc"])
        for col, val in values.items():
            if col in ("PosAcc", "NegAcc", "AUC") or col not in stated:
                continue  # inputs, or not derivable (AUC needs scores)
            want = stated[col]
            flagged = abs(val - want) > tolerance
            note = ""
            if flagged:
                alt = swapped.get(col, float("nan"))
                note = (f"with PosAcc/NegAcc swapped: {alt:.2f} ("
                        f"{'reproduces' if abs(val - alt) <= tolerance else 'does not reproduce'} the printed value)")
            checks.append(Check(number, dataset, model, shown[col], val, round(want, 4), flagged, note))
    return checks


def check_table8(rows: list[list[str]], tolerance: float) -> list[Check]:
    """Relative changes and the Avg. row through adnanny-eval's regression table."""
    import polars as pl

    from adnanny_eval.regression import regression_table

    header = rows[0]
    body = [r for r in rows[1:] if "Avg" not in r[0]]
    avg = next(r for r in rows[1:] if "Avg" in r[0])
    models = header[1:]
    frame = pl.DataFrame({"benchmark": [r[0] for r in body],
                          **{m: [_num(r[j + 1]) for r in body] for j, m in enumerate(models)}})
    table = regression_table(frame)
    checks: list[Check] = []

    def change(cell: str) -> float:
        return _num(cell.split("(", 1)[1]) if "(" in cell else 0.0

    for i, r in enumerate(body):
        for j, m in enumerate(models[1:], start=2):
            got, want = change(r[j]), table.changes[m][i]
            checks.append(Check(8, r[0], m, "relative change %", got, round(want, 4), abs(got - want) > tolerance))
    for j, m in enumerate(models, start=1):
        got, want = _num(avg[j]), table.averages[m]
        checks.append(Check(8, "Avg.", m, "score", got, want, abs(got - want) * 100 > tolerance,
                            "mean of the column, rounded to 3 decimals"))
        if j > 1:
            got_c, want_c = change(avg[j]), table.avg_changes[m]
            checks.append(Check(8, "Avg.", m, "relative change %", got_c, round(want_c, 4),
                                abs(got_c - want_c) > tolerance, "from the displayed averages"))
    return checks


def check_table10(rows: list[list[str]], tolerance: float) -> tuple[list[Check], dict[str, float]]:
    """Cost per 1M samples = GPU $/s / throughput x 10^6 (adnanny-serve), ratio = cost / the GPT-4o row."""
    from adnanny_serve.cost import cost_per_million

    header = rows[0]
    col = {name: i for i, name in enumerate(header)}
    cost_i = next(i for n, i in col.items() if n.startswith("Cost / 1M"))
    ratio_i = next(i for n, i in col.items() if n.startswith("Cost ratio"))
    price_i = next(i for n, i in col.items() if n.startswith("GPU cost"))
    tput_i = next(i for n, i in col.items() if n.startswith("Throughput"))
    baseline = _num(rows[1][cost_i])
    checks: list[Check] = []
    throughput: dict[str, float] = {}
    for r in rows[2:]:
        price, tput = _num(r[price_i]), _num(r[tput_i])
        throughput[r[0]] = tput
        cost = cost_per_million(price, tput)
        got_cost = _num(r[cost_i])
        checks.append(Check(10, "serving", r[0], "Cost / 1M samples ($)", got_cost, round(cost, 2),
                            abs(got_cost - cost) > tolerance, "GPU $/s / throughput x 1e6"))
        got_ratio = _num(r[ratio_i])
        checks.append(Check(10, "serving", r[0], "Cost ratio", got_ratio, round(cost / baseline, 4),
                            abs(got_ratio - cost / baseline) * 100 > tolerance, "cost / GPT-4o's cost"))
    return checks, throughput


def check_prose(text: str, throughput: dict[str, float], table10: list[list[str]], tolerance: float) -> list[Check]:
    """§5.5's derived sentences: samples per node per day, and "x times cheaper"."""
    checks: list[Check] = []
    m = re.search(r"about (\d+)K label-only samples or (\d+)K label\+reasoning samples per day", text)
    if m:
        for claim, key in ((float(m.group(1)), "label only"), (float(m.group(2)), "label + reasoning")):
            row = next((k for k in throughput if key in k), None)
            if row is None:
                continue
            per_day = throughput[row] * 86400 / 1000
            checks.append(Check(10, "§5.5 prose", row, "samples per node per day (K)", claim, round(per_day, 1),
                                abs(claim - per_day) / per_day * 100 > tolerance,
                                "throughput x 86,400 s; the claim matches a node busy "
                                f"{claim / per_day * 24:.1f} h a day"))
    m = re.search(r"roughly\s+\$?(\d+(?:\.\d+)?)\\?\s*\\?times\$?\s+cheaper than GPT-4o \(cost ratio ([\d.]+)\)", text)
    if m:
        header = table10[0]
        cost_i = next(i for i, n in enumerate(header) if n.startswith("Cost / 1M"))
        base = _num(table10[1][cost_i])
        label_only = next(_num(r[cost_i]) for r in table10[2:] if "label only" in r[0])
        claim, times = float(m.group(1)), base / label_only
        checks.append(Check(10, "§5.5 prose", "AdNanny (label only)", "times cheaper than GPT-4o", claim,
                            round(times, 3), abs(claim - times) / times * 100 > tolerance,
                            f"592/134 from the table; 1/{m.group(2)} = {1 / float(m.group(2)):.2f}"))
    return checks


def run(paper: Path, tolerance: float) -> dict[str, Any]:
    text = paper.read_text(encoding="utf-8")
    tables = parse_tables(text)
    missing = [n for n in (1, 2, 3, 4, 5, 8, 10) if n not in tables]
    if missing:
        raise SystemExit(f"{paper}: no tab-separated rows under Table(s) {missing}")
    checks: list[Check] = []
    for n in (1, 2, 3, 4, 5):
        checks += check_binary_table(n, tables[n], tolerance)
    checks += check_table8(tables[8], tolerance)
    t10, throughput = check_table10(tables[10], tolerance)
    checks += t10
    checks += check_prose(text, throughput, tables[10], tolerance)
    flagged = [c for c in checks if c.flagged]
    return {
        "paper": str(paper),
        "tolerance_points": tolerance,
        "convention": "positive = non-defect; PosAcc = recall of non-defects, NegAcc = recall of defects "
                      "(§5.1, checked against Table 1: Acc = (1 - DR) PosAcc + DR NegAcc)",
        "n_checked": len(checks),
        "n_flagged": len(flagged),
        "flagged": [asdict(c) | {"diff": round(c.diff, 4)} for c in flagged],
        "by_table": {str(n): {"checked": sum(c.table == n for c in checks),
                              "flagged": sum(c.table == n and c.flagged for c in checks)}
                     for n in sorted({c.table for c in checks})},
        "checks": [asdict(c) for c in checks],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper", type=Path, default=DEFAULT_PAPER)
    ap.add_argument("--tolerance", type=float, default=0.5, help="points (default 0.5)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if not args.paper.is_file():
        print(f"paper_tables: {args.paper}: no such file (pass --paper)", file=sys.stderr)
        return 2
    result = run(args.paper, args.tolerance)
    print(f"{result['n_checked']} derived values recomputed, {result['n_flagged']} differ by more than "
          f"{args.tolerance} points:")
    for c in result["flagged"]:
        print(f"  Table {c['table']} | {c['dataset']} | {c['model']} | {c['column']}: printed {c['printed']}, "
              f"recomputed {c['recomputed']:.2f}" + (f"  ({c['note']})" if c["note"] else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
