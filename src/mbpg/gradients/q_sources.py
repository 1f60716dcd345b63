"""Sources of Q: what multiplies the score at each visited (s_t, a_t).

Every function returns a signal [N, H] aligned with the trajectory batch. The real-return sources make a
model-free gradient; the model sources (Monte-Carlo rollouts, exact DP, a TD critic) give Q^{pi, p_hat}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpg.envs import TabularMDP
from mbpg.gradients.trajectories import Trajectory, rollout_return
from mbpg.values import discounted_return, exact_action_value_fn, reward_to_go, td_critic_on_model


def whole_return(trajectories: Trajectory, gamma: float) -> jax.Array:
    """R(tau) at every step: the textbook REINFORCE signal."""
    total = discounted_return(trajectories.rewards, gamma)
    return jnp.broadcast_to(total[..., None], trajectories.rewards.shape)


def return_to_go(trajectories: Trajectory, gamma: float) -> jax.Array:
    """G_t, the discounted reward-to-go from step t: the GPOMDP signal."""
    return reward_to_go(trajectories.rewards, gamma)


def model_rollout_q(trajectories: Trajectory, model, policy, params, key, n_rollouts: int, horizon: int):
    """Q_hat(s_t, a_t) as the mean return of `n_rollouts` model rollouts from each real pair (GAMPS)."""
    states, actions = trajectories.states, trajectories.actions
    flat_states = states.reshape((-1,) + states.shape[2:])
    flat_actions = actions.reshape((-1,) + actions.shape[2:])
    keys = jax.random.split(key, (flat_states.shape[0], n_rollouts))

    def pair_q(state, action, pair_keys):
        returns = jax.vmap(lambda k: rollout_return(model, policy, params, state, action, k, horizon))(pair_keys)
        return returns.mean()

    return jax.vmap(pair_q)(flat_states, flat_actions, keys).reshape(states.shape[:2])


def model_exact_q(trajectories: Trajectory, model, params) -> jax.Array:
    """Q^{pi, p_hat}(s_t, a_t) by exact policy evaluation on the model: the perfect model critic."""
    q = exact_action_value_fn(model, params)
    return jax.vmap(jax.vmap(q))(trajectories.states, trajectories.actions)


def model_td_q(trajectories: Trajectory, model, params, key, iterations: int, step_size: float) -> jax.Array:
    """Q_hat(s_t, a_t) from a tabular TD critic trained on one-step model transitions from the real states."""
    if not isinstance(model, TabularMDP):
        raise TypeError(f"the TD critic source is tabular; got a {type(model).__name__} model.")
    table = td_critic_on_model(model, jax.nn.softmax(params, -1), trajectories.states, key, iterations, step_size)
    return table[trajectories.states, trajectories.actions]


def leave_one_out_baseline(kind: str, signal: jax.Array, states: jax.Array, n_states: int | None) -> jax.Array:
    """A baseline for trajectory i built from the other trajectories only, so it adds no bias as long as their
    signals do not depend on trajectory i: real returns, or a given model's rollouts or DP. A Q_hat fitted from
    the whole batch breaks that (`estimators.check_baseline` refuses it).

    "constant": the mean signal at the same step t; "state-value": the mean signal at the same state (a tabular
    Monte-Carlo estimate of V, i.e. a learned baseline). Where the others never visited a state, it is 0.
    """
    n = signal.shape[0]
    if kind == "none":
        return jnp.zeros_like(signal)
    if n < 2:
        raise ValueError(f"baseline={kind!r} is built from the other trajectories and needs n_trajectories >= 2.")
    if kind == "constant":
        return (signal.sum(0, keepdims=True) - signal) / (n - 1)
    if kind == "state-value":
        if n_states is None or states.ndim != 2:
            raise ValueError("baseline='state-value' needs a tabular environment (integer states).")
        one_hot = jax.nn.one_hot(states, n_states, dtype=signal.dtype)  # [N, H, S]
        own_sums = jnp.einsum("nhs,nh->ns", one_hot, signal)
        own_counts = one_hot.sum(1)
        other_sums = own_sums.sum(0, keepdims=True) - own_sums
        other_counts = own_counts.sum(0, keepdims=True) - own_counts
        per_state = other_sums / jnp.maximum(other_counts, 1.0)  # [N, S]
        return jnp.take_along_axis(per_state, states, axis=1)
    raise ValueError(f"unknown baseline {kind!r}; choose one of 'none', 'constant', 'state-value'.")
