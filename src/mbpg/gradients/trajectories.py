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


class Episodes(NamedTuple):
    """Whole episodes of a terminating environment, arrays [N, H, ...]; `alive[t]` is False for the padding steps
    after an episode terminated (their entries are not part of the episode)."""

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    alive: jax.Array


def collect_episodes(env, act, params, key: jax.Array, n_episodes: int, horizon: int,
                     params_axis: int | None = None) -> Episodes:
    """`n_episodes` episodes of at most `horizon` steps under `act(params, obs, key) -> (policy_output, env_action)`.

    The policy output (what a likelihood is computed of, e.g. a Gaussian sample before clipping) is stored as the
    action; the environment receives `env_action`. With `params_axis=0`, `params` holds one parameter set per
    episode (parameter-based exploration, P-POIS). Episodes run in lock-step for `horizon` steps and are masked
    after termination (the terminal state is repeated), so the batch has a static shape.
    """
    from mbpg.envs.autoreset import is_terminal, observe

    def episode(params, key):
        key_reset, key_steps = jax.random.split(key)

        def step(carry, key):
            state, alive = carry
            key_act, key_env = jax.random.split(key)
            obs = observe(env, state)
            output, env_action = act(params, obs, key_act)
            next_state, reward = env.step(state, env_action, key_env)
            # After termination the state is held, not stepped on: padding must stay finite (a cart-pole left
            # falling for hundreds of steps overflows, and 0 * inf poisons masked sums and their gradients).
            next_state = jax.tree.map(lambda new, old: jnp.where(alive, new, old), next_state, state)
            return (next_state, alive & ~is_terminal(env, next_state)), Episodes(obs, output, reward, alive)

        start = (env.reset(key_reset), jnp.ones((), bool))
        return jax.lax.scan(step, start, jax.random.split(key_steps, horizon))[1]

    keys = jax.random.split(key, n_episodes)
    return jax.vmap(episode, in_axes=(params_axis, 0))(params, keys)
