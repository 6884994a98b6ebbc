"""`adnanny-rl`: `train` (GRPO, the CLI generated from `RLConfig`) and `serve-rewards` (the rewards over HTTP)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from adnanny_rl.errors import AdNannyRLError

USAGE = """usage: adnanny-rl {train,serve-rewards} [options]

  train          GRPO with ads rewards: --config rl.toml plus flags of the same names as its keys
                 (adnanny-rl train --help lists every key)
  serve-rewards  the rewards of a config over HTTP (FastAPI) for verl / TRL / OpenRLHF
"""


def _split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config PATH` (or `--config=PATH`) out of the flags; the rest go to the generated parser."""
    path, rest, i = None, [], 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise AdNannyRLError("`--config` needs a path to a TOML file")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    try:
        if verb == "train":
            from adnanny_rl.config import load_config

            path, flags = _split_config(rest)
            cfg = load_config(path, cli_args=flags)
            from adnanny_rl.train import main as train_main

            summary = train_main(cfg)
            print(json.dumps({k: summary[k] for k in ("steps", "model")}))
            return 0
        if verb == "serve-rewards":
            from adnanny_rl.service import serve_main

            return serve_main(rest)
    except AdNannyRLError as e:
        print(f"adnanny-rl {verb}: error: {e}", file=sys.stderr)
        return 2
    print(f"adnanny-rl: unknown command {verb!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
