"""Build every package's wheel and prove each one installs and imports *alone*.

A workspace install can hide a missing dependency: a module imported by package A but declared only by
package B still imports fine when both live in one environment. So for each distribution this script
makes an empty virtualenv, installs only that wheel (pip resolves its declared dependencies; sibling
adnanny-* wheels come from the freshly built folder, everything else from the package index), imports
it, checks the installed version equals the one in its ``__about__.py``, and runs its CLI's ``--help``.

The pins in ``tools/constraints.txt`` apply to every install: a bare torch range in an empty venv would
otherwise pull a multi-GB CUDA build.

Usage: ``python tools/check_wheels.py [--only adnanny-eval ...] [--keep DIR]``; exits non-zero naming
every package that failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tools" / "constraints.txt"


@dataclass(frozen=True)
class Distribution:
    """One shippable package of the monorepo, read from its own pyproject.toml."""

    name: str
    path: Path
    module: str
    version: str
    scripts: tuple[str, ...]


def discover(root: Path = ROOT) -> list[Distribution]:
    """Every package under ``packages/`` plus ``integration/``, in a stable order."""
    dirs = sorted(p for p in (root / "packages").iterdir() if (p / "pyproject.toml").is_file())
    dirs.append(root / "integration")
    dists = []
    for d in dirs:
        meta = tomllib.loads((d / "pyproject.toml").read_text())
        name = meta["project"]["name"]
        version_file = d / meta["tool"]["hatch"]["version"]["path"]
        version = read_version(version_file)
        module = Path(meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]).name
        scripts = tuple(meta["project"].get("scripts", {}))
        dists.append(Distribution(name, d, module, version, scripts))
    return dists


def read_version(about: Path) -> str:
    """The version string assigned in an ``__about__.py`` (the single place a package's version lives)."""
    for line in about.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit(f"error: no `__version__` assignment in {about}")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def build_all(dists: list[Distribution], dist_dir: Path) -> None:
    for d in dists:
        r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist_dir), str(d.path)])
        if r.returncode:
            raise SystemExit(f"error: building the wheel of {d.name} failed:\n{r.stdout}{r.stderr}")


def check_one(d: Distribution, dist_dir: Path, venv_root: Path) -> tuple[bool, str]:
    """Install ``d`` alone into a fresh venv; return (ok, detail)."""
    venv = venv_root / d.name
    r = run([sys.executable, "-m", "venv", str(venv)])
    if r.returncode:
        return False, f"venv: {r.stderr.strip()}"
    py = venv / "bin" / "python"
    wheel = sorted(dist_dir.glob(f"{d.name.replace('-', '_')}-{d.version}-*.whl"))
    if not wheel:
        return False, f"no wheel for version {d.version} in {dist_dir}"
    r = run([str(py), "-m", "pip", "install", "-q", "--constraint", str(CONSTRAINTS),
             "--find-links", str(dist_dir), str(wheel[0])])
    if r.returncode:
        return False, "install failed:\n" + (r.stdout + r.stderr)[-3000:]
    probe = (f"import importlib.metadata as m, {d.module}; "
             f"v = m.version({d.name!r}); assert v == {d.version!r}, v; print(v)")
    r = run([str(py), "-c", probe], cwd=venv_root)  # cwd outside the repo: import the installed copy
    if r.returncode:
        return False, "import failed:\n" + (r.stdout + r.stderr)[-3000:]
    for script in d.scripts:
        r = run([str(venv / "bin" / script), "--help"], cwd=venv_root)
        if r.returncode or "usage" not in r.stdout.lower():
            return False, f"`{script} --help` failed (exit {r.returncode}):\n" + (r.stdout + r.stderr)[-3000:]
    return True, "ok" + (f", {len(d.scripts)} CLI" if d.scripts else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="distribution names to check (default: all)")
    ap.add_argument("--keep", type=Path, default=None, help="keep wheels and venvs in this folder")
    args = ap.parse_args(argv)

    dists = discover()
    if args.only:
        unknown = set(args.only) - {d.name for d in dists}
        if unknown:
            ap.error(f"unknown distribution(s) {sorted(unknown)}; known: {[d.name for d in dists]}")
        targets = [d for d in dists if d.name in args.only]
    else:
        targets = dists

    work = args.keep or Path(tempfile.mkdtemp(prefix="adnanny-wheels-"))
    work.mkdir(parents=True, exist_ok=True)
    dist_dir, venv_root = work / "dist", work / "venvs"
    dist_dir.mkdir(exist_ok=True)
    venv_root.mkdir(exist_ok=True)
    try:
        t0 = time.perf_counter()
        build_all(dists, dist_dir)  # all, so sibling dependencies resolve from dist_dir
        print(f"built {len(dists)} wheels in {time.perf_counter() - t0:.1f}s")
        failed = []
        for d in targets:
            t = time.perf_counter()
            ok, detail = check_one(d, dist_dir, venv_root)
            print(f"{d.name:<20} {d.version:<8} {'PASS' if ok else 'FAIL'}  {time.perf_counter() - t:6.1f}s  {detail}")
            if not ok:
                failed.append(d.name)
        if failed:
            print(f"wheel check failed for: {', '.join(failed)}")
            return 1
        print(f"all {len(targets)} distributions install and import alone")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
