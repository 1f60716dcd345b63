"""PILCO on CartPoleSwingUp-v0: episodes of 4 s until the first successful swing-up and balance, per seed.

    .venv/bin/python benchmarks/bench_pilco.py --seeds 0 1 2 3 4 --workers 2 --out docs/pilco

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

Seeds run in `--workers` processes (default: one per core), each pinned to its own core before JAX starts. XLA's
CPU thread pool sizes itself from the process's CPU affinity, so a pinned worker computes single-threaded. Why it
matters: unpinned, XLA splits every loop of the propagation across both cores and waits at each barrier for the
slower one, and any other job on the machine (even at nice 19) then makes an evaluation 2-15x slower (measured
here with benchmarks/bench_pilco_eval.py: the same N = 320 evaluation took 0.6-8.9 s unpinned beside another job,
0.50-0.53 s pinned beside two).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# No JAX import at module level: a worker must pin itself to its core before JAX creates its thread pool.


def _pin_worker(cores):
    os.sched_setaffinity(0, {cores.get()})


def run_seed(seed: int, config_fields: dict, out: Path, plot_seed: int):
    """One seed until success or the episode budget; appends a CSV row per episode (one write each, O_APPEND, so
    workers can share the file). Returns the episode of the first success, or None."""
    import jax

    from mbpg.algos.pilco import PILCOConfig, train_pilco
    from mbpg.train.pilco import episode_metrics, plot_cost

    csv_path = out / "episodes.csv"

    def progress(ep):
        m = episode_metrics(ep, len(ep.real_cost))
        row = [seed, ep.episode, f"{m['real_cost']:.3f}", f"{m['predicted_cost']:.3f}",
               f"{m['last_second_real_cost']:.3f}", int(m["success"]), f"{m['seconds']:.1f}"]
        with open(csv_path, "a") as f:
            f.write(",".join(map(str, row)) + "\n")
        np.savez(out / f"seed{seed}_episode{ep.episode}.npz", real_cost=ep.real_cost,
                 predicted_mean=ep.predicted_mean, predicted_std=ep.predicted_std, states=ep.states)
        if seed == plot_seed and ep.episode > 1:
            plot_cost(ep, out / "pilco_cost.png", f"PILCO cart-pole swing-up, seed {seed}, episode {ep.episode}")
        print(" ".join(map(str, row)), flush=True)

    _, _, history = train_pilco(PILCOConfig(**config_fields), jax.random.key(seed), progress)
    return next((ep.episode for ep in history if ep.success), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--episodes", type=int, default=15, help="episodes per seed, the random one included")
    parser.add_argument("--policy-maxiter", type=int, default=None, help="L-BFGS iterations per policy search "
                        "(default: PILCOConfig's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="seeds run at once, each in a process pinned to one core (default: one per core)")
    parser.add_argument("--out", type=Path, default=Path("docs/pilco"))
    args = parser.parse_args()
    if args.episodes < 2:
        raise ValueError(f"--episodes must be >= 2 (one random, then at least one learned); got {args.episodes}.")
    cores = sorted(os.sched_getaffinity(0))
    workers = min(len(args.seeds), len(cores)) if args.workers is None else args.workers
    if not 1 <= workers <= len(cores):
        raise ValueError(f"--workers must be between 1 and the {len(cores)} cores this process may use; got "
                         f"{args.workers}.")
    args.out.mkdir(parents=True, exist_ok=True)
    fields = {"n_iterations": args.episodes - 1, "stop_on_success": True}
    if args.policy_maxiter is not None:
        fields["policy_maxiter"] = args.policy_maxiter
    from mbpg.algos.pilco import PILCOConfig  # the parent never runs JAX code; importing the module is enough

    config = PILCOConfig(**fields)
    (args.out / "config.json").write_text(json.dumps({**vars(config), "seeds": args.seeds, "workers": workers},
                                                     indent=2))
    with open(args.out / "episodes.csv", "w", newline="") as f:
        csv.writer(f).writerow(["seed", "episode", "real_cost", "predicted_cost", "last_second_real_cost",
                                "success", "seconds"])
    context = multiprocessing.get_context("spawn")
    core_queue = context.Queue()
    for core in cores[:workers]:
        core_queue.put(core)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_pin_worker, initargs=(core_queue,)) as pool:
        futures = {seed: pool.submit(run_seed, seed, fields, args.out, args.seeds[0]) for seed in args.seeds}
        results = {seed: future.result() for seed, future in futures.items()}
    lines = ["| seed | episodes to success (of at most %d) |" % args.episodes, "|---|---|"]
    lines += [f"| {s} | {e if e is not None else 'not solved'} |" for s, e in results.items()]
    solved = sum(e is not None for e in results.values())
    lines.append(f"\nSolved on {solved} of {len(results)} seeds.")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
