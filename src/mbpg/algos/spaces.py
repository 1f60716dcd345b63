"""What an agent needs to know about an environment's spaces, read once from a functional env."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs.autoreset import observe


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    obs_dim: int
    discrete: bool
    n_actions: int  # discrete only
    action_dim: int  # continuous only
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def clip(self, action):
        """The action the environment receives: continuous actions are clipped to the box (the policy's own
        log-probability is of the unclipped sample, as is standard for Gaussian policies)."""
        if self.discrete:
            return action
        return jnp.clip(action, jnp.asarray(self.action_low), jnp.asarray(self.action_high))


def env_spec(env) -> EnvSpec:
    import gymnasium

    observation_space = getattr(env, "observation_space", None)
    if isinstance(observation_space, gymnasium.spaces.Box):
        shape = observation_space.shape
    else:
        shape = np.shape(observe(env, env.reset(jax.random.key(0))))
    if len(shape) != 1:
        raise ValueError(f"deep-RL agents need flat vector observations; this env observes shape {shape}. "
                         "Flatten it (gymnasium.wrappers.FlattenObservation) or use a vector-observation env.")
    space = getattr(env, "action_space", None)
    if space is None:
        raise ValueError(f"{type(env).__name__} has no action_space; deep-RL agents need one (Discrete or Box).")
    if isinstance(space, gymnasium.spaces.Discrete):
        return EnvSpec(int(shape[0]), True, int(space.n), 0, (), ())
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return EnvSpec(int(shape[0]), False, 0, int(space.shape[0]), tuple(map(float, space.low)),
                       tuple(map(float, space.high)))
    raise ValueError(f"unsupported action space {space}; use Discrete or a 1-D Box.")
