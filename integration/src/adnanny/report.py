"""The flow's report: RUN_DIR/report/report.md and a self-contained report.html (charts embedded as base64 PNG),
rendered from the stages' manifests only — what the run measured, in the paper's table layouts, with "not
measured" wherever a key is absent (never an invented number), and a sentence wherever this small reproduction
points the other way from the paper.

Why only the manifests: the report can then be rewritten at any time (`adnanny report RUN_DIR`) without any
model, and every number in it can be traced to the stage that wrote it.

The documented contract — the stage-metrics schema the report reads (a copy of the shared note
/work/notes/flow_schema.md, whose heading reads: The flow's stage-metrics schema (shared by "flow", "stagesA", "stagesB"; the report reads exactly this)):

    Each stage's `StageResult.metrics` (written by the engine into RUN_DIR/<stage>/manifest.json under "metrics").
    Keys absent = "not measured" in the report (never invented). Systems are named "adnanny" (the trained model),
    "prompted" (the teacher model prompted directly: the paper's 4o-1120 analog), "lexical" (adnanny-eval's
    LexicalBaseline / PopularityGenreBaseline for ad-user), "teacher", "student", "student_dqc", "adnanny_fp8".
    - cook:  {"funnel": {task: {"inputs", "requested", "candidates", "schema_pass", "filter_pass", "kept",
              "label_only"}: ints}, "golden": {task: {"passed": bool, "measured": {...}, "thresholds": {...},
              "action": str}}, "teacher": {"model": str, "endpoint": str}}
    - train: {"tokens_per_s": float, "steps": int, "val": {task: {"bacc": float, "auc": float}}}
              + artifact "log" (JSONL: one object per step with at least "step", "loss")
    - align: {"reward_before": float, "reward_after": float, "reward_ci": [lo, hi], "kl": float}
              + artifact "log" (JSONL per step: "step", "reward", "kl")
    - quantize: {"weight_bytes": {"bf16": int, "fp8": int}}
    - label: {"tables": {task: {view: {system: {"metrics": {name: float}, "ci": {name: [lo, hi]}, "n": int,
                "parse_error_rate": float}}}},           # metrics names as adnanny-eval reports them (bacc, acc,
                                                          # model_dr, dr, pos_acc, neg_acc, auc, f1 ...)
              "paired": {task: {view: {"adnanny-prompted": {"metric": "bacc", "diff": float, "lo": float,
                "hi": float}, "adnanny-lexical": {...}}}},
              "precision": {task: {"bf16": {name: float}, "fp8": {name: float}}},    # Table 9
              "throughput": {"label_only": samples_per_s, "label_reasoning": samples_per_s},
              "cost": {mode: {"usd_per_1m": float, ...}},                            # Table 10 via adnanny-serve cost
              "injection": {"n": int, "changed": int, "rate": float}}
    - distill: {"table6": {task: {system: {"metrics": {name: float}, "ci": {name: [lo, hi]}, "n": int}}}}
              systems: "teacher", "adnanny", "student", "student_dqc"

Units: metrics are fractions in [0, 1] (adnanny-eval's library convention); the report prints percent with two
decimals, as the paper does. Bytes, throughputs and dollars print as themselves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NOT_MEASURED", "Report", "build_report", "write_report"]

NOT_MEASURED = "not measured"
_ORDER = ("cook", "train", "align", "quantize", "label", "distill")
#: (column title, metric key) in the paper's Tables 1-4 order; Table 5 uses the RR subset
_QA_COLS = (("Model DR", "model_dr"), ("BACC", "bacc"), ("Acc", "acc"), ("PosAcc", "pos_acc"),
            ("PosPrec", "pos_prec"), ("NegAcc", "neg_acc"), ("NegPrec", "neg_prec"), ("PosF1", "pos_f1"),
            ("NegF1", "neg_f1"), ("AUC", "auc"))
_AU_COLS = (("Model RR", "model_dr"), ("BACC", "bacc"), ("Acc", "acc"), ("PosAcc", "pos_acc"),
            ("NegAcc", "neg_acc"), ("AUC", "auc"))
_VIEW_TABLE = {"bad": (1, "Query–ad relevance (Bad defect view)"),
               "fair": (2, "Query–ad relevance (Fair defect view)"),
               "location": (3, "Query–ad location labeling metrics"),
               "quality": (4, "Query–ad quality labeling metrics"),
               "ad-user": (5, "Ad–user relevance labeling metrics")}
_SYSTEM_NAMES = {"prompted": "prompted teacher (4o-1120 analog)", "lexical": "lexical baseline",
                 "adnanny": "AdNanny", "adnanny_fp8": "AdNanny (FP8)", "teacher": "teacher",
                 "adnanny_reasoning": "AdNanny (label+reasoning)",
                 "student": "student (w/o DQC)", "student_dqc": "student (with DQC)"}
_SYSTEM_ORDER = ("prompted", "lexical", "teacher", "adnanny", "adnanny_reasoning", "adnanny_fp8", "student",
                 "student_dqc")
#: metric keys in the paper's column order (Table 6 and own tables print known keys in this order first)
_METRIC_ORDER = ("dr", "model_dr", "bacc", "acc", "pos_acc", "pos_prec", "neg_acc", "neg_prec", "pos_f1", "neg_f1",
                 "auc")


# ---------------------------------------------------------------------------------------------------- blocks
@dataclass
class Report:
    """The report as blocks, rendered twice (Markdown and HTML) so both say exactly the same thing."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    charts: dict[str, bytes] = field(default_factory=dict)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: Sequence[str]) -> None:
        if lines:
            self.blocks.append(("ul", list(lines)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def chart(self, name: str, png: bytes | None, caption: str) -> None:
        if png:
            self.charts[name] = png
            self.blocks.append(("img", (name, caption)))

    def to_markdown(self) -> str:
        out: list[str] = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "ul":
                out.append("\n".join(f"- {x}" for x in v))
            elif kind == "table":
                head, rows = v
                esc = [[c.replace("|", "\\|") for c in r] for r in [head, *rows]]
                out.append("\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head),
                                      *("| " + " | ".join(r) + " |" for r in esc[1:])]))
            elif kind == "img":
                out.append(f"![{v[1]}](charts/{v[0]}.png)")
        return "\n\n".join(out) + "\n"

    def to_html(self, title: str) -> str:
        e = html.escape
        body: list[str] = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{e(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{e(v)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in v) + "</ul>")
            elif kind == "table":
                head, rows = v
                body.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr></thead>"
                            "<tbody>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                                                for r in rows) + "</tbody></table>")
            elif kind == "img":
                b64 = base64.b64encode(self.charts[v[0]]).decode()
                body.append(f'<figure><img alt="{e(v[1])}" src="data:image/png;base64,{b64}">'
                            f"<figcaption>{e(v[1])}</figcaption></figure>")
        css = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
               "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}"
               "td:first-child,th:first-child,td:nth-child(2){text-align:left}"
               "th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:.85em;color:#555}")
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>"
                f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------------- helpers
def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def pct(v: Any, digits: int = 2) -> str:
    x = _num(v)
    return NOT_MEASURED if x is None else f"{x * 100:.{digits}f}"


def _signed_pct(v: Any) -> str:
    x = _num(v)
    return NOT_MEASURED if x is None else f"{x * 100:+.2f}"


def _ci(ci: Any) -> str:
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_num(c) is not None for c in ci):
        return f"[{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]"
    return NOT_MEASURED


def _plain(v: Any, fmt: str = "{:,.2f}") -> str:
    x = _num(v)
    if x is None:
        return NOT_MEASURED
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1 and fmt == "{:,.2f}" else fmt.format(x)


def _systems(d: Mapping[str, Any]) -> list[str]:
    return [s for s in _SYSTEM_ORDER if s in d] + sorted(s for s in d if s not in _SYSTEM_ORDER)


def _sname(s: str) -> str:
    return _SYSTEM_NAMES.get(s, s)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill; the rest of the log still draws
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def _load(run_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    names = list(_ORDER) + sorted(p.name for p in run_dir.iterdir()
                                  if (p / "manifest.json").is_file() and p.name not in _ORDER)
    for name in names:
        mf = run_dir / name / "manifest.json"
        if mf.is_file():
            try:
                out[name] = json.loads(mf.read_text(encoding="utf-8"))
            except ValueError:
                out[name] = {"status": "unreadable manifest"}
    return out


# ---------------------------------------------------------------------------------------------------- charts
def _figure(width: float = 6.0, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _curve_chart(rows: list[dict[str, Any]], keys: Sequence[str], title: str) -> bytes | None:
    series = {k: [(r["step"], r[k]) for r in rows if _num(r.get("step")) is not None and _num(r.get(k)) is not None]
              for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig = _figure(6.0, 2.6 * len(series))
    for i, (k, pts) in enumerate(series.items(), 1):
        ax = fig.add_subplot(len(series), 1, i)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_ylabel(k)
        ax.grid(alpha=.3)
        if i == 1:
            ax.set_title(title)
    ax.set_xlabel("step")
    return _png(fig)


def _funnel_chart(funnel: Mapping[str, Any]) -> bytes | None:
    steps = ("inputs", "requested", "candidates", "schema_pass", "filter_pass", "kept")
    tasks = [t for t, f in funnel.items() if isinstance(f, Mapping)]
    if not tasks:
        return None
    fig = _figure(6.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    w = 0.8 / len(tasks)
    for i, t in enumerate(tasks):
        vals = [_num(funnel[t].get(s)) or 0 for s in steps]
        ax.bar([j + i * w for j in range(len(steps))], vals, width=w, label=t)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(steps))], steps, rotation=20)
    ax.set_title("cooking funnel")
    ax.legend()
    return _png(fig)


def _bacc_chart(tables: Mapping[str, Any]) -> bytes | None:
    bars: list[tuple[str, str, float, Any]] = []
    for task, views in tables.items():
        for view, systems in (views or {}).items():
            for s in _systems(systems or {}):
                v = _num(_get(systems, s, "metrics", "bacc"))
                if v is not None:
                    bars.append((f"{task}/{view}", s, v, _get(systems, s, "ci", "bacc")))
    if not bars:
        return None
    groups = list(dict.fromkeys(b[0] for b in bars))
    systems = list(dict.fromkeys(b[1] for b in bars))
    fig = _figure(max(6.0, 1.6 * len(groups)), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    w = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for g in groups:
            b = next((b for b in bars if b[0] == g and b[1] == s), None)
            if b is None:
                continue
            xs.append(groups.index(g) + i * w)
            ys.append(b[2] * 100)
            ci = b[3] if isinstance(b[3], Sequence) and len(b[3]) == 2 and all(_num(c) is not None for c in b[3]) \
                else (b[2], b[2])
            lo.append(max(0.0, b[2] * 100 - ci[0] * 100))
            hi.append(max(0.0, ci[1] * 100 - b[2] * 100))
        ax.bar(xs, ys, width=w, yerr=[lo, hi], capsize=3, label=_sname(s))
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(groups))], groups)
    ax.set_ylabel("BACC (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="#999", lw=.8, ls="--")
    ax.set_title("BACC with 95% bootstrap intervals")
    ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- sections
def _section_stages(r: Report, ms: Mapping[str, Any], run_dir: Path) -> None:
    r.h(2, "Stages")
    rows = []
    for name in list(_ORDER) + [n for n in ms if n not in _ORDER]:
        m = ms.get(name)
        if m is None:
            rows.append([name, "not run", "-", "-"])
            continue
        wall = _num(m.get("wall_s"))
        rows.append([name, str(m.get("status")), f"{wall:.1f} s" if wall is not None else "-",
                     str(m.get("attempts", "-"))])
    r.table(["stage", "status", "wall time", "attempts"], rows)
    total = sum(_num(m.get("wall_s")) or 0 for m in ms.values())
    r.p(f"Run directory `{run_dir}`; total stage time {total:.1f} s.")


def _paired_sentence(task: str, view: str, key: str, pr: Any) -> str | None:
    if not isinstance(pr, Mapping) or _num(pr.get("diff")) is None:
        return None
    other = key.split("-", 1)[1] if "-" in key else key
    metric = str(pr.get("metric", "bacc")).upper()
    diff, lo, hi = _num(pr.get("diff")), _num(pr.get("lo")), _num(pr.get("hi"))
    ci = f" (paired bootstrap 95% interval [{lo * 100:+.2f}, {hi * 100:+.2f}])" if lo is not None and hi is not None \
        else " (no interval)"
    s = f"{task}, {view} view: AdNanny − {_sname(other)} {metric} = {diff * 100:+.2f} points{ci}."
    if lo is not None and hi is not None:
        if hi < 0:
            s += (f" This disagrees with the paper, where AdNanny beats "
                  f"{'4o-1120' if other == 'prompted' else 'the small task models it replaces'} on every dataset.")
        elif lo <= 0:
            s += " The interval includes zero: this run cannot tell them apart (the paper reports a clear gain)."
        else:
            s += " Same direction as the paper."
    return s


def _section_tables_1_5(r: Report, label: Mapping[str, Any] | None) -> None:
    tables = _get(label, "metrics", "tables")
    paired = _get(label, "metrics", "paired") or {}
    r.h(2, "Tables 1–5: labeling quality (AdNanny vs the prompted teacher vs the lexical baseline)")
    if not isinstance(tables, Mapping) or not tables:
        r.p(f"Tables 1–5: {NOT_MEASURED} (the label stage did not run or wrote no `tables`).")
        return
    by_view: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for task, views in tables.items():
        for view, systems in (views or {}).items():
            by_view.setdefault(view, []).append((task, systems or {}))
    for view in sorted(by_view, key=lambda v: (_VIEW_TABLE.get(v, (99, ""))[0], v)):
        num, title = _VIEW_TABLE.get(view, (None, f"Defect view `{view}`"))
        cols = _AU_COLS if view == "ad-user" else _QA_COLS
        rate = "RR" if view == "ad-user" else "DR"
        r.h(3, (f"Table {num}: " if num else "Own-task table: ") + title)
        rows = []
        notes: list[str] = []
        for task, systems in by_view[view]:
            gold = next((_get(systems, s, "metrics", "dr") for s in _systems(systems)
                         if _num(_get(systems, s, "metrics", "dr")) is not None), None)
            cell = f"{task} {rate} {pct(gold)}"
            for s in _systems(systems):
                sm = systems[s] or {}
                met = sm.get("metrics") or {}
                rows.append([cell, _sname(s), *[pct(met.get(k)) for _, k in cols], _ci(_get(sm, "ci", "bacc")),
                             str(sm.get("n", NOT_MEASURED)), pct(sm.get("parse_error_rate"))])
                cell = ""
            base = "prompted" if "prompted" in systems else None
            if base and "adnanny" in systems:
                a, b = systems["adnanny"].get("metrics") or {}, systems[base].get("metrics") or {}
                rows.append(["", "Delta (AdNanny − prompted)",
                             *[_signed_pct(_num(a.get(k)) - _num(b.get(k)))
                               if _num(a.get(k)) is not None and _num(b.get(k)) is not None else NOT_MEASURED
                               for _, k in cols], "", "", ""])
            for key, pr in (_get(paired, task, view) or {}).items():
                sent = _paired_sentence(task, view, key, pr)
                if sent:
                    notes.append(sent)
            if not _get(paired, task, view):
                notes.append(f"{task}, {view} view: paired differences {NOT_MEASURED}.")
            am = _get(systems, "adnanny", "metrics") or {}
            if _num(am.get("model_dr")) is not None and _num(am.get("dr")) is not None:
                gap = abs(am["model_dr"] - am["dr"]) * 100
                if gap > 10:
                    notes.append(f"{task}, {view} view: AdNanny's Model {rate} is {gap:.1f} points from the gold "
                                 f"{rate}; the paper's stays within a few points (it does not shift the prior).")
        r.table(["Dataset", "Model", *[c for c, _ in cols], "BACC 95% CI", "n", "parse errors %"], rows)
        r.items(notes)


def _section_table6(r: Report, distill: Mapping[str, Any] | None) -> None:
    t6 = _get(distill, "metrics", "table6")
    r.h(2, "Table 6: teacher vs AdNanny vs distilled student (without and with DQC)")
    if not isinstance(t6, Mapping) or not t6:
        r.p(f"Table 6: {NOT_MEASURED} (the distill stage did not run or wrote no `table6`).")
        return
    for task, systems in t6.items():
        systems = systems or {}
        names = list(dict.fromkeys(k for s in systems.values() for k in ((s or {}).get("metrics") or {})))
        names = [k for k in _METRIC_ORDER if k in names] + [k for k in names if k not in _METRIC_ORDER]
        r.h(3, f"Table 6 — {task}")
        rows = []
        for s in ("teacher", "adnanny", "student", "student_dqc", *[x for x in systems if x not in
                                                                      ("teacher", "adnanny", "student",
                                                                       "student_dqc")]):
            sm = systems.get(s)
            if sm is None:
                rows.append([_sname(s), *[NOT_MEASURED] * len(names), NOT_MEASURED])
                continue
            met = sm.get("metrics") or {}
            rows.append([_sname(s), *[(pct(met.get(k)) + (f" {_ci(_get(sm, 'ci', k))}"
                                                           if _get(sm, "ci", k) else "")) for k in names],
                         str(sm.get("n", NOT_MEASURED))])
        titles = {"dr": "DR", **{k: t for t, k in _QA_COLS}}
        r.table(["Model", *[titles.get(k, k) for k in names], "n"], rows)
        key = "bacc" if "bacc" in names else (names[0] if names else None)
        s, d = _get(systems, "student", "metrics", key or ""), _get(systems, "student_dqc", "metrics", key or "")
        if key and _num(s) is not None and _num(d) is not None:
            ci_s, ci_d = _get(systems, "student", "ci", key), _get(systems, "student_dqc", "ci", key)
            overlap = (isinstance(ci_s, Sequence) and isinstance(ci_d, Sequence) and len(ci_s) == 2
                       and len(ci_d) == 2 and not (ci_d[0] > ci_s[1] or ci_s[0] > ci_d[1]))
            if d < s and not overlap:
                r.p(f"{task}: the student trained with DQC scores lower on {key} ({pct(d)} vs {pct(s)}) than the "
                    f"one without — this disagrees with the paper, where DQC improves the student.")
            elif overlap:
                r.p(f"{task}: with DQC {pct(d)} vs without {pct(s)} on {key}; their intervals overlap, so this "
                    f"run cannot confirm the paper's DQC gain.")
            else:
                r.p(f"{task}: DQC helps the student on {key} ({pct(d)} vs {pct(s)}), as in the paper.")


def _section_table9(r: Report, label: Mapping[str, Any] | None, quantize: Mapping[str, Any] | None) -> None:
    prec = _get(label, "metrics", "precision")
    wb = _get(quantize, "metrics", "weight_bytes") or {}
    r.h(2, "Table 9: BF16 vs FP8")
    if isinstance(prec, Mapping) and prec:
        rows = []
        for task, p in prec.items():
            for mode in ("bf16", "fp8"):
                met = _get(p, mode) or {}
                rows.append([task, f"AdNanny ({mode.upper()})", pct(met.get("bacc")), pct(met.get("acc")),
                             _plain(wb.get(mode), "{:,.0f}")])
            b, f = _num(_get(p, "bf16", "bacc")), _num(_get(p, "fp8", "bacc"))
            if b is not None and f is not None and f < b - 0.02:
                r.blocks.append(("p", f"{task}: FP8 loses {(b - f) * 100:.2f} BACC points to BF16 — the paper "
                                      "finds FP8 no worse (83.38 vs 83.01)."))
        r.table(["Dataset", "Model", "BACC", "ACC", "weight bytes"], rows)
    else:
        r.p(f"Table 9 accuracy: {NOT_MEASURED}.")
        if wb:
            r.p(f"Weights: BF16 {_plain(wb.get('bf16'), '{:,.0f}')} bytes, FP8 {_plain(wb.get('fp8'), '{:,.0f}')} "
                f"bytes.")


_COST_COLS = (("Avg. input tokens", ("avg_input_tokens", "input_tokens")),
              ("Avg. output tokens", ("avg_output_tokens", "output_tokens")),
              ("GPU cost ($/s)", ("gpu_dollars_per_s", "usd_per_s")),
              ("Throughput (samples/s)", ("samples_per_s", "throughput")),
              ("Cost / 1M samples ($)", ("usd_per_1m",)),
              ("Cost ratio", ("ratio", "cost_ratio")))


def _section_table10(r: Report, label: Mapping[str, Any] | None) -> None:
    cost = _get(label, "metrics", "cost")
    thr = _get(label, "metrics", "throughput") or {}
    r.h(2, "Table 10: cost from the measured throughput")
    if not isinstance(cost, Mapping) or not cost:
        r.p(f"Table 10: {NOT_MEASURED}." + (f" Throughput: {json.dumps(thr)} samples/s." if thr else ""))
        return
    rows = []
    for mode, c in cost.items():
        c = c or {}
        cells = []
        for title, keys in _COST_COLS:
            v = next((c[k] for k in keys if k in c), None)
            if v is None and title.startswith("Throughput"):
                v = thr.get(mode)
            cells.append(_plain(v, "{:,.4f}" if "$/s" in title else "{:,.2f}"))
        rows.append([mode.replace("_", " "), *cells])
    r.table(["Mode", *[t for t, _ in _COST_COLS]], rows)
    lo, lr = _num(thr.get("label_only")), _num(thr.get("label_reasoning"))
    if lo is not None and lr is not None and lo <= lr:
        r.p(f"Label-only throughput ({lo:.2f}/s) is not above label+reasoning ({lr:.2f}/s) here — the paper "
            "measures 20.2 vs 8.8 samples/s; on this machine generation length does not dominate.")


def _section_cook(r: Report, cook: Mapping[str, Any] | None) -> None:
    r.h(2, "Cooking: teacher, golden gate and funnel")
    met = (cook or {}).get("metrics") or {}
    teacher = met.get("teacher")
    r.p("Teacher: " + (f"`{teacher.get('model', '?')}` at {teacher.get('endpoint', '?')}"
                       if isinstance(teacher, Mapping) else NOT_MEASURED) + ".")
    golden = met.get("golden")
    if isinstance(golden, Mapping) and golden:
        rows = []
        for task, g in golden.items():
            g = g or {}
            meas, thr = g.get("measured") or {}, g.get("thresholds") or {}
            variants = meas.get("variants") if isinstance(meas.get("variants"), Mapping) else {}

            def measured(k: str) -> str:
                if k in meas or not variants:
                    return _fmtv(meas.get(k))
                per = [f"{var} {_fmtv(_get(vals, k))}" for var, vals in variants.items() if _get(vals, k) is not None]
                return ", ".join(per) if per else NOT_MEASURED

            checks = "; ".join([f"{k} {measured(k)} (threshold {_fmtv(thr.get(k))})" for k in thr] +
                               [f"{k} {_fmtv(v)}" for k, v in meas.items() if k not in thr and _num(v) is not None])
            rows.append([task, "passed" if g.get("passed") else "FAILED", checks or NOT_MEASURED,
                         str(g.get("action", NOT_MEASURED))])
        r.table(["task", "golden gate", "measured vs threshold", "action"], rows)
    else:
        r.p(f"Golden gate: {NOT_MEASURED}.")
    funnel = met.get("funnel")
    if isinstance(funnel, Mapping) and funnel:
        keys = ("inputs", "requested", "candidates", "schema_pass", "filter_pass", "kept", "label_only")
        r.table(["task", *keys], [[t, *[_plain(_get(f, k), "{:,.0f}") for k in keys]] for t, f in funnel.items()])
        r.chart("funnel", _funnel_chart(funnel), "cooking funnel per task")
    else:
        r.p(f"Funnel: {NOT_MEASURED}.")


def _fmtv(v: Any) -> str:
    x = _num(v)
    if x is None:
        return NOT_MEASURED if v is None else str(v)
    return f"{x * 100:.1f}%" if isinstance(v, float) and 0 <= x <= 1 else f"{x:g}"


def _section_train(r: Report, train: Mapping[str, Any] | None, run_dir: Path) -> None:
    r.h(2, "Training (SFT)")
    met = (train or {}).get("metrics") or {}
    if not train:
        r.p(f"Training: {NOT_MEASURED}.")
        return
    tps = _num(met.get("tokens_per_s"))
    r.p(f"Steps {met.get('steps', NOT_MEASURED)}; throughput "
        f"{f'{tps:,.0f} tokens/s' if tps is not None else NOT_MEASURED}.")
    val = met.get("val")
    if isinstance(val, Mapping) and val:
        r.table(["task", "val BACC", "val AUC"], [[t, pct(_get(v, "bacc")), pct(_get(v, "auc"))]
                                                 for t, v in val.items()])
    log = (train.get("artifacts") or {}).get("log")
    rows = _read_jsonl(run_dir / "train" / log) if log else []
    r.chart("train_loss", _curve_chart(rows, ("loss",), "SFT training loss"), "SFT loss per step")
    if not rows:
        r.p(f"Training curve: {NOT_MEASURED}.")


def _section_align(r: Report, align: Mapping[str, Any] | None, run_dir: Path) -> None:
    r.h(2, "Alignment (GRPO)")
    if not align:
        r.p(f"Alignment: {NOT_MEASURED}.")
        return
    met = align.get("metrics") or {}
    b, a = _num(met.get("reward_before")), _num(met.get("reward_after"))
    ci = met.get("reward_ci")
    ci_s = (f" (95% interval [{ci[0]:.3f}, {ci[1]:.3f}])" if isinstance(ci, Sequence) and len(ci) == 2
            and all(_num(c) is not None for c in ci) else "")
    kl = _num(met.get("kl"))
    r.p(f"Held-out reward before {f'{b:.3f}' if b is not None else NOT_MEASURED}, after "
        f"{f'{a:.3f}' if a is not None else NOT_MEASURED}{ci_s}; KL to the reference "
        f"{f'{kl:.4f}' if kl is not None else NOT_MEASURED}.")
    if b is not None and a is not None and a < b:
        r.p("The reward fell during alignment — this disagrees with the paper, where GRPO improves the "
            "downstream rewards.")
    log = (align.get("artifacts") or {}).get("log")
    rows = _read_jsonl(run_dir / "align" / log) if log else []
    r.chart("rl_curves", _curve_chart(rows, ("reward", "kl"), "GRPO reward and KL"), "GRPO reward and KL per step")
    if not rows:
        r.p(f"RL curves: {NOT_MEASURED}.")


def _section_injection(r: Report, label: Mapping[str, Any] | None) -> None:
    r.h(2, "Injection robustness")
    inj = _get(label, "metrics", "injection")
    if not isinstance(inj, Mapping) or _num(inj.get("rate")) is None:
        r.p(f"Injection robustness: {NOT_MEASURED}.")
        return
    r.table(["rows probed", "labels changed", "share changed"],
            [[_plain(inj.get("n"), "{:,.0f}"), _plain(inj.get("changed"), "{:,.0f}"), f"{pct(inj.get('rate'))}%"]])
    r.p("Share of AdNanny's labels that change when the ad text carries an instruction or fake answer tags (the "
        "output parser already ignores tags inside inputs; this measures the model). 0% is the goal.")


def build_report(run_dir: str | os.PathLike[str]) -> Report:
    """The report of a run directory as blocks + chart PNGs (see the module docstring for what it reads)."""
    rd = Path(run_dir)
    if not rd.is_dir():
        from adnanny.flow import FlowError

        raise FlowError(f"run directory `{rd}` does not exist")
    ms = _load(rd)
    r = Report()
    r.h(1, "AdNanny flow report")
    r.p("Every number below was measured by this run and read from the stages' manifest.json files; "
        f"“{NOT_MEASURED}” marks what this run did not measure. Quality metrics print percent.")
    _section_stages(r, ms, rd)
    label = ms.get("label")
    _section_tables_1_5(r, label)
    tables = _get(label, "metrics", "tables")
    if isinstance(tables, Mapping):
        r.chart("bacc", _bacc_chart(tables), "BACC per task and view, 95% bootstrap intervals")
    _section_table6(r, ms.get("distill"))
    _section_table9(r, label, ms.get("quantize"))
    _section_table10(r, label)
    _section_cook(r, ms.get("cook"))
    _section_train(r, ms.get("train"), rd)
    _section_align(r, ms.get("align"), rd)
    _section_injection(r, label)
    r.h(2, "Notes from the stages")
    notes = [f"{name}: {n}" for name, m in ms.items() for n in (m.get("notes") or [])]
    r.items(notes) if notes else r.p("No notes.")
    return r


def write_report(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write RUN_DIR/report/report.md (+ charts/*.png) and report.html (charts embedded); returns their paths."""
    from adnanny_cook.corpus import atomic_write_bytes

    rd = Path(run_dir)
    r = build_report(rd)
    out = rd / "report"
    for name, png in r.charts.items():
        atomic_write_bytes(out / "charts" / f"{name}.png", png)
    md, page = out / "report.md", out / "report.html"
    atomic_write_bytes(md, r.to_markdown().encode("utf-8"))
    atomic_write_bytes(page, r.to_html(f"AdNanny flow report — {rd.name}").encode("utf-8"))
    return {"md": md, "html": page}
