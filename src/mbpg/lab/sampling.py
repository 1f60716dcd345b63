"""Many independent draws of a gradient estimator as one compiled, vmapped call."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.gradients import EstimatorOptions, check_estimator_inputs, draw_gradient
from mbpg.gradients.estimators import check_baseline
from mbpg.lab.exact import check_params
from mbpg.lab.selector import AutoEstimator, lab_estimator
from mbpg.policies import policy_for
from mbpg.values import effective_horizon

# Parallel rollout steps one vmapped batch may hold; larger batches of estimates run in sequence (lax.map).
MAX_PARALLEL_STEPS = 4_000_000


@functools.partial(jax.jit, static_argnames=("estimator", "policy", "n_trajectories", "horizon", "n_estimates",
                                              "options", "batch_size"))
def _draws(env, model, params, key, *, estimator, policy, n_trajectories, horizon, n_estimates, options, batch_size):
    # The selector ("auto") is drawn like a registry estimator; see mbpg.lab.selector.AutoEstimator.
    draw = estimator.draw if isinstance(estimator, AutoEstimator) else functools.partial(draw_gradient, estimator)

    def one(key):
        return draw(env, model, policy, params, key, n_trajectories, horizon, options)

    return jax.lax.map(one, jax.random.split(key, n_estimates), batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Everything that fixes the compiled program (shapes and static choices), and nothing that does not."""

    estimator: str
    n_trajectories: int
    horizon: int
    n_estimates: int
    options: EstimatorOptions


def _static_arguments(env, spec: SamplerSpec) -> dict:
    estimator = lab_estimator(spec.estimator)
    steps = spec.n_trajectories * spec.horizon
    if estimator.q_source == "model-rollouts":
        steps *= spec.options.n_rollouts * (spec.options.rollout_horizon or spec.horizon)
    return dict(
        estimator=estimator,
        policy=policy_for(env),
        n_trajectories=spec.n_trajectories,
        horizon=spec.horizon,
        n_estimates=spec.n_estimates,
        options=spec.options,
        batch_size=max(1, min(spec.n_estimates, MAX_PARALLEL_STEPS // max(steps, 1))),
    )


def compile_sampler(env, model, params, spec: SamplerSpec):
    """Ahead-of-time compile a draw function for `spec`; the result runs on any env/model/params of the same
    shapes, so the lab compiles once per (estimator, N) and reuses it across every model error."""
    static = _static_arguments(env, spec)
    compiled = _draws.lower(env, model, jnp.asarray(params), jax.random.key(0), **static).compile()
    return lambda env, model, params, key: compiled(env, model, jnp.asarray(params), key)


def sample_gradients(
    env,
    params,
    estimator: str,
    model=None,
    n_trajectories: int = 10,
    horizon: int | None = None,
    n_estimates: int = 100,
    seed: int = 0,
    options: EstimatorOptions | None = None,
) -> np.ndarray:
    """`n_estimates` independent draws of a named estimator, array [n_estimates, *params.shape].

    Each draw uses `n_trajectories` fresh trajectories of length `horizon` (default: gamma^H <= 1e-3).
    Estimators: see `mbpg.gradients.ESTIMATORS`; the model-based ones need `model`. "auto" is the adaptive
    selector over gpomdp, mvg-dp and fmg (`mbpg.lab.selector`; needs n_trajectories >= 2).
    """
    spec = validate_request(env, params, estimator, model, n_trajectories, horizon, n_estimates, options)
    static = _static_arguments(env, spec)
    draws = _draws(env, model, jnp.asarray(params), jax.random.key(seed), **static)
    return np.asarray(draws)


def check_lab_baseline(resolved, baseline: str) -> None:
    """`check_baseline` for a lab estimator, the selector's candidates included (they share the draw's baseline)."""
    for estimator in getattr(resolved, "estimators", (resolved,)):
        check_baseline(estimator, baseline)


def validate_request(env, params, estimator, model, n_trajectories, horizon, n_estimates, options) -> SamplerSpec:
    check_params(env, params)
    resolved = lab_estimator(estimator)
    check_estimator_inputs(resolved, env, model)
    horizon = effective_horizon(env.gamma) if horizon is None else horizon
    for name, value in (("n_trajectories", n_trajectories), ("horizon", horizon), ("n_estimates", n_estimates)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    options = options or EstimatorOptions()
    check_lab_baseline(resolved, options.baseline)
    if options.baseline != "none" and n_trajectories < 2:
        raise ValueError(f"baseline={options.baseline!r} needs n_trajectories >= 2 (it is leave-one-out).")
    if isinstance(resolved, AutoEstimator) and n_trajectories < 2:
        raise ValueError(f"{estimator!r} estimates variances across the trajectories of one estimate and needs "
                         f"n_trajectories >= 2; got {n_trajectories}.")
    return SamplerSpec(estimator, int(n_trajectories), int(horizon), int(n_estimates), options)
