"""Monte-Carlo returns: the model-free sources of Q."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def discount_weights(horizon: int, gamma: float, dtype=jnp.float32) -> jax.Array:
    """[gamma^0, ..., gamma^(H-1)]."""
    return gamma ** jnp.arange(horizon, dtype=dtype)


def reward_to_go(rewards: jax.Array, gamma: float) -> jax.Array:
    """G_t = sum_{k >= t} gamma^(k-t) r_k along the last axis (a reverse scan, O(H))."""

    def backward(carry, reward):
        carry = reward + gamma * carry
        return carry, carry

    moved = jnp.moveaxis(rewards, -1, 0)
    _, returns = jax.lax.scan(backward, jnp.zeros_like(moved[0]), moved, reverse=True)
    return jnp.moveaxis(returns, 0, -1)


def discounted_return(rewards: jax.Array, gamma: float) -> jax.Array:
    """sum_t gamma^t r_t along the last axis."""
    return rewards @ discount_weights(rewards.shape[-1], gamma, rewards.dtype)


def effective_horizon(gamma: float, tolerance: float = 1e-3) -> int:
    """The smallest H with gamma^H <= tolerance: truncating there changes a discounted sum by at most that fraction."""
    if not (0.0 <= gamma < 1.0 and 0.0 < tolerance < 1.0):
        raise ValueError(f"effective_horizon needs 0 <= gamma < 1 and 0 < tolerance < 1; got gamma={gamma}, "
                         f"tolerance={tolerance}.")
    if gamma == 0.0:
        return 1
    horizon = max(1, math.ceil(math.log(tolerance) / math.log(gamma)))
    # The logarithms round: at tolerance = gamma^k exactly the quotient can land just above k.
    while horizon > 1 and gamma ** (horizon - 1) <= tolerance:
        horizon -= 1
    while gamma ** horizon > tolerance:
        horizon += 1
    return horizon
