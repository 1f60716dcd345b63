"""Stepping functional environments with Gymnasium 1.x episode semantics, inside jit.

`terminated` (a true terminal state: do not bootstrap) and `truncated` (the time limit: bootstrap from the last
observation) are kept apart, and a finished episode is reset in the same step, so a batch of environments can be
scanned for any number of steps without leaving the compiled program.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def observe(env, state):
    """The observation of a state (the state itself for envs without an `observation` method)."""
    method = getattr(env, "observation", None)
    return method(state) if method is not None else state


def is_terminal(env, state) -> jax.Array:
    method = getattr(env, "is_terminal", None)
    return method(state) if method is not None else jnp.zeros((), bool)


def episode_limit(env, default: int = 1000) -> int:
    limit = getattr(env, "max_episode_steps", None)
    return int(limit) if limit else default


class EnvState(NamedTuple):
    """One environment's running episode: its state, observation, step count and return so far."""

    state: jax.Array
    obs: jax.Array
    t: jax.Array
    episode_return: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array  # the true next observation, also at an episode's end (before the reset)
    terminated: jax.Array
    # The time limit cut a running episode: set only where the step did not also terminate (Gymnasium's TimeLimit
    # then reports both). Termination takes precedence, so truncated always means "bootstrap from next_obs".
    truncated: jax.Array
    episode_return: jax.Array  # the finished episode's return where terminated | truncated, else 0


def reset(env, key: jax.Array) -> EnvState:
    state = env.reset(key)
    obs = observe(env, state)
    return EnvState(state, obs, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))


def step(env, env_state: EnvState, action, key: jax.Array, limit: int) -> tuple[EnvState, Transition]:
    key_step, key_reset = jax.random.split(key)
    next_state, reward = env.step(env_state.state, action, key_step)
    next_obs = observe(env, next_state)
    terminated = is_terminal(env, next_state)
    t = env_state.t + 1
    truncated = (t >= limit) & ~terminated
    done = terminated | truncated
    episode_return = env_state.episode_return + jnp.asarray(reward, env_state.episode_return.dtype)  # x64-safe
    fresh = reset(env, key_reset)
    carried = EnvState(next_state, next_obs, t, episode_return)
    new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, carried)
    transition = Transition(env_state.obs, action, jnp.asarray(reward, jnp.float32), next_obs, terminated,
                            truncated, jnp.where(done, episode_return, 0.0))
    return new_state, transition


def evaluate(env, act, params, key: jax.Array, n_episodes: int, limit: int) -> jax.Array:
    """Undiscounted returns of `n_episodes` complete episodes under `act(params, obs, key) -> action`."""

    def episode(key):
        key_reset, key_steps = jax.random.split(key)

        def body(carry, key):
            env_state, total, alive = carry
            key_act, key_env = jax.random.split(key)
            env_state_next, transition = step(env, env_state, act(params, env_state.obs, key_act), key_env, limit)
            total = total + jnp.where(alive, transition.reward, 0.0)
            alive = alive & ~(transition.terminated | transition.truncated)
            return (env_state_next, total, alive), None

        carry0 = (reset(env, key_reset), jnp.zeros((), jnp.float32), jnp.ones((), bool))
        (_, total, _), _ = jax.lax.scan(body, carry0, jax.random.split(key_steps, limit))
        return total

    return jax.vmap(episode)(jax.random.split(key, n_episodes))
