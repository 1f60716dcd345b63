"""SVG(1) and SVG(inf) learning thresholds (issue 4): Pendulum-v1, 30k env steps, 5 seeds as one vmapped program.

    .venv/bin/python benchmarks/bench_svg.py                  # SVG(1), defaults, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_svg.py --algo svginf    # SVG(inf), defaults
    .venv/bin/python benchmarks/bench_svg.py --seeds 2 --steps 10000   # a quick look while tuning

Trains through the same code path as `mbpg train ALGO` and checks the final deterministic evaluation (10 episodes
per seed) against -250; prints a table of per-seed returns and writes the run and a learning-curve figure to
--out/ALGO.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench_learning import final_returns
from mbpg.train.plot import PlotArgs, plot
from mbpg.train.run import parse_train, run_training

THRESHOLD = -250.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-svg"))
    parser.add_argument("--algo", choices=("svg1", "svginf"), default="svg1")
    parser.add_argument("options", nargs="*", help="extra options of the algorithm, e.g. -- --max-importance-weight 2")
    args = parser.parse_args()
    out = args.out / args.algo
    parsed = parse_train(args.algo, ["--env", "Pendulum-v1", "--steps", str(args.steps), "--seeds", str(args.seeds),
                                  "--out", str(out), "--eval-every", str(max(1000, args.steps // 15)),
                                  "--no-tensorboard", *args.options])
    if (out / "checkpoint.eqx").exists():
        (out / "checkpoint.eqx").unlink()
    start = time.perf_counter()
    run_training(args.algo, parsed, console=Console(quiet=True))
    seconds = time.perf_counter() - start
    _, returns = final_returns(out / "metrics.csv")
    passed = sum(r >= THRESHOLD for r in returns)
    name = {"svg1": "SVG(1)", "svginf": "SVG(inf)"}[args.algo]
    table = Table(title=f"{name} on Pendulum-v1: final deterministic evaluation (10 episodes), {args.seeds} seeds")
    for column in ("steps", "returns per seed", "threshold", "passed", "wall-clock"):
        table.add_column(column)
    table.add_row(f"{args.steps:,}", ", ".join(f"{r:.1f}" for r in returns), f">= {THRESHOLD:g}",
                  f"{passed}/{len(returns)} ({'ok' if passed == len(returns) else 'FAIL'})", f"{seconds:.0f} s")
    plot(PlotArgs(runs=(out,), out=out / "learning_curve.png"))
    Console(width=160).print(table)
    print(f"learning curve: {out / 'learning_curve.png'}")


if __name__ == "__main__":
    main()
