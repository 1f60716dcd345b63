"""Sources of d: trajectories drawn from an environment, which is the real one (MFG, MVG) or a model (FMG)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Trajectory(NamedTuple):
    """Arrays with leading axes [..., H]: s_t, a_t, r_t and s_{t+1}."""

    states: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_states: jax.Array


def sample_trajectory(env, policy, params, key: jax.Array, horizon: int) -> Trajectory:
    """One on-policy trajectory of length `horizon` from a start state drawn by `env.reset`."""
    key_reset, key_steps = jax.random.split(key)

    def step(state, key):
        key_action, key_env = jax.random.split(key)
        action = policy.sample(params, state, key_action)
        next_state, reward = env.step(state, action, key_env)
        return next_state, Trajectory(state, action, reward, next_state)

    _, trajectory = jax.lax.scan(step, env.reset(key_reset), jax.random.split(key_steps, horizon))
    return trajectory


def sample_trajectories(env, policy, params, key: jax.Array, n_trajectories: int, horizon: int) -> Trajectory:
    """`n_trajectories` independent trajectories, arrays [N, H, ...]."""
    keys = jax.random.split(key, n_trajectories)
    return jax.vmap(lambda k: sample_trajectory(env, policy, params, k, horizon))(keys)


def rollout_return(env, policy, params, state, action, key: jax.Array, horizon: int) -> jax.Array:
    """sum_{t < horizon} gamma^t r_t from (state, action), then following the policy: one Monte-Carlo Q sample.

    The return is accumulated in the scan carry, so many rollouts cost no memory for their paths.
    """
    key_first, key_rest = jax.random.split(key)
    state, first_reward = env.step(state, action, key_first)

    def step(carry, key):
        state, total, discount = carry
        key_action, key_env = jax.random.split(key)
        next_state, reward = env.step(state, policy.sample(params, state, key_action), key_env)
        return (next_state, total + discount * reward, discount * env.gamma), None

    carry0 = (state, first_reward, jnp.asarray(env.gamma, first_reward.dtype))
    (_, total, _), _ = jax.lax.scan(step, carry0, jax.random.split(key_rest, horizon - 1))
    return total
