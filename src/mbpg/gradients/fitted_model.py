"""Q under a model fitted inside the draw, from the draw's own real trajectories (GAMPS and its ML twin).

Why a separate source: every other model-based cell of the table takes p_hat as an input, so its error is a dial
the lab sets. GAMPS's claim is about *how* p_hat is fitted from the same data the gradient uses: gradient-aware
weights w_t = gamma^t sum_{l<=t} ||grad log pi(a_l|s_l)|| versus unit weights (maximum likelihood), with the
same (usually misspecified) model class. Fitting inside the draw makes the estimator a function of the real
trajectories only, so its bias and variance include the fit's, and one jitted, vmapped sampler measures both.
The data of one draw are on-policy, so the importance ratios of the GAMPS weights are 1.
"""

from __future__ import annotations

from typing import Literal

import jax

from mbpg.envs import TabularMDP
from mbpg.gradients.q_sources import model_exact_q
from mbpg.gradients.trajectories import Trajectory
from mbpg.models.gradient_aware import FullTabularModel, gamps_weights, score_norms, trajectory_counts

Weighting = Literal["gamps", "ml"]


def transition_weights(trajectories: Trajectory, policy, params, gamma: float, weighting: Weighting) -> jax.Array:
    """Per-step weights [N, H] of the likelihood: GAMPS's (on-policy, rho = 1) or all ones."""
    if weighting == "ml":
        return jax.numpy.ones(trajectories.rewards.shape, trajectories.rewards.dtype)
    if weighting != "gamps":
        raise ValueError(f"weighting must be 'gamps' or 'ml'; got {weighting!r}.")
    norms = score_norms(policy, params, trajectories.states, trajectories.actions)
    return gamps_weights(norms.astype(trajectories.rewards.dtype), gamma, ratio="none")


def fit_from_trajectories(trajectories: Trajectory, env: TabularMDP, policy, params, model_class=None,
                          weighting: Weighting = "gamps") -> TabularMDP:
    """p_hat in `model_class` (anything with a jittable `fit_mdp(reference, counts)`; None: the full tabular
    class) by weighted maximum likelihood on the trajectories' transitions. Rewards, start distribution and the
    class's fixed rows come from `env` (known, as in the paper: only the dynamics are learned)."""
    weights = transition_weights(trajectories, policy, params, env.gamma, weighting)
    counts = trajectory_counts(env.n_states, env.n_actions, trajectories.states, trajectories.actions,
                               trajectories.next_states, weights)
    return (model_class or FullTabularModel()).fit_mdp(env, counts)


def fitted_model_exact_q(trajectories: Trajectory, env: TabularMDP, policy, params, model_class=None,
                         weighting: Weighting = "gamps") -> jax.Array:
    """Q^{pi, p_hat}(s_t, a_t) by exact DP on the model fitted from these same trajectories, shape [N, H]."""
    model = fit_from_trajectories(trajectories, env, policy, params, model_class, weighting)
    return model_exact_q(trajectories, model, params)
