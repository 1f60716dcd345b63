"""Time one evaluation of PILCO's planned cost and its gradient (the unit of every policy search) at GP sizes N.

    taskset -c 0 .venv/bin/python benchmarks/bench_pilco_eval.py 240 320     # pinned to one core
    .venv/bin/python benchmarks/bench_pilco_eval.py 240 320                  # unpinned (XLA uses every core)

The GP is fitted (30 L-BFGS iterations) to N transitions from random CartPoleSwingUp-v0 episodes, the policy is
PILCO's initial RBF network, H = 40. Prints the wall time of each of `--repeats` evaluations after a compiling one,
so that the spread shows: run it beside another busy process, unpinned and pinned, to see why bench_pilco.py pins
its workers (on 2 cores here: 0.6-8.9 s per N = 320 evaluation unpinned beside another job, 0.50-0.53 s pinned
beside two busy loops).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import numpy as np

from mbpg.algos import pilco as P
from mbpg.envs import make
from mbpg.models.gp import fit_gp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", type=int, nargs="+", help="GP training-set sizes N (at most 360)")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    episodes = 9
    if max(args.sizes) > 40 * episodes or min(args.sizes) < 2:
        raise ValueError(f"sizes must lie in [2, {40 * episodes}]; got {args.sizes}.")
    with jax.enable_x64(True):
        env = make("CartPoleSwingUp-v0")
        task = P.cartpole_task(env)
        policy = P.init_policy(task, P.PILCOConfig(), jax.random.key(0))
        data = [P.transitions(task, *P.rollout(env, task, policy, jax.random.key(10 + i), 40, True))
                for i in range(episodes)]
        inputs = np.concatenate([np.asarray(x) for x, _ in data])
        targets = np.concatenate([np.asarray(y) for _, y in data])
        params, static = eqx.partition(policy, eqx.is_array)
        for n in args.sizes:
            gp = fit_gp(inputs[:n], targets[:n], pad_to=n, maxiter=30)
            jax.block_until_ready(P._planned_cost_and_grad(params, static, task, gp, 40))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                jax.block_until_ready(P._planned_cost_and_grad(params, static, task, gp, 40))
                times.append(time.perf_counter() - start)
            print(f"N = {n}: cost + gradient evaluations [ms]: {[round(1000 * t) for t in times]}", flush=True)


if __name__ == "__main__":
    main()
