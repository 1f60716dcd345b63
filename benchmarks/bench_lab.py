"""Benchmark: the default lab sweep, and estimator draws per second, vmapped vs a Python loop.

The baseline is measured in the same run: a Python loop calling a jitted single-draw function once per key,
which is what a user would write without `sample_gradients`. The ratio is the figure to report.

    .venv/bin/python benchmarks/bench_lab.py            # everything (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_lab.py --no-sweep # draws per second only
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from rich.console import Console
from rich.table import Table

from mbpg.gradients import EstimatorOptions, draw_gradient, get_estimator
from mbpg.lab.run import LabConfig, run_lab
from mbpg.lab.sampling import SamplerSpec, compile_sampler
from mbpg.lab.scenarios import SCENARIOS
from mbpg.lab.quality import make_model
from mbpg.policies import policy_for
from mbpg.values import effective_horizon


def time_best(function, repeats: int) -> float:
    """Best of `repeats` wall-clock timings (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function())
        best = min(best, time.perf_counter() - start)
    return best


def draws_per_second(scenario_name: str, estimator: str, n_trajectories: int, n_estimates: int, repeats: int):
    scenario = SCENARIOS[scenario_name]
    env = scenario.make_env()
    params = scenario.make_params(env)
    model = make_model(env, "dial", 0.1, jax.random.key(0), params) if get_estimator(estimator).needs_model else None
    horizon = effective_horizon(env.gamma)
    options = EstimatorOptions()
    spec = SamplerSpec(estimator, n_trajectories, horizon, n_estimates, options)
    vmapped = compile_sampler(env, model, params, spec)
    key = jax.random.key(1)
    vmapped_seconds = time_best(lambda: vmapped(env, model, params, key), repeats)

    single = jax.jit(lambda env, model, params, key: draw_gradient(
        get_estimator(estimator), env, model, policy_for(env), params, key, n_trajectories, horizon, options))
    keys = list(jax.random.split(key, n_estimates))
    jparams = jnp.asarray(params)
    jax.block_until_ready(single(env, model, jparams, keys[0]))  # compile outside the timing

    def loop():
        return [single(env, model, jparams, k) for k in keys]

    loop_seconds = time_best(loop, repeats)
    return n_estimates / vmapped_seconds, n_estimates / loop_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true", help="skip timing the default lab sweep")
    parser.add_argument("--n-estimates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    console.print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}),"
                  f" {len(jax.devices())} device(s)")

    table = Table(title=f"Estimator draws per second ({args.n_estimates} draws, best of {args.repeats})")
    for column in ("scenario", "estimator", "N", "vmapped draws/s", "Python-loop draws/s", "vmapped / loop"):
        table.add_column(column, justify="right" if column not in ("scenario", "estimator") else "left")
    cases = [("gridworld", e, 4) for e in SCENARIOS["gridworld"].estimators] + \
            [("lqr", e, 4) for e in ("gpomdp", "mvg-dp", "svg")]
    for scenario, estimator, n in cases:
        fast, slow = draws_per_second(scenario, estimator, n, args.n_estimates, args.repeats)
        table.add_row(scenario, estimator, str(n), f"{fast:,.0f}", f"{slow:,.0f}", f"{fast / slow:.1f}x")
    console.print(table)

    if not args.no_sweep:
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            run_lab(LabConfig(out=Path(directory) / "lab", figures=False), console=Console(quiet=True))
            console.print(f"default lab sweep (mbpg lab gridworld, without figures): "
                          f"{time.perf_counter() - start:.1f} s wall-clock, compilation included")


if __name__ == "__main__":
    main()
