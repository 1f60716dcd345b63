"""`mbpg compare`: train several algorithms on one environment with the same seeds and budget, then draw their
learning curves grouped by gradient type (MFG / FMG / MVG) and tabulate returns at fixed step budgets.

Each algorithm trains into OUT/ALGO through the same path as `mbpg train`. Re-running the same command reuses runs
that already reached the budget and resumes runs that were interrupted (from their last checkpoint), so a long
comparison can be stopped and continued.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mbpg.train.loop import CHECKPOINT_NAME, run_reached
from mbpg.train.plot import PlotArgs, draw_curves, interquartile_mean, load_curves

GRADIENT_TYPES = ("MFG", "FMG", "MVG")


@dataclasses.dataclass
class CompareArgs:
    algos: str
    """Comma-separated algorithms, e.g. sac,mbpo,svg1."""
    env: str = "Pendulum-v1"
    """Environment id (as for `mbpg train`)."""
    steps: int = 20_000
    """Environment steps per seed for every algorithm."""
    seeds: int = 3
    """Seeds per algorithm (vmapped on JAX environments)."""
    seed: int = 0
    """First seed."""
    budgets: tuple[int, ...] = ()
    """Step budgets of the returns table (default: a quarter, half and all of --steps)."""
    eval_every: int = 0
    """Evaluation interval in env steps (default: --steps / 10)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    out: Path = Path("runs/compare")
    """Directory of the comparison: one run directory per algorithm, the figure and the table."""
    algo_options: tuple[str, ...] = ()
    """Options for one algorithm, as ALGO='--option value ...', e.g. --algo-options "sac=--batch-size 64"."""


def parse_algos(text: str) -> list[str]:
    from mbpg.algos import get_algorithm

    algos = [a.strip() for a in text.split(",") if a.strip()]
    if not algos:
        raise ValueError("--algos names no algorithm; pass e.g. --algos sac,mbpo.")
    if len(set(algos)) != len(algos):
        raise ValueError(f"--algos lists an algorithm twice: {text!r}.")
    for algo in algos:
        get_algorithm(algo)  # unknown names fail here, with close matches, before any training
    return algos


def parse_algo_options(entries, algos: list[str]) -> dict[str, list[str]]:
    import shlex

    options: dict[str, list[str]] = {algo: [] for algo in algos}
    for entry in entries:
        algo, sep, text = entry.partition("=")
        if not sep or algo.strip() not in options:
            raise ValueError(f"--algo-options {entry!r} must read ALGO='--option value' with ALGO one of "
                             f"{', '.join(algos)}.")
        options[algo.strip()] += shlex.split(text)
    return options


def return_at_budget(steps: np.ndarray, values: np.ndarray, budget: int) -> np.ndarray | None:
    """Per-seed return at the last evaluation at or before `budget` (None if none was made by then)."""
    index = np.searchsorted(steps, budget, side="right") - 1
    return None if index < 0 else values[:, index]


def run_compare(args: CompareArgs, console: Console | None = None) -> Path:
    from mbpg.algos import get_algorithm
    from mbpg.train.run import parse_train, run_training

    console = console or Console()
    algos = parse_algos(args.algos)
    options = parse_algo_options(args.algo_options, algos)
    for name, value in (("steps", args.steps), ("seeds", args.seeds), ("eval_episodes", args.eval_episodes)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    budgets = args.budgets or (args.steps // 4, args.steps // 2, args.steps)
    if any(b < 1 for b in budgets):
        raise ValueError(f"--budgets must be positive step counts; got {budgets}.")
    eval_every = args.eval_every or max(1, args.steps // 10)
    runs = {}
    for algo in algos:
        run = args.out / algo
        runs[algo] = run
        # A finished or interrupted run is resumed, not merely reused: resuming checks that it was made with these
        # options (env, seeds, algorithm options), refuses it otherwise, and trains nothing once it is finished.
        if run_reached(run, args.steps):
            console.print(f"{algo}: {run} already reached {args.steps:,} steps; reusing it if its options match")
        resume = (run / CHECKPOINT_NAME).exists()
        argv = ["--env", args.env, "--steps", str(args.steps), "--seeds", str(args.seeds), "--seed", str(args.seed),
                "--out", str(run), "--eval-every", str(eval_every), "--eval-episodes", str(args.eval_episodes),
                *(["--resume"] if resume else []), *options[algo]]
        run_training(algo, parse_train(algo, argv), console=console)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = {algo: get_algorithm(algo)[2] for algo in algos}
    present = [t for t in GRADIENT_TYPES if t in types.values()]
    plot_args = PlotArgs(runs=tuple(runs.values()))
    rng = np.random.default_rng(0)
    figure, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 4), sharey=True, squeeze=False)
    rows = []
    for axis, gradient_type in zip(axes[0], present):
        group = [runs[a] for a in algos if types[a] == gradient_type]
        draw_curves(axis, load_curves(group, "eval_return"), plot_args, rng)
        axis.set_title(f"{gradient_type}: " + ", ".join(a for a in algos if types[a] == gradient_type))
    for algo in algos:
        (steps, values), = load_curves([runs[algo]], "eval_return").values()
        for budget in budgets:
            at = return_at_budget(steps, values, budget)
            if at is not None and not np.isfinite(at).all():
                console.print(f"[bold red]{algo}: {int((~np.isfinite(at)).sum())} seed(s) have a non-finite evaluation "
                              f"return at {budget:,} steps (diverged); its IQM is nan[/]")
            rows.append({"algo": algo, "gradient_type": types[algo], "budget": budget,
                         "iqm_return": "" if at is None else float(interquartile_mean(at)),
                         "per_seed": "" if at is None else " ".join(f"{v:.1f}" for v in at)})
    figure.suptitle(f"{args.env}: deterministic evaluation return, {args.seeds} seed(s) each")
    figure.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    figure_path = args.out / "compare.png"
    figure.savefig(figure_path, dpi=120)
    plt.close(figure)
    with open(args.out / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"Evaluation return (IQM over seeds) at fixed budgets on {args.env}")
    for column in ("algo", "type", *(f"{b:,} steps" for b in budgets)):
        table.add_column(column)
    for algo in algos:
        cells = [r for r in rows if r["algo"] == algo]
        table.add_row(algo, types[algo], *("—" if r["iqm_return"] == "" else f"{r['iqm_return']:.1f}" for r in cells))
    console.print(table)
    console.print(f"figure: {figure_path}\ntable: {args.out / 'compare.csv'}")
    return figure_path
