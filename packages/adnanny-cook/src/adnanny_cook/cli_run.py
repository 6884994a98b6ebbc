"""`adnanny-cook run` and `adnanny-cook validate-prompts`: flags generated from `CookConfig`'s fields.

Every config key is a flag of the same name (`--on-bad-row` and `--on_bad_row` both work); a flag overrides
the TOML value. Lists take comma-separated values, `--columns` takes `field=column,field=column`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

__all__ = ["add_run_parsers"]


def _field_docs(kind: Any = None) -> dict[str, str]:
    """The trailing `# comment` of each config field (one source of truth for TOML keys and --help)."""
    import inspect
    import re

    from adnanny_cook.config import CookConfig

    docs = {}
    for line in inspect.getsource(kind or CookConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


def _add_config_flags(p: argparse.ArgumentParser, kind: Any = None) -> None:
    from adnanny_cook.config import CookConfig

    kind = kind or CookConfig
    docs = _field_docs(kind)
    p.add_argument("--config", help="TOML file (keys = the flags below, without dashes)")
    for f in fields(kind):
        names = sorted({f"--{f.name.replace('_', '-')}", f"--{f.name}"})
        t = str(f.type)
        if t == "bool":
            p.add_argument(*names, dest=f.name, default=None, nargs="?", const="true", metavar="BOOL",
                           help=f"{docs.get(f.name, '')} (default {f.default!r})".strip())
        else:
            default = f.default if not callable(getattr(f, "default_factory", None)) else f.default_factory()  # type: ignore[misc]
            p.add_argument(*names, dest=f.name, default=None, metavar=t.split("[")[0].upper(),
                           help=f"{docs.get(f.name, '')} (default {default!r})".strip())
    p.add_argument("--json", action="store_true", help="print the manifest/report as JSON")


def _load(a: argparse.Namespace, *, input_from_golden: bool = False, kind: Any = None) -> Any:
    from adnanny_cook.config import CookConfig, load_config

    kind = kind or CookConfig
    overrides = {f.name: getattr(a, f.name) for f in fields(kind)}
    if input_from_golden and overrides["input"] is None and overrides["golden"] is not None:
        # validate-prompts reads only the golden set; don't make users name a corpus input it never opens
        overrides["input"] = overrides["golden"]
    return load_config(a.config, overrides, kind=kind)


def _cmd_run(a: argparse.Namespace) -> int:
    from adnanny_cook.pipeline import run_cook

    m = run_cook(_load(a))
    if a.json:
        print(json.dumps(m, sort_keys=True, default=str))
    else:
        t = m["stats"].get("teacher", {})
        print(f"cooked {m['rows']} corpus rows from {m['inputs']} inputs -> {m['corpus_path']} "
              f"({t.get('calls', 0)} teacher calls, {t.get('cache_hits', 0)} cached, "
              f"{t.get('retries', 0)} retries; dropped {m['filters']['dropped']}; "
              f"bad input rows {m['filters']['bad_input_rows']})")
    return _warn_empty("run", m)


def _warn_empty(verb: str, m: Any) -> int:
    """Exit status of a finished run: non-zero, with the reason on stderr, when the corpus is empty."""
    import sys

    for w in m.get("warnings", []):
        print(f"adnanny-cook {verb}: warning: {w}", file=sys.stderr)
    return 1 if m["rows"] == 0 else 0


def _cmd_corpus(a: argparse.Namespace) -> int:
    from adnanny_cook.config import CorpusConfig
    from adnanny_cook.label_corpus import run_corpus

    m = run_corpus(_load(a, kind=CorpusConfig))
    if a.json:
        print(json.dumps(m, sort_keys=True, default=str))
    else:
        t = m["tasks"].get(m["task"], {})
        print(f"wrote {m['rows']} label rows of task `{m['task']}` (labels {t.get('labels')}, sha256 "
              f"{str(t.get('hash'))[:12]}) -> {m['corpus_path']}: train {m['splits']['train']}, eval "
              f"{m['splits']['eval']}; bad input rows {m['filters']['bad_input_rows']}")
    return _warn_empty("corpus", m)


def _cmd_validate(a: argparse.Namespace) -> int:
    from adnanny_cook.golden import validate_prompts

    cfg = _load(a, input_from_golden=True)
    if not cfg.golden:
        from adnanny_cook.errors import ConfigError

        raise ConfigError("`golden` is required for validate-prompts (a golden .jsonl, e.g. "
                          "<sample>/golden/query_ad.jsonl)")
    from pathlib import Path

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    rep = validate_prompts(cfg)
    if a.json:
        print(json.dumps(rep, sort_keys=True))
    else:
        for v, r in rep["variants"].items():
            print(f"{v:>10}: format {r['format']:.1%}  faithful {r['faithful']:.1%}")
        print(f"consistency {rep['consistency']:.1%} -> {'PASSED' if rep['passed'] else 'FAILED'}")
        for f in rep["failures"]:
            print(f"  - {f}")
    return 0 if rep["passed"] else 1


def add_run_parsers(sub: Any) -> None:
    r = sub.add_parser("run", help="cook a labeled dataset into a label+reasoning corpus (resumable)",
                       description="Reasoning generation, optional golden-set gate, rejection sampling and corpus "
                                   "construction against any OpenAI-compatible teacher. Rerunning the same "
                                   "command resumes: finished chunks are skipped and cached calls are not repeated.")
    _add_config_flags(r)
    r.set_defaults(fn=_cmd_run)
    from adnanny_cook.config import CorpusConfig

    c = sub.add_parser("corpus", help="labeled rows -> a label-only corpus, no teacher (same split, card, checks)",
                       description="Turn your labeled file (CSV, JSONL or Parquet) into a label-only training "
                                   "corpus: the task's prompts with your labels as targets, grouped train/eval "
                                   "split, task definition and dataset card. --task takes a built-in name or a "
                                   "TOML task file; --columns maps task fields to your columns "
                                   "(query=search_term,label=esci); --labels picks the label fields.")
    _add_config_flags(c, CorpusConfig)
    c.set_defaults(fn=_cmd_corpus)
    v = sub.add_parser("validate-prompts", help="golden-set prompt validation (§3.3): report + gate (exit 1 on fail)")
    _add_config_flags(v)
    v.set_defaults(fn=_cmd_validate)
