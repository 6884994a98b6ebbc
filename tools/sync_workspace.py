"""Reinstall the workspace members whose installed metadata no longer matches their pyproject.toml.

Why this exists: hatch installs every workspace member editable when it creates the environment, and
later only checks that each member *is installed*. An editable install freezes the metadata of the day
it was made, so a console script, an entry point, a dependency or a version added afterwards never
reaches an environment that already existed (CI keeps its environment between runs: a new `adnanny`
console script was missing there while every import still worked). This script compares, for each
member, the installed version, console scripts, entry points and declared requirements with the
pyproject; it reinstalls only the stale members (editable, no dependencies) and then installs any
declared third-party requirement that is missing, under ``tools/constraints.txt``. On an environment
that is in sync it changes nothing and takes well under a second.

Usage: ``python tools/sync_workspace.py [--check]``; ``--check`` reports and exits 1 when anything is
stale, without installing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_wheels import CONSTRAINTS, ROOT, discover  # noqa: E402


@dataclass(frozen=True)
class Member:
    """A workspace member as hatch.toml lists it: its folder and the extras the dev env installs."""

    name: str
    path: Path
    version: str
    features: tuple[str, ...]


def members(root: Path = ROOT) -> list[Member]:
    """The members of ``[envs.default.workspace]`` in hatch.toml, with their pyproject versions."""
    listed = tomllib.loads((root / "hatch.toml").read_text())["envs"]["default"]["workspace"]["members"]
    by_path = {d.path.resolve(): d for d in discover(root)}
    out = []
    for m in listed:
        d = by_path.get((root / m["path"]).resolve())
        if d is None:
            raise SystemExit(f"error: hatch.toml lists workspace member {m['path']!r}, which has no pyproject.toml")
        out.append(Member(d.name, d.path, d.version, tuple(m.get("features", ()))))
    return out


def _declared(path: Path) -> tuple[set[str], set[tuple[str, str, str]], set[str]]:
    """(requirement keys, (group, name, value) entry points, extras) a fresh install of ``path`` would have."""
    project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
    reqs = {_key(Requirement(r)) for r in project.get("dependencies", [])}
    extras = set(project.get("optional-dependencies", {}))
    for group in project.get("optional-dependencies", {}).values():
        reqs |= {_key(Requirement(r)) for r in group}
    eps = {("console_scripts", k, v) for k, v in project.get("scripts", {}).items()}
    for group, table in project.get("entry-points", {}).items():
        eps |= {(group, k, v) for k, v in table.items()}
    return reqs, eps, {canonicalize_name(e) for e in extras}


def _key(r: Requirement) -> str:
    """A requirement without its marker: hatchling folds the extra into the marker, pyproject does not."""
    extras = f"[{','.join(sorted(r.extras))}]" if r.extras else ""
    return f"{canonicalize_name(r.name)}{extras}{r.specifier}"


def stale_reason(m: Member) -> str | None:
    """Why the installed ``m`` differs from its pyproject, or None when it matches."""
    try:
        dist = md.distribution(m.name)
    except md.PackageNotFoundError:
        return "not installed"
    if dist.version != m.version:
        return f"installed version {dist.version}, pyproject says {m.version}"
    reqs, eps, extras = _declared(m.path)
    have_eps = {(e.group, e.name, e.value) for e in dist.entry_points}
    if eps - have_eps:
        return "missing entry points " + ", ".join(f"{g}:{n}" for g, n, _ in sorted(eps - have_eps))
    have_reqs = {_key(Requirement(r)) for r in dist.requires or []}
    if reqs != have_reqs:
        return "requirements changed: " + ", ".join(sorted(reqs ^ have_reqs))
    have_extras = {canonicalize_name(e) for e in dist.metadata.get_all("Provides-Extra") or []}
    if extras != have_extras:
        return "extras changed: " + ", ".join(sorted(extras ^ have_extras))
    return None


def missing_requirements(ms: list[Member]) -> list[str]:
    """Third-party requirements of the members (base + hatch features) that no installed version satisfies."""
    ours = {canonicalize_name(m.name) for m in ms}
    missing = []
    for m in ms:
        project = tomllib.loads((m.path / "pyproject.toml").read_text())["project"]
        wanted = list(project.get("dependencies", []))
        for f in m.features:
            wanted += project.get("optional-dependencies", {}).get(f, [])
        for text in wanted:
            r = Requirement(text)
            if canonicalize_name(r.name) in ours or (r.marker and not r.marker.evaluate({"extra": ""})):
                continue
            try:
                ok = r.specifier.contains(md.version(r.name), prereleases=True)
            except md.PackageNotFoundError:
                ok = False
            if not ok and text not in missing:
                missing.append(text)
    return missing


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--constraint", str(CONSTRAINTS), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed:\n{(r.stdout + r.stderr)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report stale members and exit 1; install nothing")
    args = ap.parse_args(argv)
    ms = members()
    stale = [(m, why) for m in ms if (why := stale_reason(m))]
    for m, why in stale:
        print(f"sync_workspace: {m.name} is stale ({why})", file=sys.stderr)
    if args.check:
        missing = missing_requirements(ms)
        for text in missing:
            print(f"sync_workspace: requirement {text!r} is not installed", file=sys.stderr)
        return 1 if stale or missing else 0
    if stale:
        pip("--no-deps", *[a for m, _ in stale for a in ("-e", str(m.path))])
    missing = missing_requirements(ms)
    if missing:
        print(f"sync_workspace: installing {missing}", file=sys.stderr)
        pip(*missing)
    importlib.invalidate_caches()  # see the dist-info folders pip just wrote
    still = [m.name for m in ms if stale_reason(m)]
    if still:
        raise SystemExit(f"error: still stale after reinstalling: {still}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
