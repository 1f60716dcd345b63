"""GAMPS vs unweighted ML (same model class) vs GPOMDP on Minigolf-v0, equal real-episode budgets.

For each stop-point model class (`--models`: 'travel', the 2-parameter x - y = a^2 q, and 'linear', y linear in
[x, a, 1]; see mbpg.algos.gamps_continuous) GAMPS and ML fit the same class; GPOMDP uses no model. Every method
collects `--episodes` real episodes per iteration; the curve is the mean discounted return of `eval_episodes`
separate evaluation episodes before each update (never used for learning), mean and 95% normal interval over
seeds. A grid over the policy parameters gives the best return this policy class reaches, for scale.
Writes docs/gamps/gamps_minigolf.png and docs/gamps/minigolf_learning_curves.csv and prints a table.

    .venv/bin/python benchmarks/bench_gamps_minigolf.py [--seeds 10] [--iterations 60] [--models travel linear]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.algos.gamps_continuous import (
    MODELS,
    ContinuousGAMPSConfig,
    PuttPolicy,
    collect,
    discounted_returns,
    make_train,
)
from mbpg.envs.minigolf import Minigolf
from mbpg.lab.gradient_aware import mean_ci

OUT = Path(__file__).resolve().parent.parent / "docs" / "gamps"
LABELS = {"gamps": "GAMPS (weighted LS)", "ml": "ML (unweighted LS)", "gpomdp": "GPOMDP (model-free)"}


def best_on_grid(env, std: float, n_episodes: int = 2000) -> tuple[float, tuple[float, float]]:
    policy = PuttPolicy(std)
    grid = [(a, b) for a in np.linspace(0.6, 1.6, 21) for b in np.linspace(-1.0, 1.0, 11)]

    @jax.jit
    def value(theta, key):
        return discounted_returns(collect(env, policy, theta, key, n_episodes)).mean()

    values = [float(value(jnp.asarray(t, jnp.float32), jax.random.key(1))) for t in grid]
    best = int(np.argmax(values))
    return values[best], grid[best]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = Minigolf()
    keys = jax.random.split(jax.random.key(0), args.seeds)
    runs = [(model, gradient) for model in args.models for gradient in ("gamps", "ml")] + [(None, "gpomdp")]
    curves = {}
    for model, gradient in runs:
        config = ContinuousGAMPSConfig(iterations=args.iterations, n_episodes=args.episodes, gradient=gradient,
                                       learning_rate=args.learning_rate, model=model or MODELS[0])
        started = time.perf_counter()
        _, metrics = jax.jit(jax.vmap(make_train(env, config)))(keys)
        curves[model, gradient] = np.asarray(metrics["eval_return"], np.float64)  # [seeds, iterations]
        noise = f"; fitted noise std, mean over seeds and iterations: {float(np.mean(metrics['noise'])):.3g}" \
            if model else ""
        print(f"{gradient} ({model or 'no'} model): {time.perf_counter() - started:.0f} s (compile included){noise}")
    best, theta = best_on_grid(env, ContinuousGAMPSConfig().policy_std)

    rows = []
    for (model, gradient), curve in curves.items():
        for it in range(curve.shape[1]):
            mean, ci = mean_ci(curve[:, it])
            rows.append({"model": model or "none", "gradient": gradient, "iteration": it,
                         "real_episodes": it * args.episodes, "return_mean": mean, "return_ci95": ci,
                         **{f"seed{s}": curve[s, it] for s in range(curve.shape[0])}})
    with open(args.out / "minigolf_learning_curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    marks = sorted({0, 10, 20, 40, args.iterations - 1} & set(range(args.iterations)))
    print(f"\nMinigolf-v0, discounted return (mean +- 95% CI over {args.seeds} seeds), {args.episodes} real "
          f"episodes per iteration; best on a theta grid: {best:.2f} at theta = {theta}")
    print(f"{'gradient (model)':32s}" + "".join(f"{'it ' + str(m):>17s}" for m in marks) + f"{'mean of last 10':>18s}")
    for (model, gradient), curve in curves.items():
        cells = "".join("{:>9.2f} +- {:<5.2f}".format(*mean_ci(curve[:, m])) for m in marks)
        last = mean_ci(curve[:, -10:].mean(1))
        print(f"{LABELS[gradient] + ' (' + (model or 'none') + ')':32s}{cells}{last[0]:>10.2f} +- {last[1]:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.models), figsize=(6.5 * len(args.models), 4.2), squeeze=False,
                             sharey=True)
    episodes = np.arange(args.iterations) * args.episodes
    for axis, model in zip(axes[0], args.models):
        for key in ((model, "gamps"), (model, "ml"), (None, "gpomdp")):
            curve = curves[key]
            mean = curve.mean(0)
            half = 1.96 * curve.std(0, ddof=1) / np.sqrt(curve.shape[0])
            axis.plot(episodes, mean, label=LABELS[key[1]])
            axis.fill_between(episodes, mean - half, mean + half, alpha=0.2)
        axis.axhline(best, color="gray", ls="--", lw=1, label="best on a parameter grid")
        axis.set_xlabel("real episodes")
        axis.set_title(f"'{model}' stop-point model")
        axis.legend(fontsize=8)
    axes[0, 0].set_ylabel("discounted return")
    fig.suptitle(f"Minigolf-v0: GAMPS vs ML on the same model class, {args.seeds} seeds (mean, 95% CI)")
    fig.tight_layout()
    fig.savefig(args.out / "gamps_minigolf.png", dpi=120)
    print(f"wrote {args.out / 'gamps_minigolf.png'} and {args.out / 'minigolf_learning_curves.csv'}")


if __name__ == "__main__":
    main()
