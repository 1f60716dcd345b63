"""The lab atlas: which gradient wins where, over environment families, model error, sample size and discount,
and how close the adaptive selector ("auto") comes to the best fixed estimator at every point.

Why a paired design: at each grid point `n_estimates` independent draws each give every candidate's estimate *and*
the selector's mix from the same trajectories (`AutoEstimator.contributions`). Each candidate's estimate is
distributed exactly as that estimator's own draw (same code path, tested in tests/test_selector.py), so each MSE
is what `estimator_quality` would measure; sharing the trajectories only makes the comparisons between
estimators (auto / best) far less noisy than independent runs would.

MSEs are normalised per point by ||true gradient||^2 before they are averaged over the grid, so that no family
dominates the mean by the scale of its rewards.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbpg import envs
from mbpg.envs import LQR
from mbpg.keys import side_key
from mbpg.lab.exact import UnstableGainWarning, exact_gradient
from mbpg.lab import report
from mbpg.lab.quality import _stable_hash, make_model, model_distance, mse_rank, summarise_draws
from mbpg.lab.scenarios import _half_optimal_gain, _random_logits
from mbpg.lab.selector import AutoEstimator
from mbpg.policies import policy_for
from mbpg.values import effective_horizon


@dataclasses.dataclass(frozen=True)
class Family:
    """An environment family member: how to build it at a discount, and the model errors to sweep on it."""

    name: str
    make_env: Callable[[float], object]
    models: tuple[tuple[str, float], ...]
    """(error kind, value): ("dial", eps) mixes in a random q (tabular) or perturbs (A, B) by relative error eps
    (LQR); ("learned", n) fits the model from n samples per (s, a) (tabular) or n transitions (LQR)."""

    def params(self, env) -> np.ndarray:
        return _half_optimal_gain(env) if isinstance(env, LQR) else _random_logits(env)


TABULAR_MODELS = (("dial", 0.0), ("dial", 0.1), ("dial", 0.3), ("learned", 5), ("learned", 50))
# A random perturbation of (A, B) beyond about 0.1 can make the half-optimal gain unstable on the model.
LQR_MODELS = (("dial", 0.0), ("dial", 0.03), ("dial", 0.1), ("learned", 20), ("learned", 200))

FAMILIES = {
    f.name: f
    for f in (
        Family("gridworld 3x3 slip .1", lambda g: envs.gridworld(3, 3, slip=0.1, gamma=g), TABULAR_MODELS),
        Family("gridworld 5x5 slip .3", lambda g: envs.gridworld(5, 5, slip=0.3, gamma=g), TABULAR_MODELS),
        Family("chain 8", lambda g: envs.chain(8, slip=0.2, gamma=g), TABULAR_MODELS),
        Family("garnet 20x4 b3", lambda g: envs.garnet(20, 4, 3, gamma=g, seed=0), TABULAR_MODELS),
        Family("lqr 2-d", lambda g: envs.double_integrator(gamma=g), LQR_MODELS),
        Family("lqr 3-d", lambda g: envs.random_lqr(3, 2, gamma=g, seed=0), LQR_MODELS),
        # --full only:
        Family("gridworld 4x4 slip 0", lambda g: envs.gridworld(4, 4, slip=0.0, gamma=g), TABULAR_MODELS),
        Family("gridworld 8x8 slip .2", lambda g: envs.gridworld(8, 8, slip=0.2, gamma=g), TABULAR_MODELS),
        Family("chain 16", lambda g: envs.chain(16, slip=0.1, gamma=g), TABULAR_MODELS),
        Family("garnet 50x5 b5", lambda g: envs.garnet(50, 5, 5, gamma=g, seed=1), TABULAR_MODELS),
        Family("lqr 5-d", lambda g: envs.random_lqr(5, 3, gamma=g, seed=1), LQR_MODELS),
    )
}


@dataclasses.dataclass(frozen=True)
class AtlasGrid:
    families: tuple[str, ...]
    gammas: tuple[float, ...]
    sample_sizes: tuple[int, ...]
    n_estimates: int
    candidates: tuple[str, ...] = AutoEstimator().candidates

    @property
    def n_points(self) -> int:
        return sum(len(FAMILIES[f].models) for f in self.families) * len(self.gammas) * len(self.sample_sizes)


DEFAULT_GRID = AtlasGrid(
    families=("gridworld 3x3 slip .1", "gridworld 5x5 slip .3", "chain 8", "garnet 20x4 b3", "lqr 2-d", "lqr 3-d"),
    gammas=(0.8, 0.9), sample_sizes=(4, 16, 64), n_estimates=400)
FULL_GRID = AtlasGrid(families=tuple(FAMILIES), gammas=(0.7, 0.8, 0.9, 0.95), sample_sizes=(2, 4, 8, 16, 32, 64, 128),
                      n_estimates=500)


EQUAL_MIX = "equal-mix"
"""A reference column, not a contender: the fixed mix (1/K) sum_k g_k of the candidates, from the same draws. It
shows how much of auto's gain a data-blind average already gets (FMG's model trajectories are independent of the
real ones, so averaging alone cuts variance) and what adapting the weights adds or costs on top."""


@dataclasses.dataclass
class AtlasRow:
    """One estimator at one grid point. normalised_mse = mse / ||true gradient||^2; weight: the selector's mean
    weight on this candidate (NaN for auto itself)."""

    family: str
    gamma: float
    error_kind: str
    model_error: float
    model_distance: float
    n_trajectories: int
    estimator: str
    mse: float
    normalised_mse: float
    bias: float
    variance: float
    cosine: float
    weight: float
    truth_norm2: float
    n_estimates: int
    ratio_low: float = math.nan
    """auto only: 90% paired-bootstrap interval of auto's MSE / the best fixed estimator's MSE at this point."""
    ratio_high: float = math.nan


@functools.partial(jax.jit, static_argnames=("auto", "policy", "sample_sizes", "horizon", "n_estimates"))
def _paired_draws(env, model, params, key, *, auto, policy, sample_sizes, horizon, n_estimates):
    """Per draw: contributions of max(N) trajectories; for each N of the grid, the candidates' estimates and the
    selector's mix from the first N of them. The trajectories are i.i.d., so the first N are a draw of size N:
    every N level is measured with its own exact distribution, one program serves them all, and the levels are
    nested (correlated across N, which no per-point statistic depends on)."""

    def one(key):
        contributions = auto.contributions(env, model, policy, params, key, max(sample_sizes), horizon)
        outputs = []
        for n in sample_sizes:
            mixed, selection = auto.select(contributions[:, :n])
            outputs.append((contributions[:, :n].mean(1), mixed, selection.weights))
        return jax.tree.map(lambda *levels: jnp.stack(levels), *outputs)

    return jax.lax.map(one, jax.random.split(key, n_estimates), batch_size=min(n_estimates, 50))


def run_atlas_grid(grid: AtlasGrid, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every candidate and auto at every grid point; returns {"rows": [...], "skipped": [...]}.

    One program is compiled per (family, discount) and reused across that family's models and N levels. A model
    on which the LQR gain is unstable (FMG/MVG undefined) is skipped and listed, not silently dropped.
    """
    for name in grid.families:
        if name not in FAMILIES:
            raise ValueError(f"unknown atlas family {name!r}; choose from {', '.join(FAMILIES)}.")
    if any(n < 2 for n in grid.sample_sizes):
        raise ValueError(f"the selector needs N >= 2 trajectories per estimate; got sample sizes {grid.sample_sizes}.")
    auto = AutoEstimator(grid.candidates)
    sizes = tuple(sorted(set(grid.sample_sizes)))
    root = jax.random.key(seed)
    rows: list[AtlasRow] = []
    skipped: list[str] = []
    for family_name in grid.families:
        family = FAMILIES[family_name]
        for gamma in grid.gammas:
            env = family.make_env(gamma)
            params = family.params(env)
            truth = np.asarray(exact_gradient(env, params), np.float64)
            static = dict(auto=auto, policy=policy_for(env), sample_sizes=sizes, horizon=effective_horizon(gamma),
                          n_estimates=grid.n_estimates)
            # Keyed by the family's name, not its position: a sub-grid reproduces the same points.
            family_key = jax.random.fold_in(jax.random.fold_in(root, _stable_hash(family_name)), round(gamma * 1000))
            for model_index, (kind, value) in enumerate(family.models):
                if progress:
                    progress(f"{family_name} g={gamma:g} {kind}={value:g}")
                model = make_model(env, kind, value, jax.random.fold_in(family_key, model_index), params)
                with warnings.catch_warnings():  # an unstable gain on the model is reported below, as a skip
                    warnings.simplefilter("ignore", UnstableGainWarning)
                    defined = all(np.isfinite(exact_gradient(env, params, k, model)).all() for k in ("fmg", "mvg"))
                if not defined:
                    skipped.append(f"{family_name} gamma={gamma:g} {kind}={value:g}: the policy is unstable on "
                                   "the model (FMG/MVG undefined)")
                    continue
                key = jax.random.fold_in(family_key, 100 + model_index)
                estimates, mixed, weights = jax.device_get(
                    _paired_draws(env, model, jnp.asarray(params, jnp.float32), key, **static))
                for level, n in enumerate(sizes):
                    point = dict(family=family_name, gamma=gamma, error_kind=kind, model_error=float(value),
                                 model_distance=model_distance(env, model), n_trajectories=n,
                                 truth_norm2=float(truth.ravel() @ truth.ravel()), n_estimates=grid.n_estimates)
                    columns = [(name, estimates[:, level, k], float(weights[:, level, k].mean()))
                               for k, name in enumerate(auto.candidates)] + [("auto", mixed[:, level], math.nan)]
                    errors = np.stack([_squared_errors(draws, truth) for _, draws, _ in columns])  # [K+1, R]
                    low, high = _ratio_interval(errors, jax.random.fold_in(side_key(key, "bootstrap"), n))
                    columns.append((EQUAL_MIX, estimates[:, level].mean(1), math.nan))
                    for name, draws, weight in columns:
                        stats = summarise_draws(np.asarray(draws), truth)
                        interval = dict(ratio_low=low, ratio_high=high) if name == "auto" else {}
                        rows.append(AtlasRow(estimator=name, mse=stats["mse"],
                                             normalised_mse=stats["mse"] / point["truth_norm2"],
                                             bias=stats["bias"], variance=stats["variance"], cosine=stats["cosine"],
                                             weight=weight, **point, **interval))
    return {"rows": rows, "skipped": skipped}


def _squared_errors(draws, truth) -> np.ndarray:
    flat = np.asarray(draws, np.float64).reshape(len(draws), -1)
    return ((flat - truth.reshape(-1)) ** 2).sum(1)


def _ratio_interval(errors: np.ndarray, key, n_boot: int = 1000, level: float = 0.9) -> tuple[float, float]:
    """Paired bootstrap over draws of MSE(auto) / MSE(best fixed), the best chosen on the full sample. errors:
    squared errors [K + 1, R], auto last. Says whether a measured ratio differs from a target beyond noise."""
    best = int(np.argmin(errors[:-1].mean(1)))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    index = rng.integers(0, errors.shape[1], size=(n_boot, errors.shape[1]))
    ratios = errors[-1][index].mean(1) / errors[best][index].mean(1)
    return float(np.quantile(ratios, (1 - level) / 2)), float(np.quantile(ratios, (1 + level) / 2))


# --- Summaries -----------------------------------------------------------------------------------------------------

def point_key(row: AtlasRow) -> tuple:
    return (row.family, row.error_kind, row.model_error, row.gamma, row.n_trajectories)


def by_point(rows: Sequence[AtlasRow]) -> dict[tuple, dict[str, AtlasRow]]:
    points: dict[tuple, dict[str, AtlasRow]] = {}
    for row in rows:
        points.setdefault(point_key(row), {})[row.estimator] = row
    return points


def summarise(rows: Sequence[AtlasRow]) -> dict:
    """Mean normalised MSE per estimator over the grid; per point the best fixed estimator, its margin over the
    runner-up, and auto's MSE ratio to it; the worst ratio and where."""
    points = by_point(rows)
    estimators = list(dict.fromkeys(r.estimator for r in rows))
    fixed = [e for e in estimators if e not in ("auto", EQUAL_MIX)]
    per_point = []
    for key, entry in points.items():
        ordered = sorted(fixed, key=lambda e: mse_rank(entry[e].mse))
        best, runner_up = entry[ordered[0]], entry[ordered[1]] if len(ordered) > 1 else entry[ordered[0]]
        per_point.append(dict(point=key, best=best.estimator, margin=runner_up.mse / best.mse,
                              auto_ratio=entry["auto"].mse / best.mse,
                              auto_to_equal_mix=entry["auto"].mse / entry[EQUAL_MIX].mse if EQUAL_MIX in entry
                              else math.nan,
                              interval=(entry["auto"].ratio_low, entry["auto"].ratio_high)))
    worst = max(per_point, key=lambda p: p["auto_ratio"])
    ratios = np.array([p["auto_ratio"] for p in per_point])
    return dict(
        n_points=len(points),
        mean_normalised_mse={e: float(np.mean([points[k][e].normalised_mse for k in points])) for e in estimators},
        # The arithmetic mean is dominated by the noisiest points (LQR score gradients); the geometric mean is not.
        geomean_normalised_mse={e: float(np.exp(np.mean([np.log(points[k][e].normalised_mse) for k in points])))
                                for e in estimators},
        wins={e: sum(p["best"] == e for p in per_point) for e in fixed},
        worst_auto_ratio=float(worst["auto_ratio"]), worst_point=worst["point"], worst_interval=worst["interval"],
        points_over_1_25=int((ratios > 1.25).sum()),
        # Points whose whole 90% bootstrap interval lies above 1.25: a miss beyond measurement noise.
        points_surely_over_1_25=int(sum(p["interval"][0] > 1.25 for p in per_point)),
        auto_beats_best=int((ratios < 1.0).sum()),
        geometric_mean_auto_ratio=float(np.exp(np.log(ratios).mean())),
        worst_auto_to_equal_mix=float(max(p["auto_to_equal_mix"] for p in per_point)),
        auto_worse_than_equal_mix=int(sum(p["auto_to_equal_mix"] > 1 for p in per_point)),
        per_point=per_point,
    )


def write_csv(rows: Sequence[AtlasRow], path: Path) -> None:
    report.write_csv(rows, path, AtlasRow)


def read_csv(path: Path) -> list[AtlasRow]:
    return report.read_csv(path, AtlasRow)


def _row_label(key: tuple) -> str:
    family, kind, value = key[:3]
    return f"{family} | {'eps' if kind == 'dial' else 'n'}={value:g}"


def draw_maps(rows: Sequence[AtlasRow], out_dir: Path) -> dict[str, Path]:
    """Two heat maps over (family, model) x (discount, N): the winning fixed estimator with its MSE margin over
    the runner-up, and auto's MSE ratio to the best fixed estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm

    summary = summarise(rows)
    per_point = {p["point"]: p for p in summary["per_point"]}
    row_keys = list(dict.fromkeys(k[:3] for k in per_point))
    col_keys = sorted({k[3:] for k in per_point})
    fixed = [e for e in dict.fromkeys(r.estimator for r in rows) if e not in ("auto", EQUAL_MIX)]
    palette = ["#424242", "#17becf", "#d62728", "#2ca02c", "#9467bd", "#1f77b4"][:len(fixed)]
    winners = np.full((len(row_keys), len(col_keys)), np.nan)
    ratios = np.full_like(winners, np.nan)
    margins = np.full_like(winners, np.nan)
    for i, rk in enumerate(row_keys):
        for j, ck in enumerate(col_keys):
            point = per_point.get(rk + ck)
            if point:
                winners[i, j] = fixed.index(point["best"])
                margins[i, j] = point["margin"]
                ratios[i, j] = point["auto_ratio"]
    size = (1.1 * len(col_keys) + 4.5, 0.28 * len(row_keys) + 1.8)
    x_labels = [f"γ={g:g}\nN={n}" for g, n in col_keys]
    paths = {"winner": out_dir / "atlas_winner.png", "auto": out_dir / "atlas_auto_ratio.png"}

    figure, axis = plt.subplots(figsize=size)
    axis.imshow(winners, cmap=ListedColormap(palette), norm=BoundaryNorm(np.arange(len(fixed) + 1) - 0.5,
                len(fixed)), aspect="auto")
    for (i, j), margin in np.ndenumerate(margins):
        if np.isfinite(margin):
            axis.text(j, i, f"x{margin:.2f}", ha="center", va="center", fontsize=6, color="white")
    axis.set_xticks(range(len(col_keys)), x_labels, fontsize=7)
    axis.set_yticks(range(len(row_keys)), [_row_label(k) for k in row_keys], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in palette]
    axis.legend(handles, fixed, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    axis.set_title("Lowest-MSE fixed estimator (text: runner-up's MSE / winner's)", fontsize=9)
    figure.tight_layout()
    figure.savefig(paths["winner"], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=size)
    image = axis.imshow(ratios, cmap="RdBu_r", norm=LogNorm(vmin=0.5, vmax=2.0), aspect="auto")
    for (i, j), ratio in np.ndenumerate(ratios):
        if np.isfinite(ratio):
            axis.text(j, i, f"{ratio:.2f}", ha="center", va="center", fontsize=6,
                      color="black" if 0.7 < ratio < 1.4 else "white")
    axis.set_xticks(range(len(col_keys)), x_labels, fontsize=7)
    axis.set_yticks(range(len(row_keys)), [_row_label(k) for k in row_keys], fontsize=7)
    figure.colorbar(image, ax=axis, label="auto MSE / best fixed MSE")
    axis.set_title(f"Selector vs the best fixed estimator at each point (worst {summary['worst_auto_ratio']:.2f})",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(paths["auto"], dpi=120)
    plt.close(figure)
    return paths


def summary_markdown(summary: dict, skipped: Sequence[str] = ()) -> str:
    """The summary table: mean normalised MSE per estimator (auto included), wins, and auto's worst ratio."""
    means = summary["mean_normalised_mse"]
    lines = ["| estimator | mean MSE / ‖∇J‖² over the grid | geometric mean | points won (fixed estimators) |",
             "|---|---|---|---|"]
    for name in sorted(means, key=means.get):
        wins = summary["wins"].get(name)
        label = f"{name} (reference: fixed 1/K average)" if name == EQUAL_MIX else name
        lines.append(f"| {label} | {means[name]:.4g} | {summary['geomean_normalised_mse'][name]:.4g} | "
                     f"{'-' if wins is None else wins} |")
    family, kind, value, gamma, n = summary["worst_point"]
    low, high = summary["worst_interval"]
    lines += ["", f"auto's MSE / best fixed MSE: worst {summary['worst_auto_ratio']:.3f} (90% paired bootstrap "
              f"interval {low:.2f}-{high:.2f}; at {family}, {kind} {value:g}, γ={gamma:g}, N={n}); geometric mean "
              f"{summary['geometric_mean_auto_ratio']:.3f}; above 1.25 at {summary['points_over_1_25']} of "
              f"{summary['n_points']} points ({summary['points_surely_over_1_25']} with the whole interval above); "
              f"below 1 (auto beats every fixed estimator) at {summary['auto_beats_best']}."]
    if not math.isnan(summary["worst_auto_to_equal_mix"]):
        lines += ["", f"Against the data-blind equal mix: auto's MSE is higher at "
                  f"{summary['auto_worse_than_equal_mix']} of {summary['n_points']} points (worst ratio "
                  f"{summary['worst_auto_to_equal_mix']:.2f})."]
    if skipped:
        lines += ["", "Skipped points:", *[f"- {s}" for s in skipped]]
    return "\n".join(lines)


def write_outputs(result: dict, grid: AtlasGrid, out_dir: Path, seconds: float, command: str,
                  figures: bool = True) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    write_csv(rows, out_dir / "atlas.csv")
    summary = summarise(rows)
    paths = draw_maps(rows, out_dir) if figures else {}
    config = dict(dataclasses.asdict(grid), seconds=round(seconds, 1), command=command)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    lines = [
        "# mbpg lab atlas", "", f"Command: `{command}` ({seconds:.0f} s).", "",
        f"{summary['n_points']} grid points: families {', '.join(grid.families)}; models per family "
        f"(tabular: {', '.join(f'{k} {v:g}' for k, v in TABULAR_MODELS)}; LQR: "
        f"{', '.join(f'{k} {v:g}' for k, v in LQR_MODELS)}); discounts {', '.join(map(str, grid.gammas))}; "
        f"N = {', '.join(map(str, grid.sample_sizes))} trajectories per estimate; {grid.n_estimates} independent "
        f"estimates per point. Fixed estimators: {', '.join(grid.candidates)}; auto mixes them "
        "(mbpg.lab.selector). Each point's MSEs come from the same draws (paired); MSEs are divided by "
        "‖∇J‖² at their point before averaging.", "",
        summary_markdown(summary, result["skipped"]), "",
    ]
    lines += [f"![{name}]({path.name})" for name, path in paths.items()]
    lines += ["", "Raw table: [atlas.csv](atlas.csv).", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return summary


# --- `mbpg lab atlas` ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class AtlasConfig:
    """Sweep environment families (gridworld sizes and slip, chain, Garnet, LQR dimensions), model error (a dial and
    learned-from-n-samples), trajectories per estimate N and discount; measure every fixed score-function estimator
    and the adaptive selector (auto) at each point; draw heat maps of the winner and of auto's MSE ratio."""

    full: bool = False
    """The full grid (11 families, 4 discounts, 7 sample sizes, 500 estimates): meant for a sweep on Ray."""
    out: Path = Path("docs/atlas")
    """Output directory: atlas.csv (raw table), report.md (summary table), two heat maps, config.json."""
    families: tuple[str, ...] | None = None
    """Restrict to these families (default: the grid's; names as in mbpg.lab.atlas.FAMILIES, e.g. 'chain 8')."""
    gammas: tuple[float, ...] | None = None
    """Discounts (default: the grid's)."""
    sample_sizes: tuple[int, ...] | None = None
    """Trajectories per estimate N, each >= 2 (default: the grid's)."""
    n_estimates: int | None = None
    """Independent estimates per grid point (default: the grid's, 400 for the default grid)."""
    seed: int = 0
    """Seed of models and draws: same seed, same machine, same numbers."""
    figures: bool = True
    """Draw the heat maps (--no-figures skips matplotlib)."""

    def grid(self) -> AtlasGrid:
        grid = FULL_GRID if self.full else DEFAULT_GRID
        changes = {name: getattr(self, name) for name in ("families", "gammas", "sample_sizes", "n_estimates")
                   if getattr(self, name) is not None}
        grid = dataclasses.replace(grid, **changes)
        unknown = [f for f in grid.families if f not in FAMILIES]
        if unknown or not grid.families:
            raise ValueError(f"unknown atlas families {unknown}; choose from {', '.join(map(repr, FAMILIES))}.")
        if not grid.gammas or not all(0 < g < 1 for g in grid.gammas):
            raise ValueError(f"--gammas must lie in (0, 1); got {list(grid.gammas)}.")
        if not grid.sample_sizes or min(grid.sample_sizes) < 2:
            raise ValueError(f"--sample-sizes must each be >= 2 (the selector estimates variances across the N "
                             f"trajectories of one estimate); got {list(grid.sample_sizes)}.")
        if grid.n_estimates < 2:
            raise ValueError(f"--n-estimates must be at least 2; got {grid.n_estimates}.")
        return grid


def run_atlas(config: AtlasConfig, console=None, grid: AtlasGrid | None = None) -> dict:
    """Run the atlas with a Rich progress bar; write the outputs; print the summary. Returns the summary."""
    import shlex
    import sys

    from rich.console import Console
    from rich.markdown import Markdown
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    grid = grid or config.grid()
    command = "mbpg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mbpg lab atlas"
    n_steps = sum(len(FAMILIES[f].models) for f in grid.families) * len(grid.gammas)
    console.print(f"[bold]mbpg lab atlas[/]: {grid.n_points} grid points ({len(grid.families)} families x models x "
                  f"{len(grid.gammas)} discounts x {len(grid.sample_sizes)} N), {grid.n_estimates} estimates each")
    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("starting", total=n_steps)
        result = run_atlas_grid(grid, config.seed, lambda label: progress.update(task, advance=1, description=label))
    seconds = time.perf_counter() - started
    summary = write_outputs(result, grid, config.out, seconds, command, config.figures)
    console.print(Markdown(summary_markdown(summary, result["skipped"])))
    console.print(f"{summary['n_points']} points in {seconds:.0f} s; outputs in {config.out}")
    return summary
