"""The same sweep spec in-process (this venv, without Ray) and through Ray Tune on a local Ray instance.

    .venv/bin/python benchmarks/bench_sweep.py [--spec benchmarks/sweep_spec.yaml] [--out runs/bench-sweep]

Ray is an optional extra, so its side runs in its own virtualenv, benchmarks/.venv-ray, created on first use with
`pip install -e '.[ray]'` (mbpg plus ray[tune]); `mbpg sweep SPEC --ray local` there starts a local Ray instance,
runs every trial as a Tune trial (one CPU each) and writes the same results table. The script prints both tables'
statuses and final returns side by side.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-ray"


def ensure_ray_venv(console: Console) -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    pyproject = (ROOT / "pyproject.toml").read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == pyproject:
        return VENV / "bin" / "mbpg"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    console.print(f"Ray virtualenv: pip install -e '.[ray]' into {VENV.relative_to(ROOT)}")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[ray]"], check=True)
    stamp.write_text(pyproject)
    return VENV / "bin" / "mbpg"


def read(out: Path) -> dict[str, dict]:
    with open(out / "results.csv", newline="") as handle:
        return {r["trial"]: r for r in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=HERE / "sweep_spec.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-sweep")
    args = parser.parse_args()
    console = Console(width=150)
    ray_here = importlib.util.find_spec("ray") is not None
    console.print(f"in-process side: {sys.executable} (Ray importable here: {ray_here})")
    timings = {}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mbpg.cli", "sweep", str(args.spec), "--out", str(args.out / "in-process")],
                   check=True)
    timings["in-process"] = time.perf_counter() - start
    mbpg_ray = ensure_ray_venv(console)
    start = time.perf_counter()
    subprocess.run([str(mbpg_ray), "sweep", str(args.spec), "--out", str(args.out / "ray"), "--ray", "local"],
                   check=True)
    timings["ray"] = time.perf_counter() - start
    local, ray = read(args.out / "in-process"), read(args.out / "ray")
    table = Table(title=f"{args.spec.name}: {len(local)} trials in-process vs through Ray Tune (local instance)")
    for column in ("trial", "in-process", "Ray", "same"):
        table.add_column(column)
    same = 0
    for trial, row in local.items():
        other = ray.get(trial, {})
        a = f"{row['status']} {row['eval_return']}"
        b = f"{other.get('status', 'missing')} {other.get('eval_return', '')}"
        same += a == b
        table.add_row(trial, a, b, "yes" if a == b else "no")
    console.print(table)
    console.print(f"identical outcomes: {same}/{len(local)}; wall-clock in-process {timings['in-process']:.0f} s, "
                  f"Ray {timings['ray']:.0f} s (including ray.init; Ray venv creation excluded)")


if __name__ == "__main__":
    main()
