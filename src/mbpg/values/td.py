"""A tabular critic trained by TD on one-step model transitions branched from real states.

This is MBPO with rollout length k = 1 in miniature: every imagined transition starts at a state the real
environment visited, so the critic approximates Q^{pi, p_hat} where the actor will query it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpg.distributions import categorical
from mbpg.envs import TabularMDP
from mbpg.values.returns import effective_horizon


def default_td_iterations(gamma: float, step_size: float, tolerance: float = 1e-3) -> int:
    """Enough sweeps for the initial error to shrink below `tolerance` (contraction 1 - step_size (1 - gamma))."""
    return effective_horizon(1.0 - step_size * (1.0 - gamma), tolerance)


def td_critic_on_model(
    model: TabularMDP,
    probs: jax.Array,
    start_states: jax.Array,
    key: jax.Array,
    iterations: int,
    step_size: float,
) -> jax.Array:
    """Q table [S, A] from expected-SARSA updates on model transitions branched from `start_states`.

    Each sweep branches one transition from every start state (a ~ pi, s' ~ p_hat(.|s, a)) and moves Q(s, a)
    toward the mean TD target of the branches from (s, a). Pairs never branched from keep Q = 0: the critic knows
    only what the real data reached, which is the point (and the bias) of this estimator.
    """
    start_states = start_states.reshape(-1)
    n_states, n_actions = probs.shape
    transitions = jnp.asarray(model.transitions, probs.dtype)
    rewards = jnp.asarray(model.rewards, probs.dtype)

    def sweep(q, key):
        key_action, key_next = jax.random.split(key)
        actions = categorical(key_action, probs[start_states])
        next_states = categorical(key_next, transitions[start_states, actions])
        targets = rewards[start_states, actions] + model.gamma * jnp.sum(probs[next_states] * q[next_states], -1)
        errors = targets - q[start_states, actions]
        error_sums = jnp.zeros_like(q).at[start_states, actions].add(errors)
        counts = jnp.zeros_like(q).at[start_states, actions].add(1.0)
        return q + step_size * error_sums / jnp.maximum(counts, 1.0), None

    q0 = jnp.zeros((n_states, n_actions), probs.dtype)
    q, _ = jax.lax.scan(sweep, q0, jax.random.split(key, iterations))
    return q
