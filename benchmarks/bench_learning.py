"""Learning thresholds of the model-free agents (issue targets), 5 seeds each as one vmapped program.

    .venv/bin/python benchmarks/bench_learning.py            # all cases, about 8 minutes on 2 cores
    .venv/bin/python benchmarks/bench_learning.py --only sac

Each case trains through the same code path as `mbpg train` and checks the final deterministic evaluation
(10 episodes per seed) against its threshold; run directories and a learning-curve figure land in --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mbpg.train.plot import PlotArgs, plot
from mbpg.train.run import parse_train, run_training

# (name, algo, env, steps, threshold, seeds that must pass, reference)
CASES = [
    ("sac", "sac", "Pendulum-v1", 20_000, -200.0, 4, "SB3 zoo SAC: about -157 at 20k"),
    ("ppo", "ppo", "CartPole-v1", 100_000, 475.0, 5, "SB3 zoo PPO: 500 at 100k"),
    ("trpo", "trpo", "CartPole-v1", 100_000, 475.0, 5, "SB3 zoo TRPO: 500 at 100k"),
    ("reinforce", "reinforce", "CartPole-v1", 300_000, 400.0, 5, "issue target: >= 400 by 300k"),
    # POIS counts N x 500 steps per iteration (an upper bound on the real steps; metrics.csv has real_env_steps).
    ("apois", "apois", "CartPole-v1", 2_000_000, 475.0, 5, "issue target: >= 475, linear policy"),
    ("ppois", "ppois", "CartPole-v1", 1_000_000, 475.0, 5, "issue target: >= 475, linear policy"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[c[0] for c in CASES], action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-learning"))
    args = parser.parse_args()
    console = Console(width=160)
    table = Table(title=f"Final deterministic evaluation return, {args.seeds} seeds")
    for column in ("algo", "env", "steps", "returns per seed", "threshold", "passed", "wall-clock", "reference"):
        table.add_column(column)
    for name, algo, env, steps, threshold, needed, reference in CASES:
        if args.only and name not in args.only:
            continue
        out = args.out / name
        parsed = parse_train(algo, ["--env", env, "--steps", str(steps), "--seeds", str(args.seeds), "--out",
                                    str(out), "--eval-every", str(steps // 10), "--no-tensorboard"])
        if (out / "checkpoint.eqx").exists():
            (out / "checkpoint.eqx").unlink()
        start = time.perf_counter()
        run_training(algo, parsed, console=Console(quiet=True))
        seconds = time.perf_counter() - start
        _, returns = final_returns(out / "metrics.csv")
        passed = sum(r >= threshold for r in returns)
        table.add_row(algo, env, f"{steps:,}", ", ".join(f"{r:.1f}" for r in returns), f">= {threshold:g}",
                      f"{passed}/{len(returns)} ({'ok' if passed >= min(needed, len(returns)) else 'FAIL'})",
                      f"{seconds:.0f} s", reference)
        plot(PlotArgs(runs=(out,), out=out / "learning_curve.png"))
    console.print(table)


def final_returns(metrics_path: Path) -> tuple[int, list[float]]:
    """(step, per-seed returns) of a run's last evaluation; the learning benchmarks all judge this one."""
    import csv

    with open(metrics_path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["eval_return"]]
    last = max(int(r["step"]) for r in rows)
    return last, [float(r["eval_return"]) for r in rows if int(r["step"]) == last]


if __name__ == "__main__":
    main()
