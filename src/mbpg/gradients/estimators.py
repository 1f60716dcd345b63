"""Named gradient estimators, each one cell of the table (source of d) x (source of Q) x (form).

MFG, FMG and MVG are not code paths: they are read off an estimator's d and Q sources (`gradient_type`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import LQR, TabularMDP
from mbpg.gradients import q_sources
from mbpg.gradients.fitted_model import fitted_model_exact_q
from mbpg.gradients.forms import score_function_gradient, value_gradient
from mbpg.gradients.trajectories import sample_trajectories
from mbpg.values import default_td_iterations, discount_weights

DSource = Literal["real", "model"]
Baseline = Literal["none", "constant", "state-value"]
QSource = Literal["whole-return", "return-to-go", "model-rollouts", "model-exact", "model-td", "model-backprop"]


@dataclasses.dataclass(frozen=True)
class Estimator:
    """Where the states and actions come from, where Q comes from, and which form combines them."""

    name: str
    d_source: DSource
    q_source: QSource
    form: Literal["score", "pathwise"]
    description: str
    envs: tuple[type, ...] = (TabularMDP, LQR)
    fitted: Literal["gamps", "ml"] | None = None
    """Q's model is fitted inside the draw from the draw's own real trajectories, with GAMPS weights or unit
    weights (`mbpg.gradients.fitted_model`); such an estimator takes no model input."""

    @property
    def needs_model(self) -> bool:
        if self.fitted is not None:
            return False
        return self.d_source == "model" or self.q_source.startswith("model")

    @property
    def gradient_type(self) -> str:
        if self.d_source == "model":
            return "FMG"
        return "MVG" if self.q_source.startswith("model") else "MFG"


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator("reinforce", "real", "whole-return", "score", "REINFORCE: whole discounted return at every step"),
        Estimator("gpomdp", "real", "return-to-go", "score", "GPOMDP: discounted reward-to-go"),
        Estimator("fmg", "model", "return-to-go", "score", "GPOMDP on trajectories sampled from the model"),
        Estimator("mvg-mc", "real", "model-rollouts", "score", "real pairs, Q by model rollouts (GAMPS)"),
        Estimator("mvg-dp", "real", "model-exact", "score", "real pairs, Q by exact DP on the model"),
        Estimator("mvg-td", "real", "model-td", "score", "real pairs, Q by a TD critic on one-step model "
                  "transitions from real states (MBPO k=1)", envs=(TabularMDP,)),
        Estimator("svg", "real", "model-backprop", "pathwise", "value gradient through the model along real "
                  "trajectories with inferred noise (SVG(inf))", envs=(LQR,)),
        Estimator("uim", "real", "model-backprop", "pathwise", "UIM: return gradient through the model plus a "
                  "time-indexed bias that reproduces each real trajectory (on a linear-Gaussian model the bias is "
                  "SVG's inferred noise, so the draw is svg's)", envs=(LQR,)),
        Estimator("gamps", "real", "model-exact", "score", "GAMPS: real pairs, Q by exact DP on a model fitted "
                  "from the same trajectories by gradient-aware weighted ML", envs=(TabularMDP,), fitted="gamps"),
        Estimator("gamps-ml", "real", "model-exact", "score", "GAMPS's twin: the same model class fitted from the "
                  "same trajectories by plain (unit-weight) ML", envs=(TabularMDP,), fitted="ml"),
    )
}


@dataclasses.dataclass(frozen=True)
class EstimatorOptions:
    """Knobs of the estimators; hashable, so a jitted draw compiles once per distinct setting."""

    baseline: Baseline = "none"
    """Baseline subtracted from the Q signal of score-function estimators: leave-one-out, hence unbiased where
    the other trajectories' signals do not depend on trajectory i; refused for mvg-td, gamps and gamps-ml, whose
    Q_hat is fitted from all N trajectories (`check_baseline`)."""
    n_rollouts: int = 4
    """Model rollouts M per real (s, a) for mvg-mc."""
    rollout_horizon: int | None = None
    """Horizon of those rollouts (default: the trajectory horizon)."""
    td_step_size: float = 0.5
    """Step size of the mvg-td critic's sweeps."""
    td_iterations: int | None = None
    """Sweeps of the mvg-td critic (default: enough to contract the initial error below 1e-3)."""
    bootstrap: bool = True
    """svg: add the model's value of the last state, so truncation comes only from the model."""
    model_class: object | None = None
    """gamps / gamps-ml: the model class fitted inside each draw, a hashable object with a jittable
    `fit_mdp(reference, counts)` (e.g. `mbpg.models.gradient_aware.DisplacementModel`); None: full tabular."""

    def __post_init__(self):
        if not 0.0 < self.td_step_size <= 1.0:
            raise ValueError(f"td_step_size must lie in (0, 1] (a step toward the TD target); got "
                             f"{self.td_step_size}.")
        for name in ("n_rollouts", "rollout_horizon", "td_iterations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer{' or None' if name != 'n_rollouts' else ''}; "
                                 f"got {value!r}.")


def fits_q_from_the_batch(estimator: Estimator) -> bool:
    """Whether the estimator's Q_hat is fitted from all N trajectories of the draw (a model fitted to them, or a
    critic trained from their states), so that each trajectory's signal depends on every other trajectory."""
    return estimator.fitted is not None or estimator.q_source == "model-td"


def check_baseline(estimator: Estimator, baseline: str) -> None:
    """Refuse a leave-one-out baseline where it would bias the gradient.

    The baseline of trajectory i is built from the other trajectories' signals; it adds no bias only if those
    are independent of trajectory i. A Q_hat fitted from the whole batch breaks that: measured on a 2-state MDP,
    a constant baseline moved gamps's mean gradient by 20% (z = 56), and on a garnet mvg-td's (with its earlier
    critic, which branched one a ~ pi per state) by up to 7.8 standard errors."""
    if baseline != "none" and fits_q_from_the_batch(estimator):
        raise ValueError(f"baseline={baseline!r} would bias {estimator.name!r}: its Q_hat is fitted from all N "
                         "trajectories, so the other trajectories' signals depend on trajectory i. Use baseline "
                         f"'none' (--baseline none), or leave {estimator.name!r} out of the estimators.")


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}.") from None


def check_estimator_inputs(estimator: Estimator, env, model) -> None:
    """Fail early, with the fix, when an estimator cannot run on this environment or lacks its model."""
    if not isinstance(env, estimator.envs):
        supported = " or ".join(t.__name__ for t in estimator.envs)
        raise ValueError(f"estimator {estimator.name!r} needs a {supported} environment; got {type(env).__name__}.")
    if estimator.needs_model and model is None:
        builders = ("perturbed_lqr or learned_linear_model" if isinstance(env, LQR)
                    else "mixture_model or fit_tabular_model")
        raise ValueError(f"estimator {estimator.name!r} is {estimator.gradient_type} and needs model=...; "
                         f"build one with mbpg.models (e.g. {builders}).")
    if model is not None and type(model) is not type(env):
        raise ValueError(f"model must be the same kind of environment as env ({type(env).__name__}); "
                         f"got {type(model).__name__}.")


def draw_gradient(estimator: Estimator, env, model, policy, params, key, n_trajectories: int, horizon: int,
                  options: EstimatorOptions = EstimatorOptions()):
    """One estimate of grad J from `n_trajectories` trajectories of length `horizon` (jittable, vmappable)."""
    key_paths, key_q = jax.random.split(key)
    d_env = model if estimator.d_source == "model" else env
    trajectories = sample_trajectories(d_env, policy, params, key_paths, n_trajectories, horizon)
    if estimator.form == "pathwise":
        return value_gradient(model, policy, params, trajectories, bootstrap=options.bootstrap)

    weights, signal = score_signal(estimator, env, model, policy, params, trajectories, key_q, horizon, options)
    return score_function_gradient(policy, params, trajectories, weights, signal)


def score_signal(estimator: Estimator, env, model, policy, params, trajectories, key_q, horizon: int,
                 options: EstimatorOptions = EstimatorOptions()):
    """The score form's (per-step weights [H], signal [N, H]) for `trajectories`: the estimator's Q source with
    its baseline subtracted. `draw_gradient` and the selector's per-trajectory contributions both build on it."""
    check_baseline(estimator, options.baseline)
    gamma = env.gamma
    weights = discount_weights(horizon, gamma, trajectories.rewards.dtype)
    if estimator.q_source == "whole-return":
        signal, weights = q_sources.whole_return(trajectories, gamma), jnp.ones_like(weights)
    elif estimator.q_source == "return-to-go":
        signal = q_sources.return_to_go(trajectories, gamma)
    elif estimator.q_source == "model-rollouts":
        signal = q_sources.model_rollout_q(trajectories, model, policy, params, key_q, options.n_rollouts,
                                           options.rollout_horizon or horizon)
    elif estimator.fitted is not None:
        signal = fitted_model_exact_q(trajectories, env, policy, params, options.model_class, estimator.fitted)
    elif estimator.q_source == "model-exact":
        signal = q_sources.model_exact_q(trajectories, model, params)
    elif estimator.q_source == "model-td":
        iterations = options.td_iterations or default_td_iterations(gamma, options.td_step_size)
        signal = q_sources.model_td_q(trajectories, model, params, key_q, iterations, options.td_step_size)
    else:  # pragma: no cover - the registry only holds the sources above
        raise AssertionError(estimator.q_source)
    n_states = env.n_states if isinstance(env, TabularMDP) else None
    signal = signal - q_sources.leave_one_out_baseline(options.baseline, signal, trajectories.states, n_states)
    return weights, signal
