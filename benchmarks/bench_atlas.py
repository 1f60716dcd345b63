"""Measure the selector precisely at single atlas points, with many estimates (the atlas uses 400 per point).

The known hard case: a 2-parameter LQR (double integrator, gamma 0.9) whose model is (A, B) off by 10% in one
particular random direction. There FMG has the lowest MSE, all three candidates are nearly unbiased, and the
selector's weights fit part of MFG's noise (with P = 2 parameters, K = 3 candidates span the whole space), so
auto's MSE is well above FMG's. Run: .venv/bin/python benchmarks/bench_atlas.py [--n-estimates 3000]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.lab.atlas import FAMILIES, _paired_draws, _ratio_interval, _squared_errors
from mbpg.lab.exact import exact_gradient
from mbpg.lab.quality import make_model
from mbpg.lab.selector import AutoEstimator
from mbpg.policies import policy_for
from mbpg.values import effective_horizon

# (family, gamma, error kind, value, model key as a path of fold_ins from key(0), sizes)
HARD_POINT = ("lqr 2-d", 0.9, "dial", 0.1, (4, 900, 2), (4, 16, 64))


def measure(family, gamma, kind, value, key_path, sizes, n_estimates, seed):
    env = FAMILIES[family].make_env(gamma)
    params = FAMILIES[family].params(env)
    model_key = jax.random.key(0)
    for step in key_path:
        model_key = jax.random.fold_in(model_key, step)
    model = make_model(env, kind, value, model_key, params)
    truth = np.asarray(exact_gradient(env, params))
    auto = AutoEstimator()
    estimates, mixed, weights = jax.device_get(_paired_draws(
        env, model, jnp.asarray(params, jnp.float32), jax.random.key(seed), auto=auto, policy=policy_for(env),
        sample_sizes=sizes, horizon=effective_horizon(gamma), n_estimates=n_estimates))
    for level, n in enumerate(sizes):
        errors = np.stack([_squared_errors(estimates[:, level, k], truth) for k in range(len(auto.candidates))]
                          + [_squared_errors(mixed[:, level], truth)])
        mse = errors.mean(1)
        low, high = _ratio_interval(errors, jax.random.key(seed))
        print(f"{family} gamma={gamma} {kind}={value} N={n}: MSE " +
              ", ".join(f"{name} {m:.4g}" for name, m in zip(auto.candidates + ("auto",), mse)) +
              f" | auto / best = {mse[-1] / mse[:-1].min():.3f} (90% CI {low:.2f}-{high:.2f}); mean weights "
              f"{[round(float(w), 3) for w in weights[:, level].mean(0)]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-estimates", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    start = time.perf_counter()
    measure(*HARD_POINT, args.n_estimates, args.seed)
    print(f"{time.perf_counter() - start:.1f} s")
