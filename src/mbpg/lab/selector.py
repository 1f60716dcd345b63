"""The adaptive gradient selector as a lab estimator named "auto" (`AutoEstimator`): candidate contributions
from one draw of real (and model) trajectories, mixed by `mbpg.gradients.selector.select_gradient`.

The selector itself (the unbiased MSE estimate and the simplex QP) lives in `mbpg.gradients.selector`, below
both the algorithms and the lab; docs/selector.md has the derivation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mbpg.gradients import EstimatorOptions, get_estimator, sample_trajectories, score_function_gradient
from mbpg.gradients.estimators import score_signal
from mbpg.gradients.selector import (  # noqa: F401  (re-exported: the lab's public names)
    Selection,
    FORCED_CROSS_FIT,
    describe,
    estimated_mse,
    select_gradient,
    select_gradient_auto,
    select_gradient_cross_fitted,
    selection_from_flat,
    simplex_qp,
)
from mbpg.keys import side_key


# --- The selector as a lab estimator ---------------------------------------------------------------------------

DEFAULT_CANDIDATES = ("gpomdp", "mvg-dp", "fmg")
"""MFG first (the unbiased reference); then one MVG and one FMG cell whose contributions are i.i.d. across
trajectories, which the covariance estimates assume."""


@dataclasses.dataclass(frozen=True)
class AutoEstimator:
    """The selector over `candidates`, drawn like any lab estimator: per draw, N real trajectories give every
    real-data candidate's contributions (paired), model-data candidates (FMG) draw their own N model trajectories
    (independent), and the draw is the selector's mix. Hashable, so it is a static argument of a jitted sampler.

    Each candidate's own estimate inside a draw equals `draw_gradient` of that estimator: real-data candidates
    with the draw's key, model-data candidates with `side_key(key, "model trajectories")` (their trajectories
    must not share the real ones' random numbers, or they would not be independent).
    """

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    name: str = "auto"
    gradient_type: str = "AUTO"
    d_source: str = "real"
    q_source: str = "selector"
    form: str = "score"
    cross_fit: bool | None = False
    """Choose each half's weights on the other half of the trajectories (`select_gradient_cross_fitted`): True
    always, None whenever N >= 4 (`cross_fits`: what a training step wants), False never (in-sample weights: the
    lowest MSE of one estimate, what the lab measures; docs/selector.md, "One estimate or a training run")."""

    def __post_init__(self):
        if not self.candidates:
            raise ValueError("auto needs at least one candidate estimator.")
        first = get_estimator(self.candidates[0])
        if first.gradient_type != "MFG":
            raise ValueError(f"auto's first candidate is its unbiased reference and must be model-free (MFG), "
                             f"e.g. gpomdp; got {first.name!r} ({first.gradient_type}).")
        for name in self.candidates:
            estimator = get_estimator(name)
            if estimator.form != "score" or estimator.fitted is not None:
                raise ValueError(f"auto mixes score-function estimators with a given model; {name!r} is not one "
                                 f"(choose from reinforce, gpomdp, fmg, mvg-mc, mvg-dp, mvg-td).")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"auto's candidates must be distinct; got {self.candidates}.")

    @property
    def estimators(self):
        return tuple(get_estimator(name) for name in self.candidates)

    @property
    def needs_model(self) -> bool:
        return any(e.needs_model for e in self.estimators)

    @property
    def envs(self) -> tuple[type, ...]:
        return tuple(t for t in self.estimators[0].envs if all(t in e.envs for e in self.estimators))

    @property
    def independent(self) -> tuple[bool, ...]:
        return tuple(e.d_source == "model" for e in self.estimators)

    def contributions(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
                      options: EstimatorOptions = EstimatorOptions()) -> jax.Array:
        """Per-trajectory contributions of every candidate, [K, N, *params.shape]."""
        model_key = side_key(key, "model trajectories")
        batches = {"real": _trajectories(env, policy, params, key, n_trajectories, horizon),
                   "model": _trajectories(model, policy, params, model_key, n_trajectories, horizon)
                   if any(e.d_source == "model" for e in self.estimators) else None}
        rows = []
        for estimator in self.estimators:
            trajectories, q_key = batches[estimator.d_source]
            rows.append(score_contributions(estimator, env, model, policy, params, trajectories, q_key, horizon,
                                            options))
        return jnp.stack(rows)

    def draw_all(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
                 options: EstimatorOptions = EstimatorOptions()):
        """(candidate estimates [K, *params.shape], the mixed estimate, the Selection) from one draw."""
        contributions = self.contributions(env, model, policy, params, key, n_trajectories, horizon, options)
        gradient, selection = self.select(contributions)
        return contributions.mean(1), gradient, selection

    def select(self, contributions):
        """(mixed gradient, Selection) of contributions [K, N, ...], cross-fitted or not as configured."""
        return select_gradient_auto(contributions, self.independent, self.cross_fit)

    def draw(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
             options: EstimatorOptions = EstimatorOptions()):
        """One estimate of grad J: the selector's mix (the lab's sampler calls this like `draw_gradient`)."""
        return self.draw_all(env, model, policy, params, key, n_trajectories, horizon, options)[1]


def for_training(estimator):
    """The estimator as a training step uses it: plain auto (and auto:a+b) cross-fits whenever N allows, since a
    run adds up the in-sample weights' tilt over its steps; auto-cf / auto-is and fixed estimators are unchanged."""
    if isinstance(estimator, AutoEstimator) and estimator.name not in FORCED_CROSS_FIT:
        return dataclasses.replace(estimator, cross_fit=None)
    return estimator


def parse_auto(name: str) -> AutoEstimator | None:
    """"auto" -> the default candidates; "auto:gpomdp+mvg-mc" -> those candidates; anything else -> None."""
    if name == "auto":
        return AutoEstimator()
    if name in FORCED_CROSS_FIT:
        return AutoEstimator(name=name, cross_fit=FORCED_CROSS_FIT[name])
    if name.startswith("auto:"):
        return AutoEstimator(tuple(part for part in name[5:].split("+") if part), name=name)
    return None


def _trajectories(env, policy, params, key, n_trajectories, horizon):
    """The same split `draw_gradient` makes: trajectories from the first key, the Q source's randomness from the
    second."""
    key_paths, key_q = jax.random.split(key)
    return sample_trajectories(env, policy, params, key_paths, n_trajectories, horizon), key_q


def score_contributions(estimator, env, model, policy, params, trajectories, key_q, horizon: int,
                        options: EstimatorOptions = EstimatorOptions()) -> jax.Array:
    """Per-trajectory terms [N, *params.shape] of a score-function estimator; their mean is `draw_gradient`'s
    estimate from the same trajectories and keys. The Q signal is computed on the whole batch exactly as
    `draw_gradient` does (so leave-one-out baselines and mvg-td's critic see all N trajectories: their terms are
    then not independent, which the selector's covariance estimates assume; the default candidates avoid them)."""
    if estimator.form != "score":
        raise ValueError(f"{estimator.name!r} has no per-trajectory score-function decomposition here.")
    weights, signal = score_signal(estimator, env, model, policy, params, trajectories, key_q, horizon, options)

    def one(trajectory, trajectory_signal):
        single = jax.tree.map(lambda x: x[None], trajectory)
        return score_function_gradient(policy, params, single, weights, trajectory_signal[None])

    return jax.vmap(one)(trajectories, signal)


def lab_estimator(name: str):
    """A lab estimator by name: the registry's (`mbpg.gradients.ESTIMATORS`), or the selector ("auto",
    "auto:gpomdp+mvg-dp+fmg"). Everything the lab samples or measures is resolved here."""
    return parse_auto(name) or get_estimator(name)
