"""Real environment steps to reach a mean deterministic evaluation return >= -200 on Pendulum-v1: ME-TRPO and SLBO
(TRPO inside learned models) against model-free TRPO, all measured in this run.

    .venv/bin/python benchmarks/bench_model_based_trpo.py                      # 5 seeds of each
    .venv/bin/python benchmarks/bench_model_based_trpo.py --only metrpo --seeds 2
    .venv/bin/python benchmarks/bench_model_based_trpo.py --report-only       # table and figure from --out

Each case trains through the same code path as `mbpg train` (seeds as one vmapped program) and evaluates the
deterministic policy (10 episodes per seed) after every training chunk for the model-based agents (one chunk = one
outer iteration / stage of real steps) and every 2 updates for TRPO. "Steps to -200" is the first evaluation at
which the mean over seeds of the evaluation return is >= -200; the per-seed first crossings are listed too.
TRPO runs with the SB3 zoo's tuned Pendulum-v1 settings (2 envs x 1024 steps, gamma 0.9, 15 critic epochs of
minibatches of 128), except gSDE, which mbpg does not have. Writes results.json, a markdown table and
learning_curves.png (interquartile mean over seeds with a 95% bootstrap band, log step axis) to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mbpg.train.plot import bootstrap_band
from mbpg.train.run import parse_train, run_training

THRESHOLD = -200.0
ENV = "Pendulum-v1"
# (name, algo, steps, eval_every, options)
CASES = [
    ("metrpo", "metrpo", 4_800, 300, []),
    ("slbo", "slbo", 2_000, 200, []),
    ("trpo", "trpo", 150_000, 4096, ["--n-envs", "2", "--n-steps", "1024", "--gamma", "0.9", "--value-epochs", "15",
                                     "--value-minibatches", "16"]),
]


def read_curve(metrics_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns [seeds, steps]) of the evaluation rows."""
    per_seed: dict[float, dict[int, float]] = defaultdict(dict)
    with open(metrics_path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["eval_return"]:
                per_seed[float(row["seed"])][int(row["step"])] = float(row["eval_return"])
    steps = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    return np.array(steps), np.array([[per_seed[s][t] for t in steps] for s in sorted(per_seed)])


def first_crossing(steps: np.ndarray, returns: np.ndarray) -> int | None:
    hits = np.flatnonzero(returns >= THRESHOLD)
    return int(steps[hits[0]]) if hits.size else None


def summarise(out: Path, config: dict, seconds: float | None, options: list[str]) -> dict:
    curve_steps, returns = read_curve(out / "metrics.csv")
    mean = returns.mean(0)
    return {
        "steps_to_threshold_mean": first_crossing(curve_steps, mean),
        "steps_to_threshold_per_seed": [first_crossing(curve_steps, r) for r in returns],
        "final_return_per_seed": [round(float(r), 1) for r in returns[:, -1]],
        "budget": int(config["total_steps"]), "eval_every": int(config["eval_every"]), "seeds": int(config["n_seeds"]),
        "wall_clock_s": None if seconds is None else round(seconds, 1), "options": options,
        "curve_steps": curve_steps.tolist(), "curve_mean": mean.round(1).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[c[0] for c in CASES], action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-model-based-trpo"))
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild results, table and figure from the run directories in --out")
    args = parser.parse_args()
    console = Console(width=160)
    results = {}
    for name, algo, steps, eval_every, options in CASES:
        if args.only and name not in args.only:
            continue
        out = args.out / name
        if args.report_only:
            if (out / "metrics.csv").exists():
                results[name] = summarise(out, json.loads((out / "config.json").read_text()), None, options)
            continue
        parsed = parse_train(algo, ["--env", ENV, "--steps", str(steps), "--seeds", str(args.seeds), "--out", str(out),
                                    "--eval-every", str(eval_every), "--eval-episodes", "10", "--no-tensorboard",
                                    *options])
        for stale in ("checkpoint.eqx", "metrics.csv"):
            if (out / stale).exists():
                (out / stale).unlink()
        start = time.perf_counter()
        run_training(algo, parsed, console=Console(quiet=True))
        seconds = time.perf_counter() - start
        results[name] = summarise(out, json.loads((out / "config.json").read_text()), seconds, options)
        console.print(f"{name}: mean crosses {THRESHOLD:g} at {results[name]['steps_to_threshold_mean']} steps "
                      f"({seconds:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "results.json"
    if args.report_only and previous.exists():  # keep the measured wall-clock of the runs
        earlier = json.loads(previous.read_text())
        for name, r in results.items():
            if earlier.get(name, {}).get("budget") == r["budget"]:
                r["wall_clock_s"] = earlier[name]["wall_clock_s"]
    elif args.only and previous.exists():  # keep the other cases of an earlier full run
        results = {**json.loads(previous.read_text()), **results}
    previous.write_text(json.dumps(results, indent=1))
    table = Table(title=f"{ENV}: real env steps to a mean deterministic eval return >= {THRESHOLD:g} "
                        f"({args.seeds} seeds, 10 episodes each)")
    lines = ["| algo | steps to -200 (mean over seeds) | per-seed first crossing | final return per seed | budget | "
             "wall-clock |", "|---|---|---|---|---|---|"]
    for column in ("algo", "steps to -200 (mean)", "per seed", "final return per seed", "budget", "wall-clock"):
        table.add_column(column)
    for name, r in results.items():
        cells = [name, f"{r['steps_to_threshold_mean']:,}" if r["steps_to_threshold_mean"] else "not reached",
                 ", ".join(f"{s:,}" if s else "-" for s in r["steps_to_threshold_per_seed"]),
                 ", ".join(f"{v:.1f}" for v in r["final_return_per_seed"]), f"{r['budget']:,}",
                 "-" if r["wall_clock_s"] is None else f"{r['wall_clock_s']:.0f} s"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    draw(args.out, results)


def draw(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    rng = np.random.default_rng(0)
    for name in results:
        steps, returns = read_curve(out / name / "metrics.csv")
        centre, low, high = bootstrap_band(returns, 2000, 0.95, rng)
        axis.plot(steps, centre, label=name)
        axis.fill_between(steps, low, high, alpha=0.2)
    axis.axhline(THRESHOLD, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("real environment steps (log scale)")
    axis.set_ylabel("deterministic evaluation return")
    axis.set_title(f"{ENV}: IQM over seeds, 95% bootstrap band")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "learning_curves.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
