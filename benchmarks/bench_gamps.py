"""GAMPS vs maximum likelihood with the same misspecified model class, on the two-area gridworld.

(a) Gradient error against the exact gradient, GAMPS-weighted vs unweighted fit on the *same* trajectories
    (paired), mean and 95% interval over seeds, for several N and two policies; plus the negative control
    (regions that a random walk visits early and late alike: right columns slip 0.6), where no gain is expected.
(b) Learning curves (exact return vs iterations) of GAMPS, ML-model MVG and GPOMDP over seeds.
Writes docs/gamps/gamps_gridworld.png (both panels), docs/gamps/gradient_error.csv and
docs/gamps/learning_curves.csv, and prints the tables.

    .venv/bin/python benchmarks/bench_gamps.py [--seeds 50] [--curve-seeds 10] [--iterations 40]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import jax
import numpy as np

from mbpg.algos.gamps import GAMPSConfig
from mbpg.envs import gridworld
from mbpg.lab.gradient_aware import (
    gradient_error_study,
    learning_curve,
    mean_ci,
    random_logits,
    summarise_errors,
    two_area_gridworld,
)
from mbpg.models.gradient_aware import DisplacementModel

OUT = Path(__file__).resolve().parent.parent / "docs" / "gamps"


def control_gridworld():
    """The earlier spike's setup: 5x5, right two columns slip 0.6, same displacement model class."""
    slip = np.zeros((5, 5))
    slip[:, 3:] = 0.6
    return gridworld(5, 5, slip=slip, gamma=0.9), DisplacementModel(5, 5, fixed=(24,))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--curve-seeds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=5.0)
    parser.add_argument("--curve-trajectories", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env, model_class = two_area_gridworld()
    control_env, control_class = control_gridworld()
    policies = {"uniform": np.zeros((env.n_states, env.n_actions)), "random": random_logits(env)}

    started = time.perf_counter()
    error_rows = []
    for setting, (e, m) in (("two-area", (env, model_class)), ("control", (control_env, control_class))):
        for name, logits in policies.items():
            rows = gradient_error_study(e, m, logits, args.sample_sizes, args.seeds, seed=0)
            for summary in summarise_errors(rows):
                error_rows.append({"setting": setting, "policy": name, **summary})
    error_seconds = time.perf_counter() - started
    with open(args.out / "gradient_error.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(error_rows[0]))
        writer.writeheader()
        writer.writerows(error_rows)
    print(f"(a) gradient error ||g_hat - grad J|| (mean +- 95% CI over {args.seeds} seeds), {error_seconds:.0f} s")
    print(f"{'setting':9s} {'policy':8s} {'N':>3s} {'|grad J|':>9s} {'ML':>17s} {'GAMPS':>17s} "
          f"{'ML - GAMPS (paired)':>22s} {'GAMPS wins':>10s} {'true-Q floor':>13s}")
    for r in error_rows:
        print(f"{r['setting']:9s} {r['policy']:8s} {r['n_trajectories']:3d} {r['gradient_norm']:9.4f} "
              f"{r['error_ml']:8.4f} +- {r['error_ml_ci']:.4f} {r['error_gamps']:8.4f} +- {r['error_gamps_ci']:.4f} "
              f"{r['paired_difference']:+11.4f} +- {r['paired_difference_ci']:.4f} {r['gamps_wins']:10.0%} "
              f"{r['error_true_model']:13.4f}")

    started = time.perf_counter()
    curves = {}
    for gradient in ("gamps", "ml", "gpomdp"):
        config = GAMPSConfig(iterations=args.iterations, n_trajectories=args.curve_trajectories,
                             learning_rate=args.learning_rate, gradient=gradient)
        runs = [learning_curve(env, model_class, config, jax.random.key(1000 + s)) for s in range(args.curve_seeds)]
        curves[gradient] = {k: np.array([run[k] for run in runs]) for k in ("return", "gradient_error", "cosine")}
    curve_seconds = time.perf_counter() - started
    with open(args.out / "learning_curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gradient", "seed", "iteration", "exact_return", "gradient_error", "cosine"])
        for gradient, data in curves.items():
            for s in range(args.curve_seeds):
                for k in range(args.iterations + 1):
                    err = data["gradient_error"][s, k] if k < args.iterations else ""
                    cos = data["cosine"][s, k] if k < args.iterations else ""
                    writer.writerow([gradient, s, k, data["return"][s, k], err, cos])
    print(f"\n(b) exact return J (mean +- 95% CI over {args.curve_seeds} seeds; N = {args.curve_trajectories} "
          f"per iteration, step {args.learning_rate}), {curve_seconds:.0f} s")
    checkpoints = sorted({0, 5, 10, 20, args.iterations // 2, args.iterations} & set(range(args.iterations + 1)))
    print(f"{'gradient':8s} " + " ".join(f"{'it ' + str(k):>15s}" for k in checkpoints) + f" {'mean cos':>9s}")
    for gradient, data in curves.items():
        cells = [f"{m:.3f} +- {h:.3f}" for m, h in (mean_ci(data["return"][:, k]) for k in checkpoints)]
        print(f"{gradient:8s} " + " ".join(f"{c:>15s}" for c in cells) + f" {data['cosine'].mean():9.3f}")
    draw(error_rows, curves, args)


def draw(error_rows, curves, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"ml": ("tab:blue", "maximum likelihood"), "gamps": ("tab:red", "GAMPS weights")}
    for policy, marker in (("random", "o"), ("uniform", "s")):
        rows = [r for r in error_rows if r["setting"] == "two-area" and r["policy"] == policy]
        ns = [r["n_trajectories"] for r in rows]
        for key, (color, label) in styles.items():
            left.errorbar(ns, [r[f"error_{key}"] for r in rows], yerr=[r[f"error_{key}_ci"] for r in rows],
                          color=color, marker=marker, capsize=3, linestyle="-" if policy == "random" else "--",
                          label=f"{label}, {policy} policy")
    left.set_xscale("log")
    left.set_xlabel("real trajectories N")
    left.set_ylabel("||g_hat - grad J||")
    left.set_title(f"(a) gradient error, same model class ({args.seeds} seeds, 95% CI)")
    left.legend(fontsize=8)
    colors = {"gamps": "tab:red", "ml": "tab:blue", "gpomdp": "tab:gray"}
    labels = {"gamps": "GAMPS", "ml": "ML-model MVG", "gpomdp": "GPOMDP (model-free)"}
    for gradient, data in curves.items():
        returns = data["return"]
        mean = returns.mean(0)
        half = 1.96 * returns.std(0, ddof=1) / np.sqrt(returns.shape[0])
        steps = np.arange(returns.shape[1])
        right.plot(steps, mean, color=colors[gradient], label=labels[gradient])
        right.fill_between(steps, mean - half, mean + half, color=colors[gradient], alpha=0.2)
    right.set_xlabel("iteration")
    right.set_ylabel("exact return J")
    right.set_title(f"(b) learning curves ({args.curve_seeds} seeds, 95% CI)")
    right.legend(fontsize=8)
    fig.suptitle("Two-area gridworld (upper 3 rows move the opposite way), shared displacement model")
    fig.tight_layout()
    fig.savefig(args.out / "gamps_gridworld.png", dpi=120)
    print(f"\nfigure: {args.out / 'gamps_gridworld.png'}")


if __name__ == "__main__":
    main()
