"""Policy-gradient ascent on the lab's exact environments with a swappable gradient, `auto` included.

Why in the lab: on a tabular MDP or an LQR the return J(theta) of every iterate is computed exactly, so a learning
curve has no evaluation noise and the only randomness is the gradient's. That makes these curves the cleanest
test of the training-time selector: does choosing the gradient type per update (from the update's own data)
learn at least as fast as the best fixed type?

One iteration, for the policy theta_k:
1. the estimator draws its gradient from N real trajectories of theta_k (and, for FMG, N model trajectories);
2. the model p_hat it uses is fitted on the real transitions of all EARLIER iterations (tabular: maximum
   likelihood, unvisited pairs uniform; LQR: least squares), so given p_hat the model's trajectories are
   independent of this batch, as the selector assumes for FMG (auto draws them from a side key). Iteration 0 has
   no earlier data: its model is fitted on its own batch (the one place where that independence is only
   approximate). The fixed fmg gradient samples its model trajectories with the real batch's key (common random
   numbers with the batch the next model is fitted on; each step's gradient is not biased by it). (A Dirichlet(1) prior
   was tried first: with 16 next states it mixes ~25% of uniform into every row after 50 visits, and the
   model-based gradients then learned at a third of GPOMDP's speed; the learning-curve benchmark records ML.)
3. theta_{k+1} = theta_k + learning_rate * gradient, the step's norm capped at `max_step`;
4. J(theta_{k+1}) exactly; for auto the selector's weights and estimates are kept for every update.

The gradient is any lab estimator by name (`mbpg lab --help` lists them): gpomdp (MFG), mvg-dp / mvg-mc (MVG),
fmg (FMG), or auto (the selector over gpomdp, mvg-dp, fmg; docs/selector.md).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import LQR, TabularMDP
from mbpg.gradients import Baseline, EstimatorOptions, draw_gradient, sample_trajectories
from mbpg.lab.exact import exact_return
from mbpg.lab.sampling import check_lab_baseline
from mbpg.lab.scenarios import get_scenario
from mbpg.lab.selector import AutoEstimator, describe, for_training, lab_estimator
from mbpg.models.linear import fit_linear_model
from mbpg.models.tabular import fit_tabular_model
from mbpg.policies import policy_for
from mbpg.values import effective_horizon


@dataclasses.dataclass(frozen=True)
class LabTrainingConfig:
    env: str = "gridworld"
    """A lab scenario with a tabular or LQR environment (gridworld, chain, garnet, lqr, ...); its fixed policy
    is the starting point."""
    gradient: str = "auto"
    """Lab estimator: gpomdp, mvg-dp, mvg-mc, fmg, auto (weights cross-fitted across halves of the
    trajectories from N >= 4 on), auto-cf / auto-is (always cross-fitted / in-sample weights), or auto:a+b+c (the
    selector over those candidates)."""
    iterations: int = 30
    """Gradient steps."""
    n_trajectories: int = 10
    """Real trajectories per step (N)."""
    horizon: int | None = None
    """Trajectory length (default: smallest H with gamma^H <= 1e-3)."""
    learning_rate: float | None = None
    """Step size (default 10 on softmax logits, 0.01 on an LQR gain)."""
    max_step: float | None = None
    """Cap on the norm of one step (default 1 on logits, 0.05 on an LQR gain, which one noisy gradient can
    otherwise push to instability)."""
    baseline: Baseline = "none"
    """Baseline of the score-function estimators (none, constant, state-value; leave-one-out, so unbiased; refused
    for estimators whose Q_hat is fitted from the batch, such as mvg-td)."""
    seed: int = 0
    """Seed of the run's random numbers (trajectories, model rollouts)."""

    def __post_init__(self):
        for name in ("iterations", "n_trajectories"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}.")
        if self.baseline not in typing.get_args(Baseline):
            raise ValueError(f"--baseline must be one of {', '.join(typing.get_args(Baseline))}; "
                             f"got {self.baseline!r}.")
        check_lab_baseline(lab_estimator(self.gradient), self.baseline)
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"--horizon must be >= 1; got {self.horizon}.")
        for name in ("learning_rate", "max_step"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be finite and > 0; got {value}.")


def fit_model(env, batches):
    """p_hat from the real transitions of `batches` (a list of Trajectory): rewards and start distribution known."""
    states = np.concatenate([np.asarray(b.states).reshape((-1,) + np.shape(b.states)[2:]) for b in batches])
    actions = np.concatenate([np.asarray(b.actions).reshape((-1,) + np.shape(b.actions)[2:]) for b in batches])
    next_states = np.concatenate([np.asarray(b.next_states).reshape((-1,) + np.shape(b.next_states)[2:])
                                  for b in batches])
    if isinstance(env, TabularMDP):
        return fit_tabular_model(env, states, actions, next_states, prior=0.0)
    return fit_linear_model(env, states, actions, next_states)


@functools.partial(jax.jit, static_argnames=("estimator", "policy", "n", "horizon", "options"))
def _step(env, model, params, key, *, estimator, policy, n, horizon, options):
    """(gradient, Selection or None, this iteration's real trajectories) for one update."""
    trajectories = sample_trajectories(env, policy, params, jax.random.split(key)[0], n, horizon)  # = the draw's
    if isinstance(estimator, AutoEstimator):
        _, gradient, selection = estimator.draw_all(env, model, policy, params, key, n, horizon, options)
        return gradient, selection, trajectories
    return draw_gradient(estimator, env, model, policy, params, key, n, horizon, options), None, trajectories


def train_lab(config: LabTrainingConfig, progress: Callable[[int, float, str], None] | None = None) -> dict:
    """Run the ascent; returns {"returns": exact J of theta_0..theta_K [K+1], "params": [K+1, ...],
    "weights": the selector's weights per update [K, candidates] (auto only), "candidates": their names}.
    `progress(iteration, J, line)` is called after each step; for auto `line` is the selector's `describe`."""
    scenario = get_scenario(config.env)
    env = scenario.make_env()
    if not isinstance(env, (TabularMDP, LQR)):
        raise ValueError(f"lab training needs a tabular or LQR scenario; {config.env!r} is {type(env).__name__}.")
    estimator = for_training(lab_estimator(config.gradient))
    if not isinstance(estimator, AutoEstimator) and estimator.fitted is not None:
        raise ValueError(f"{config.gradient!r} fits its own model inside each draw; lab training supplies a model "
                         "learned from earlier iterations. Use gpomdp, mvg-dp, mvg-mc, fmg or auto.")
    policy = policy_for(env)
    horizon = config.horizon or effective_horizon(env.gamma)
    tabular = isinstance(env, TabularMDP)
    learning_rate = config.learning_rate or (10.0 if tabular else 0.01)
    max_step = config.max_step or (1.0 if tabular else 0.05)
    params = np.asarray(scenario.make_params(env), np.float64)
    key = jax.random.key(config.seed)
    batches, history, weights = [], [params], []
    returns = [float(exact_return(env, params))]
    model = None
    for iteration in range(config.iterations):
        key, key_step = jax.random.split(key)
        current = jnp.asarray(params, jnp.float32)
        if batches:
            model = fit_model(env, batches)
        elif model is None:  # iteration 0: fit on this iteration's own trajectories (see the module docstring)
            first = sample_trajectories(env, policy, current, jax.random.split(key_step)[0], config.n_trajectories,
                                        horizon)
            model = fit_model(env, [first])
        gradient, selection, trajectories = _step(env, model, current, key_step, estimator=estimator, policy=policy,
                                                  n=config.n_trajectories, horizon=horizon,
                                                  options=EstimatorOptions(baseline=config.baseline))
        batches.append(trajectories)
        step = learning_rate * np.asarray(gradient, np.float64)
        norm = np.linalg.norm(step)
        if not np.isfinite(norm):
            raise FloatingPointError(f"the {config.gradient} gradient at iteration {iteration} is not finite "
                                     "(an unstable LQR gain on the model?); lower --learning-rate or --max-step.")
        params = params + step * min(1.0, max_step / max(norm, 1e-300))
        history.append(params)
        returns.append(float(exact_return(env, params)))
        line = ""
        if selection is not None:
            weights.append(np.asarray(selection.weights))
            line = describe(selection, estimator.candidates)
        if progress:
            progress(iteration, returns[-1], line)
    return {"returns": np.asarray(returns), "params": np.stack(history),
            "weights": np.asarray(weights) if weights else None,
            "candidates": getattr(estimator, "candidates", (estimator.name,))}


def print_progress(iteration: int, value: float, line: str) -> None:
    """The CLI's progress: one line per update with the exact return and, for auto, why it mixed as it did."""
    print(f"iteration {iteration + 1:4d}  J = {value:.5g}" + (f"  {line}" if line else ""), flush=True)
