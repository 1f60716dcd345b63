"""What a lab run leaves behind: the raw table (CSV), figures, and a Markdown report that ties them together."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mbpg.lab.quality import QualityRow, best_per_point, mse_rank

FIGURES = {
    "mse": "mse_vs_model_error.png",
    "decomposition": "bias_variance.png",
    "cosine": "cosine_vs_n.png",
}
# One colour per estimator across every figure; line style tells the gradient type.
COLOURS = {"reinforce": "#9e9e9e", "gpomdp": "#424242", "fmg": "#d62728", "mvg-mc": "#1f77b4",
           "mvg-dp": "#17becf", "mvg-td": "#2ca02c", "svg": "#9467bd", "auto": "#ff7f0e"}
STYLES = {"MFG": ":", "FMG": "--", "MVG": "-", "AUTO": "-."}  # AUTO: the adaptive selector (mbpg.lab.selector)


def write_csv(rows: Sequence, path: Path, row_class: type = QualityRow) -> None:
    """Rows of a flat dataclass (QualityRow, the atlas's AtlasRow) as a CSV with one column per field."""
    fields = [f.name for f in dataclasses.fields(row_class)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))


def read_csv(path: Path, row_class: type = QualityRow) -> list:
    """The inverse of `write_csv` (fields annotated str, int or float)."""
    casts = {"str": str, "int": int, "float": float}
    types = {f.name: casts[f.type] for f in dataclasses.fields(row_class)}
    with open(path, newline="") as handle:
        return [row_class(**{k: types[k](v) for k, v in record.items()}) for record in csv.DictReader(handle)]


def _axis_values(rows, attribute):
    return sorted({getattr(r, attribute) for r in rows})


def _series(rows, estimator, n_trajectories, attribute="model_error", metric="mse"):
    chosen = sorted((r for r in rows if r.estimator == estimator and r.n_trajectories == n_trajectories),
                    key=lambda r: getattr(r, attribute))
    return [getattr(r, attribute) for r in chosen], [getattr(r, metric) for r in chosen]


def draw_figures(rows: Sequence[QualityRow], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = list(dict.fromkeys(r.estimator for r in rows))
    types = {r.estimator: r.gradient_type for r in rows}
    sizes = _axis_values(rows, "n_trajectories")
    errors = _axis_values(rows, "model_error")
    error_label = f"model error ({rows[0].error_kind})"
    learned = rows[0].error_kind == "learned"
    paths = {name: out_dir / file for name, file in FIGURES.items()}

    def style(name):
        return dict(color=COLOURS.get(name), linestyle=STYLES[types[name]], marker="o", markersize=3,
                    label=f"{name} ({types[name]})")

    def set_error_axis(axis):
        if learned:
            axis.set_xscale("log")
            axis.set_xlabel("samples per pair (learned model)" if rows[0].model_distance <= 1 else error_label)
        else:
            positive = [e for e in errors if e > 0]
            axis.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
            axis.set_xlabel(error_label)
        axis.set_xticks(errors, [f"{e:g}" for e in errors], fontsize=7)
        axis.minorticks_off()

    figure, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), sharey=True, squeeze=False)
    for axis, n in zip(axes[0], sizes):
        for name in estimators:
            x, y = _series(rows, name, n)
            axis.plot(x, y, **style(name))
        axis.set_yscale("log")
        set_error_axis(axis)
        axis.set_title(f"N = {n} trajectories")
        axis.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("MSE to the true gradient")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle("Gradient MSE vs model error")
    figure.tight_layout()
    figure.savefig(paths["mse"], dpi=120)
    plt.close(figure)

    n_mid = sizes[len(sizes) // 2]
    figure, axes = plt.subplots(1, len(errors), figsize=(2.6 * len(errors) + 1, 3.6), sharey=True, squeeze=False)
    for axis, error in zip(axes[0], errors):
        chosen = [next(r for r in rows if r.estimator == e and r.model_error == error and r.n_trajectories == n_mid)
                  for e in estimators]
        positions = np.arange(len(chosen))
        bias_sq = np.array([r.bias**2 for r in chosen])
        variance = np.array([r.variance for r in chosen])
        axis.bar(positions, bias_sq, color="#d62728", label="bias$^2$")
        axis.bar(positions, variance, bottom=bias_sq, color="#1f77b4", label="variance")
        axis.set_xticks(positions, estimators, rotation=60, fontsize=7)
        axis.set_yscale("log")
        axis.set_title(f"{error_label.split(' (')[0]} = {error:g}", fontsize=9)
    axes[0][0].set_ylabel(f"bias$^2$ + variance (N = {n_mid})")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths["decomposition"], dpi=120)
    plt.close(figure)

    error_mid = errors[len(errors) // 2]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name in estimators:
        chosen = sorted((r for r in rows if r.estimator == name and r.model_error == error_mid),
                        key=lambda r: r.n_trajectories)
        axis.plot([r.n_trajectories for r in chosen], [r.cosine for r in chosen], **style(name))
    axis.set_xscale("log")
    axis.set_xlabel("trajectories per estimate N")
    axis.set_ylabel("mean cosine to the true gradient")
    axis.set_title(f"Direction accuracy at model error {error_mid:g}")
    axis.axhline(1.0, color="k", linewidth=0.5)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths["cosine"], dpi=120)
    plt.close(figure)
    return paths


def winners_table(rows: Sequence[QualityRow]) -> list[list[str]]:
    """Rows: model error; columns: N; cells: the lowest-MSE estimator and its MSE margin over the runner-up."""
    best = best_per_point(rows)
    table = []
    for error in _axis_values(rows, "model_error"):
        line = [f"{error:g}"]
        for n in _axis_values(rows, "n_trajectories"):
            point = [r for r in rows if r.model_error == error and r.n_trajectories == n]
            ordered = sorted(point, key=lambda r: mse_rank(r.mse))
            if not np.isfinite(ordered[0].mse):
                line.append("n/a (no finite MSE)")
                continue
            runner_up = mse_rank(ordered[1].mse) if len(ordered) > 1 else float("inf")
            margin = runner_up / ordered[0].mse if ordered[0].mse > 0 else float("inf")
            line.append(f"{best[(error, n)].estimator} (x{margin:.2f})")
        table.append(line)
    return table


def write_report(rows: Sequence[QualityRow], config: dict, out_dir: Path, figures: dict[str, Path] | None,
                 command: str) -> Path:
    sizes = _axis_values(rows, "n_trajectories")
    lines = [
        f"# mbpg lab: {config['scenario']}",
        "",
        config.get("description", ""),
        "",
        f"Command: `{command}`",
        "",
        "Every number below is measured against the exact MFG gradient (float64 oracle) from "
        f"{rows[0].n_estimates} independent estimates per grid point. MSE = bias^2 + variance; population bias is "
        "the distance of the estimator type's exact population gradient (FMG or MVG on the model, infinite "
        "horizon) from the truth; nan where there is no closed form (auto, svg, uim). `bias` is measured from the "
        "mean of those estimates, so an unbiased estimator still shows about sqrt(variance / estimates); the "
        "winners' margins are point estimates, not tested differences (close ones can change with --seed).",
        "",
        "## Which gradient wins (lowest MSE; in brackets how many times larger the runner-up's MSE is)",
        "",
        "| model error | " + " | ".join(f"N = {n}" for n in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    lines += ["| " + " | ".join(line) + " |" for line in winners_table(rows)]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({path.name})" for name, path in figures.items()]
    lines += ["", "## All grid points", "",
              "| estimator | type | model error | distance | N | bias | variance | MSE | cosine | rel. error | "
              "pop. bias | ms/estimate |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r.estimator} | {r.gradient_type} | {r.model_error:g} | {r.model_distance:.3g} | "
                     f"{r.n_trajectories} | {r.bias:.3g} | {r.variance:.3g} | {r.mse:.3g} | {r.cosine:.3f} | "
                     f"{r.relative_error:.3g} | {r.population_bias:.3g} | {1e3 * r.seconds_per_estimate:.3g} |")
    lines += ["", "## Configuration", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
