"""Bump one package's version and close its CHANGELOG's ``Unreleased`` section.

Each distribution is versioned on its own: its version lives only in ``src/<module>/__about__.py``
(hatchling reads it from there) and its history in its own ``CHANGELOG.md`` (Keep a Changelog). Releasing
``adnanny-eval`` must not touch any other package, so this tool edits exactly those two files and
prints the tag to create (``<name>-vX.Y.Z``).

Usage: ``python tools/release.py adnanny-eval minor`` (or ``major``, ``patch``, or an explicit ``1.2.3``);
``--dry-run`` shows the change without writing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_wheels import ROOT, discover  # noqa: E402

SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class ReleaseError(Exception):
    """A release request that cannot be carried out; the message says why and what to do."""


def next_version(current: str, bump: str) -> str:
    """``bump`` is major|minor|patch or an explicit X.Y.Z that must be greater than ``current``."""
    m = SEMVER.match(current)
    if not m:
        raise ReleaseError(f"current version {current!r} is not X.Y.Z; fix `__version__` by hand first")
    major, minor, patch = map(int, m.groups())
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    n = SEMVER.match(bump)
    if not n:
        raise ReleaseError(f"`bump` must be major, minor, patch or X.Y.Z; got {bump!r}")
    if tuple(map(int, n.groups())) <= (major, minor, patch):
        raise ReleaseError(f"new version {bump} is not greater than the current {current}")
    return bump


def close_unreleased(changelog: str, version: str, date: str) -> str:
    """Turn ``## [Unreleased]`` into ``## [version] - date`` under a fresh, empty Unreleased heading."""
    marker = "## [Unreleased]"
    if marker not in changelog:
        raise ReleaseError("CHANGELOG.md has no `## [Unreleased]` section to release")
    head, body = changelog.split(marker, 1)
    nxt = body.find("\n## [")
    section = body if nxt < 0 else body[:nxt]
    if not section.strip():
        raise ReleaseError("the `Unreleased` section of CHANGELOG.md is empty: describe the changes first")
    return f"{head}{marker}\n\n## [{version}] - {date}{body}"


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def release(name: str, bump: str, *, root: Path = ROOT, dry_run: bool = False,
            today: dt.date | None = None) -> str:
    dists = {d.name: d for d in discover(root)}
    if name not in dists:
        raise ReleaseError(f"unknown package `{name}`; choose one of {sorted(dists)}")
    d = dists[name]
    new = next_version(d.version, bump)
    about = d.path / "src" / d.module / "__about__.py"
    changelog_path = d.path / "CHANGELOG.md"
    changelog = close_unreleased(changelog_path.read_text(), new, (today or dt.date.today()).isoformat())
    about_text = re.sub(r'__version__\s*=\s*["\'][^"\']*["\']', f'__version__ = "{new}"', about.read_text())
    if not dry_run:
        atomic_write(changelog_path, changelog)
        atomic_write(about, about_text)
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="distribution name, e.g. adnanny-eval")
    ap.add_argument("bump", help="major | minor | patch | X.Y.Z")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    try:
        new = release(args.package, args.bump, dry_run=args.dry_run)
    except ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "would release" if args.dry_run else "released"
    print(f"{verb} {args.package} {new}; tag: {args.package}-v{new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
