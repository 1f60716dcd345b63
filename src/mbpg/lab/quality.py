"""Estimator quality against the exact gradient: bias, variance, MSE, cosine, as model error and N vary.

This is the measurement the seed asks for ("which gradient, when?"), on problems where the truth is known.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Literal, Sequence

import jax
import numpy as np

from mbpg.envs import LQR, TabularMDP
from mbpg.gradients import EstimatorOptions
from mbpg.lab.exact import exact_gradient
from mbpg.lab.sampling import check_lab_baseline, compile_sampler, validate_request
from mbpg.lab.selector import AutoEstimator, lab_estimator
from mbpg.models import (
    learned_linear_model,
    learned_model,
    mixture_model,
    perturbed_lqr,
    relative_dynamics_error,
    total_variation,
)

ModelError = Literal["dial", "adversarial", "learned"]


def make_model(env, error_kind: ModelError, value: float, key: jax.Array, params=None):
    """The model p_hat at one grid point of model error.

    dial: p_hat = (1-eps) p + eps q with a random q (tabular), or (A, B) off by relative error eps (LQR). Each
    grid point draws its own q (or direction) from its key, so the levels of a dial are independent models of
    that size of error, not one direction scaled (a curve over eps mixes the size with the draw).
    adversarial: the tabular dial with q on the lowest-value state of the policy `params`.
    learned: fit from `value` samples per (s, a) (tabular, Dirichlet prior 1) or `value` transitions (LQR).
    """
    if isinstance(env, TabularMDP):
        if error_kind == "dial":
            return mixture_model(env, value, "random", key=key)
        if error_kind == "adversarial":
            return mixture_model(env, value, "adversarial", logits=params)
        if error_kind == "learned":
            return learned_model(env, key, per_pair=_count(value))
    elif isinstance(env, LQR):
        if error_kind == "dial":
            return perturbed_lqr(env, value, key)
        if error_kind == "learned":
            return learned_linear_model(env, key, n=_count(value))
    raise ValueError(f"model error {error_kind!r} is not defined for {type(env).__name__}; "
                     f"use 'dial' or 'learned'{' or adversarial' if isinstance(env, TabularMDP) else ''}.")


def model_distance(env, model) -> float:
    """How wrong the model is, in one number: mean TV distance (tabular) or relative error of [A B] (LQR)."""
    return total_variation(env, model) if isinstance(env, TabularMDP) else relative_dynamics_error(env, model)


def _count(value: float) -> int:
    if value < 1 or int(value) != value:
        raise ValueError(f"a learned model's sample count must be a positive integer; got {value}.")
    return int(value)


def population_kind(estimator: str) -> str:
    return lab_estimator(estimator).gradient_type.lower()


@dataclasses.dataclass
class QualityRow:
    """One (estimator, model error, N) grid point. Norms are Euclidean over all gradient entries.

    population_bias is ||population gradient - truth|| for the infinite horizon (the estimator's mean with
    untruncated trajectories; NaN where it has no closed form: auto, svg, uim); `bias` is measured at the run's
    horizon, so with a short --horizon the two also differ by the truncation."""

    estimator: str
    gradient_type: str
    error_kind: str
    model_error: float
    model_distance: float
    n_trajectories: int
    bias: float
    variance: float
    mse: float
    cosine: float
    relative_error: float
    population_bias: float
    seconds_per_estimate: float
    n_estimates: int


def summarise_draws(draws: np.ndarray, truth: np.ndarray) -> dict:
    """Bias = ||mean - truth||; variance = trace of the covariance; MSE = mean ||draw - truth||^2."""
    flat = draws.reshape(draws.shape[0], -1).astype(np.float64)
    truth = np.asarray(truth, np.float64).reshape(-1)
    mean = flat.mean(0)
    errors = flat - truth
    norms = np.linalg.norm(flat, axis=1) * np.linalg.norm(truth)
    cosines = np.where(norms > 0, flat @ truth / np.where(norms > 0, norms, 1.0), 0.0)
    mse = float((errors**2).sum(1).mean())
    return dict(
        bias=float(np.linalg.norm(mean - truth)),
        variance=float(((flat - mean) ** 2).sum(1).mean()),
        mse=mse,
        cosine=float(cosines.mean()),
        relative_error=float(np.sqrt(mse) / max(np.linalg.norm(truth), 1e-300)),
    )


def fitted_population(env, params, weighting: str, horizon: int | None, options: EstimatorOptions | None):
    """The N -> infinity value of an estimator whose model class is fitted inside the draw (`gamps`, `gamps-ml`):
    its bias is what the model class leaves however much data there is, not zero."""
    from mbpg.lab.gradient_aware import population_gradient

    return population_gradient(env, getattr(options, "model_class", None), params, horizon, weighting)


def estimator_quality(
    env,
    params,
    estimators: Sequence[str],
    model_errors: Sequence[float],
    sample_sizes: Sequence[int],
    error_kind: ModelError = "dial",
    n_estimates: int = 200,
    horizon: int | None = None,
    seed: int = 0,
    options: EstimatorOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[QualityRow]:
    """Measure every estimator at every (model error, N) grid point against the exact MFG gradient.

    Model-free estimators do not depend on the model; they are drawn once per N and their row is repeated at each
    model error so that every curve spans the grid. Every draw uses its own key derived from `seed`, and each
    (estimator, N) program is compiled once and reused across model errors (time per estimate excludes compiling).
    """
    if not estimators or not model_errors or not sample_sizes:
        raise ValueError("estimators, model_errors and sample_sizes must each name at least one value.")
    for name in estimators:  # every name and baseline checked before the first draw compiles
        check_lab_baseline(lab_estimator(name), (options or EstimatorOptions()).baseline)
    truth = exact_gradient(env, params, "mfg")
    root = jax.random.key(seed)
    models = [make_model(env, error_kind, value, jax.random.fold_in(root, i), params)
              for i, value in enumerate(model_errors)]
    rows: list[QualityRow] = []
    for name in estimators:
        estimator = lab_estimator(name)
        for n_trajectories in sample_sizes:
            spec = validate_request(env, params, name, models[0] if estimator.needs_model else None,
                                    n_trajectories, horizon, n_estimates, options)
            run = None
            cached: tuple[dict, float] | None = None
            for index, (value, model) in enumerate(zip(model_errors, models)):
                if progress:
                    progress(f"{name} N={n_trajectories} {error_kind}={value:g}")
                if isinstance(estimator, AutoEstimator) or estimator.form == "pathwise":
                    # No closed-form population value: auto is a data-dependent mix; svg/uim's inferred noise
                    # absorbs the model's error, so their mean is not the MVG gradient (z = 26-39 off it on lqr).
                    population = np.full_like(truth, np.nan)
                elif getattr(estimator, "fitted", None) is not None:  # the model is fitted inside each draw
                    population = fitted_population(env, params, estimator.fitted, horizon, options)
                else:
                    population = truth if not estimator.needs_model else exact_gradient(
                        env, params, population_kind(name), model)
                if cached is None or estimator.needs_model:
                    used_model = model if estimator.needs_model else None
                    if run is None:
                        run = compile_sampler(env, used_model, params, spec)
                    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, 1000 + index),
                                                                n_trajectories), _stable_hash(name))
                    start = time.perf_counter()
                    draws = np.asarray(jax.block_until_ready(run(env, used_model, params, key)))
                    seconds = (time.perf_counter() - start) / spec.n_estimates
                    cached = (summarise_draws(draws, truth), seconds)
                stats, seconds = cached
                rows.append(QualityRow(
                    estimator=name, gradient_type=estimator.gradient_type, error_kind=error_kind,
                    model_error=float(value), model_distance=model_distance(env, model),
                    n_trajectories=int(n_trajectories), population_bias=float(np.linalg.norm(population - truth)),
                    seconds_per_estimate=seconds, n_estimates=spec.n_estimates, **stats,
                ))
    return rows


def _stable_hash(text: str) -> int:
    """A per-estimator key offset that, unlike hash(), is the same in every Python process."""
    return sum((i + 1) * ord(c) for i, c in enumerate(text)) % (2**31)


def best_per_point(rows: Sequence[QualityRow]) -> dict[tuple[float, int], QualityRow]:
    """The lowest-MSE row at each (model error, N)."""
    best: dict[tuple[float, int], QualityRow] = {}
    for row in rows:
        key = (row.model_error, row.n_trajectories)
        if key not in best or mse_rank(row.mse) < mse_rank(best[key].mse):
            best[key] = row
    return best


def mse_rank(mse: float) -> float:
    """Sort key of an MSE: NaN (an estimator undefined at that point, e.g. Q on a model where the policy is
    unstable) ranks last. A plain `<` never prefers a number to a NaN met first, which made NaN rows win."""
    return mse if mse == mse else float("inf")
