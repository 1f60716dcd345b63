"""Learned critics for the deep-RL algorithms: a state-value network (PPO/TRPO baselines and GAE) and twin
action-value networks (SAC, MBPO), plus Polyak averaging for their target copies.

Unlike the policies, a critic is its own parameter module (`critic(obs)`), because nothing else needs a
stateless descriptor for it: it is only ever evaluated and regressed.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from mbpg.policies.mlp import MLP, build_mlp, check_observation


class ValueNetwork(eqx.Module):
    """V(s) as an `MLP` with one output. The output layer keeps gain 1 (not the policy's 0.01): a value must be
    able to move to the scale of the returns quickly, and there is no uniform prior to preserve."""

    net: MLP
    obs_dim: int = eqx.field(static=True)

    def __init__(self, obs_dim: int, hidden: Sequence[int], key: jax.Array, activation: str = "tanh"):
        self.net = build_mlp(obs_dim, 1, hidden, key, activation, output_scale=1.0)
        self.obs_dim = int(obs_dim)

    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.net(check_observation(obs, self.obs_dim, "ValueNetwork"))[0]


class TwinQNetwork(eqx.Module):
    """Two independent Q(s, a) networks on the concatenated (s, a).

    Taking the minimum of two independently initialised critics in the target counters the overestimation that
    maximising through one noisy critic causes (clipped double Q, Fujimoto et al. 2018; SAC uses it too).
    """

    q1: MLP
    q2: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self, obs_dim: int, action_dim: int, hidden: Sequence[int], key: jax.Array, activation: str = "relu"
    ):
        key1, key2 = jax.random.split(key)
        self.q1 = build_mlp(obs_dim + action_dim, 1, hidden, key1, activation, output_scale=1.0)
        self.q2 = build_mlp(obs_dim + action_dim, 1, hidden, key2, activation, output_scale=1.0)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)

    def __call__(self, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        obs = check_observation(obs, self.obs_dim, "TwinQNetwork")
        action = jnp.asarray(action)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"TwinQNetwork takes ONE action of shape ({self.action_dim},), got {action.shape}; vmap over a "
                "batch, e.g. jax.vmap(critic)(observations, actions)."
            )
        x = jnp.concatenate([obs, action])
        return self.q1(x)[0], self.q2(x)[0]


def soft_update(target, online, tau):
    """target <- (1 - tau) target + tau online on every floating-point array leaf (Polyak averaging).

    A slowly moving target keeps the TD regression from chasing its own output. Non-float leaves (integer
    counters, static fields, functions) are taken from `target` unchanged: averaging them has no meaning.
    """
    if isinstance(tau, (int, float)) and not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1] (the weight of the online network), got {tau}; SAC uses 0.005.")
    target_arrays, target_rest = eqx.partition(target, eqx.is_inexact_array)
    online_arrays = eqx.filter(online, eqx.is_inexact_array)
    try:
        mixed = jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target_arrays, online_arrays)
    except ValueError as error:
        raise ValueError(
            "soft_update needs target and online networks of the same structure; create the target as a copy of "
            f"the online network (target = online) and update both with the same architecture. ({error})"
        ) from error
    return eqx.combine(mixed, target_rest)
