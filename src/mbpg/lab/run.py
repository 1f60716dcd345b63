"""`mbpg lab`: run a scenario's quality sweep with progress, print the verdict, write the run directory."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mbpg.gradients import Baseline, EstimatorOptions
from mbpg.lab.quality import QualityRow, best_per_point, estimator_quality
from mbpg.lab.report import draw_figures, write_csv, write_report
from mbpg.lab.sampling import check_lab_baseline
from mbpg.lab.scenarios import DEFAULT_SCENARIO, SCENARIOS, get_scenario
from mbpg.lab.selector import lab_estimator


@dataclasses.dataclass
class LabConfig:
    """Measure bias, variance, MSE and cosine to the exact gradient of every estimator, as model error and the
    number of trajectories vary. Unset grid options take the scenario's defaults."""

    scenario: str = DEFAULT_SCENARIO
    """Scenario: gridworld, gridworld-learned, gridworld-adversarial, chain, garnet, lqr, lqr-learned,
    gridworld-two-area."""
    estimators: tuple[str, ...] | None = None
    """Estimators to compare (reinforce, gpomdp, fmg, mvg-mc, mvg-dp, mvg-td, svg, uim, gamps, gamps-ml), or
    auto: the adaptive selector's mix of gpomdp, mvg-dp and fmg (auto:A+B+C picks the candidates, MFG first)."""
    error_kind: Literal["dial", "adversarial", "learned"] | None = None
    """How the model is wrong: a mixture/perturbation dial, an adversarial mixture, or learned from samples."""
    model_errors: tuple[float, ...] | None = None
    """Grid of model errors: eps for the dial, sample counts for a learned model."""
    sample_sizes: tuple[int, ...] | None = None
    """Grid of trajectories per estimate N."""
    n_estimates: int | None = None
    """Independent estimates per grid point (more: tighter bias and variance figures)."""
    horizon: int | None = None
    """Trajectory length (default: smallest H with gamma^H <= 1e-3)."""
    baseline: Baseline = "none"
    """Leave-one-out baseline for score-function estimators."""
    n_rollouts: int = 4
    """Model rollouts per real (s, a) for mvg-mc."""
    seed: int = 0
    """Seed of models and draws: same seed, same machine, same numbers."""
    out: Path | None = None
    """Run directory (default: runs/lab-SCENARIO-TIMESTAMP)."""
    figures: bool = True
    """Draw the figures (--no-figures skips matplotlib)."""

    def resolved(self) -> dict:
        scenario = get_scenario(self.scenario)

        def chosen(value, default):
            return default if value is None else value

        grid = dict(
            estimators=chosen(self.estimators, scenario.estimators),
            error_kind=chosen(self.error_kind, scenario.error_kind),
            model_errors=chosen(self.model_errors, scenario.model_errors),
            sample_sizes=chosen(self.sample_sizes, scenario.sample_sizes),
            n_estimates=chosen(self.n_estimates, scenario.n_estimates),
        )
        for name in grid["estimators"]:  # registry names, or the selector "auto"; and no baseline that biases one
            check_lab_baseline(lab_estimator(name), self.baseline)
        for name in ("estimators", "model_errors", "sample_sizes"):
            if not grid[name]:
                raise ValueError(f"--{name.replace('_', '-')} needs at least one value.")
        for name, values in (("sample-sizes", grid["sample_sizes"]), ("n-estimates", [grid["n_estimates"]]),
                             ("horizon", [self.horizon or 1]), ("n-rollouts", [self.n_rollouts])):
            if any(v < 1 for v in values):
                raise ValueError(f"--{name} must be positive; got {list(values)}.")
        if not all(math.isfinite(e) and e >= 0 for e in grid["model_errors"]):
            raise ValueError(f"--model-errors must be finite and >= 0; got {list(grid['model_errors'])}.")
        return dict(scenario=scenario.name, description=scenario.description, **grid, horizon=self.horizon,
                    baseline=self.baseline, n_rollouts=self.n_rollouts, seed=self.seed)


def run_lab(config: LabConfig, console: Console | None = None) -> Path:
    console = console or Console()
    settings = config.resolved()
    scenario = SCENARIOS[settings["scenario"]]
    env = scenario.make_env()
    params = scenario.make_params(env)
    out = config.out or Path("runs") / f"lab-{scenario.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    command = "mbpg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mbpg lab"
    (out / "config.json").write_text(json.dumps({**settings, "command": command}, indent=2, default=str))
    console.print(f"[bold]mbpg lab[/] {scenario.name}: {scenario.description}")

    total = len(settings["estimators"]) * len(settings["model_errors"]) * len(settings["sample_sizes"])
    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("compiling", total=total)

        def advance(label: str) -> None:
            progress.update(task, advance=1, description=label)

        rows = estimator_quality(
            env, params, settings["estimators"], settings["model_errors"], settings["sample_sizes"],
            error_kind=settings["error_kind"], n_estimates=settings["n_estimates"], horizon=settings["horizon"],
            seed=settings["seed"], options=EstimatorOptions(baseline=config.baseline, n_rollouts=config.n_rollouts,
                                     model_class=scenario.model_class),
            progress=advance,
        )
    elapsed = time.perf_counter() - started
    write_csv(rows, out / "results.csv")
    figures = draw_figures(rows, out) if config.figures else None
    report = write_report(rows, {**settings, "seconds": round(elapsed, 1)}, out, figures, command)
    console.print(mse_table(rows))
    console.print(f"{len(rows)} grid points in {elapsed:.1f} s. Raw results: {out / 'results.csv'}; "
                  f"report: {report}")
    return out


def mse_table(rows: list[QualityRow]) -> Table:
    """MSE at the largest N, estimators by model error; the winner of each column in bold."""
    n = max(r.n_trajectories for r in rows)
    errors = sorted({r.model_error for r in rows})
    best = best_per_point(rows)
    table = Table(title=f"MSE to the true gradient, N = {n} trajectories per estimate (lower is better)")
    table.add_column("estimator")
    table.add_column("type")
    for error in errors:
        table.add_column(f"{rows[0].error_kind} {error:g}", justify="right")
    for name in dict.fromkeys(r.estimator for r in rows):
        cells = []
        for error in errors:
            row = next(r for r in rows if r.estimator == name and r.model_error == error and r.n_trajectories == n)
            text = f"{row.mse:.3g}"
            cells.append(f"[bold green]{text}[/]" if best[(error, n)] is row else text)
        table.add_row(name, next(r.gradient_type for r in rows if r.estimator == name), *cells)
    return table
