"""`adnanny-cook <verb>`: sample | run | corpus | validate-prompts | check-corpus.

Heavy imports happen inside the verbs, so `adnanny-cook --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from adnanny_cook.errors import AdNannyCookError

__all__ = ["main"]


def _cmd_sample(a: argparse.Namespace) -> int:
    from adnanny_cook.sample import make_sample

    m = make_sample(a.out, a.seed, tokenizer=not a.no_tokenizer)
    if a.json:
        print(json.dumps(m, sort_keys=True))
    else:
        c = m["counts"]
        print(f"wrote sample world (seed {a.seed}) to {a.out} in {m['seconds']} s: {c['ads']} ads in "
              f"{c['categories']} categories, {c['query_ad']} query-ad triples, {c['ad_user']} ad-user pairs, "
              f"{c['keywords']} keywords, {c['corpus_rows']} corpus rows")
        print("class balance: " + ", ".join(f"{k}={v:.1%}" for k, v in m["class_balance"].items()))
    return 0


def _cmd_check_corpus(a: argparse.Namespace) -> int:
    from adnanny_cook.card import corpus_stats
    from adnanny_cook.corpus import read_corpus

    df = read_corpus(a.path)
    stats = corpus_stats(df.iter_rows(named=True))
    print(json.dumps(stats, sort_keys=True) if a.json else f"{a.path}: OK, {stats['rows']} rows, "
          f"tasks {stats['per_task']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adnanny-cook", description=(
        "Reasoning-augmented data cooking (AdNanny paper §3): turn labeled ads data into label+reasoning "
        "corpora with any OpenAI-compatible teacher, validate prompts on golden sets, rejection-sample, split."))
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("sample", help="write the synthetic ads world (catalog, judgments, golden sets, corpus, "
                                      "tokenizer)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0, help="random seed; the world is deterministic per seed")
    s.add_argument("--no-tokenizer", action="store_true", help="skip training the BPE tokenizer")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    s.set_defaults(fn=_cmd_sample)
    c = sub.add_parser("check-corpus", help="validate a corpus Parquet file/dir against the corpus schema")
    c.add_argument("path")
    c.add_argument("--json", action="store_true", help="print stats as JSON")
    c.set_defaults(fn=_cmd_check_corpus)
    from adnanny_cook.cli_run import add_run_parsers  # light: imports CookConfig only when flags are built

    add_run_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except AdNannyCookError as e:
        print(f"adnanny-cook {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
