"""The linear-Gaussian policy u = K x + std * e, e ~ N(0, I): the LQR policy class."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class LinearGaussianPolicy(eqx.Module):
    """Parameters are the gain K [m, n]; `std` is fixed (it defines the objective, see `mbpg.envs.LQR`).

    `reparameterised` and `infer_noise` are inverse to each other: value-gradient estimators (SVG) explain a real
    action by its noise and then differentiate the action with that noise held fixed.
    """

    std: float = eqx.field(static=True)

    def mean(self, gain: jax.Array, state: jax.Array) -> jax.Array:
        return gain @ state

    def reparameterised(self, gain: jax.Array, state: jax.Array, noise: jax.Array) -> jax.Array:
        return gain @ state + self.std * noise

    def infer_noise(self, gain: jax.Array, state: jax.Array, action: jax.Array) -> jax.Array:
        return (action - gain @ state) / self.std

    def sample(self, gain: jax.Array, state: jax.Array, key: jax.Array) -> jax.Array:
        return self.reparameterised(gain, state, jax.random.normal(key, (gain.shape[0],), state.dtype))

    def log_prob(self, gain: jax.Array, state: jax.Array, action: jax.Array) -> jax.Array:
        z = (action - gain @ state) / self.std
        dim = action.shape[-1]
        return -0.5 * jnp.sum(z * z) - dim * jnp.log(self.std) - 0.5 * dim * jnp.log(2 * jnp.pi)
