"""`mbpg plot`: learning curves across runs and seeds, as the interquartile mean with a bootstrap band.

The interquartile mean (mean of the middle 50% of seeds) with a percentile bootstrap over seeds is the
aggregate Agarwal et al. (2021, "Deep RL at the edge of the statistical precipice", rliable) recommend for few
seeds: less noisy than the median, less outlier-driven than the mean.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import trim_mean


@dataclasses.dataclass
class PlotArgs:
    runs: tuple[Path, ...]
    """Run directories (each with metrics.csv and config.json) or sweep directories (their finished trials); runs
    with the same algorithm and env (and, in a sweep, the same options) pool seeds."""
    metric: str = "eval_return"
    """Column of metrics.csv to plot."""
    out: Path = Path("learning_curves.png")
    """Figure file."""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence band."""
    confidence: float = 0.95
    """Width of the band."""
    seed: int = 0
    """Seed of the bootstrap."""


def interquartile_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    return trim_mean(values, 0.25, axis=axis)


def bootstrap_band(values: np.ndarray, resamples: int, confidence: float, rng: np.random.Generator):
    """values [seeds, steps] -> (IQM, low, high) over steps, resampling seeds with replacement."""
    n = values.shape[0]
    indices = rng.integers(0, n, size=(resamples, n))
    stats = np.stack([interquartile_mean(values[i], axis=0) for i in indices])
    tail = (1 - confidence) / 2
    return interquartile_mean(values, axis=0), np.quantile(stats, tail, axis=0), np.quantile(stats, 1 - tail, axis=0)


def expand_runs(runs) -> tuple[list[Path], dict[str, str]]:
    """Run directories, with each sweep directory (one holding a sweep's results.csv) replaced by its finished
    trials; and the plot label of each sweep trial."""
    from mbpg.train.sweep import RESULTS, sweep_run_dirs

    expanded, labels = [], {}
    for run in map(Path, runs):
        if (run / RESULTS).exists() and not (run / "metrics.csv").exists():
            trial_runs, trial_labels = sweep_run_dirs(run)
            expanded += trial_runs
            labels.update(trial_labels)
        else:
            expanded.append(run)
    return expanded, labels


def load_curves(runs, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (steps, values [seeds, steps]) on the steps every seed of that label logged."""
    per_label: dict[str, dict[tuple, dict[int, float]]] = defaultdict(dict)
    runs, sweep_labels = expand_runs(runs)
    for run in runs:
        metrics, config = run / "metrics.csv", run / "config.json"
        if not metrics.exists() or not config.exists():
            raise ValueError(f"{run} is not a run directory (needs metrics.csv and config.json).")
        settings = json.loads(config.read_text())
        label = sweep_labels.get(str(run)) or f"{settings.get('algo', run.name)} on {settings.get('env', '?')}"
        with open(metrics, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and metric not in rows[0]:
            raise ValueError(f"{metrics} has no column {metric!r}; it has {', '.join(rows[0])}.")
        for row in rows:
            # An empty cell is a row without this metric (no evaluation at that step); "nan" is a value (a run
            # that diverged), kept so that a curve shows it instead of an earlier step's value.
            if row.get(metric) not in (None, ""):
                seed_key = (str(run), row.get("seed", "0"))
                per_label[label].setdefault(seed_key, {})[int(float(row["step"]))] = float(row[metric])
    curves = {}
    for label, seeds in per_label.items():
        common = sorted(set.intersection(*(set(s) for s in seeds.values())))
        if common:
            curves[label] = (np.array(common), np.array([[s[t] for t in common] for s in seeds.values()]))
    if not curves:
        raise ValueError(f"no {metric!r} values found in {', '.join(map(str, runs))}.")
    return curves


def plot(args: PlotArgs) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(args.seed)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    draw_curves(axis, load_curves(args.runs, args.metric), args, rng)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    plt.close(figure)
    return args.out


def draw_curves(axis, curves: dict, args: PlotArgs, rng: np.random.Generator) -> None:
    """IQM lines with bootstrap bands for `load_curves` output on one matplotlib axis."""
    for label, (steps, values) in curves.items():
        centre, low, high = bootstrap_band(values, args.bootstrap, args.confidence, rng)
        line, = axis.plot(steps, centre, label=f"{label} ({values.shape[0]} seeds)")
        axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    axis.set_xlabel("environment steps")
    axis.set_ylabel(f"{args.metric} (IQM, {int(args.confidence * 100)}% bootstrap CI)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
