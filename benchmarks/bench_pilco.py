"""PILCO on CartPoleSwingUp-v0: episodes of 4 s until the first successful swing-up and balance, per seed.

    .venv/bin/python benchmarks/bench_pilco.py --seeds 0 1 2 3 4 --out docs/pilco

Success (see `mbpg.algos.pilco.is_success`): over the last second of a 4 s episode every state has the pole tip
within 0.15 m of the upright tip above the track's centre. Episode 1 is the random one; at most 15 episodes
(60 s of interaction) per seed. Writes, in --out:
  episodes.csv    one row per seed and episode: real and predicted total cost, success, wall seconds
                  (appended after every episode, so an interrupted run keeps what it measured)
  summary.md      episodes-to-success per seed
  pilco_cost.png  predicted (mean +- 2 sd) vs real cost per time step, latest episode of the first seed
                  (redrawn after every episode of that seed)
  seed<S>_episode<E>.npz  real and predicted cost per step and the real states of every episode
Wall times on a shared CPU are not benchmark figures.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import jax
import numpy as np

from mbpg.algos.pilco import PILCOConfig, train_pilco


def plot_cost(episode, path: Path, seed: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = 0.1 * np.arange(1, len(episode.real_cost) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    m, s = episode.predicted_mean, episode.predicted_std
    ax.fill_between(t, np.clip(m - 2 * s, 0, 1), np.clip(m + 2 * s, 0, 1), alpha=0.3, label="predicted ± 2 sd")
    ax.plot(t, m, label="predicted mean")
    ax.plot(t, episode.real_cost, "k.-", label="real")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("cost 1 - exp(-d² / (2·0.25²))")
    ax.set_title(f"PILCO cart-pole swing-up, seed {seed}, episode {episode.episode}")
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--episodes", type=int, default=15, help="episodes per seed, the random one included")
    parser.add_argument("--policy-maxiter", type=int, default=PILCOConfig.policy_maxiter)
    parser.add_argument("--out", type=Path, default=Path("docs/pilco"))
    args = parser.parse_args()
    if args.episodes < 2:
        raise ValueError(f"--episodes must be >= 2 (one random, then at least one learned); got {args.episodes}.")
    args.out.mkdir(parents=True, exist_ok=True)
    config = PILCOConfig(n_iterations=args.episodes - 1, stop_on_success=True, policy_maxiter=args.policy_maxiter)
    (args.out / "config.json").write_text(json.dumps({**vars(config), "seeds": args.seeds}, indent=2))
    csv_path = args.out / "episodes.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerow(["seed", "episode", "real_cost", "predicted_cost", "last_second_real_cost",
                                "success", "seconds"])
    results = {}
    for seed in args.seeds:
        def progress(ep, seed=seed):
            row = [seed, ep.episode, f"{ep.real_cost.sum():.3f}", f"{np.sum(ep.predicted_mean):.3f}",
                   f"{ep.real_cost[-10:].mean():.3f}", int(ep.success), f"{ep.seconds:.1f}"]
            with open(csv_path, "a", newline="") as f:
                csv.writer(f).writerow(row)
            np.savez(args.out / f"seed{seed}_episode{ep.episode}.npz", real_cost=ep.real_cost,
                     predicted_mean=ep.predicted_mean, predicted_std=ep.predicted_std, states=ep.states)
            if seed == args.seeds[0] and ep.episode > 1:
                plot_cost(ep, args.out / "pilco_cost.png", seed)
            print(" ".join(map(str, row)), flush=True)

        _, _, history = train_pilco(config, jax.random.key(seed), progress)
        success = next((ep.episode for ep in history if ep.success), None)
        results[seed] = success
    lines = ["| seed | episodes to success (of at most %d) |" % args.episodes, "|---|---|"]
    lines += [f"| {s} | {e if e is not None else 'not solved'} |" for s, e in results.items()]
    solved = sum(e is not None for e in results.values())
    lines.append(f"\nSolved on {solved} of {len(results)} seeds.")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
