"""Sampling helpers shared by environments, policies and critics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def categorical(key: jax.Array, probs: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """Draw indices from probability rows `probs` [..., K] by inverting the CDF with one uniform per draw.

    jax.random.categorical spends K Gumbel variates per draw; random bits dominate the cost of tabular rollouts
    on CPU, so one uniform is several times faster for our sizes. A zero-probability index is never drawn except
    through float rounding at the top of the CDF, which the clip sends to the last positive-probability index.
    """
    probs = jnp.asarray(probs)
    batch = shape or probs.shape[:-1]
    uniform = jax.random.uniform(key, batch, dtype=probs.dtype)
    cdf = jnp.cumsum(probs, axis=-1)
    index = jnp.sum(uniform[..., None] * cdf[..., -1:] >= cdf, axis=-1)
    last_positive = probs.shape[-1] - 1 - jnp.argmax(jnp.flip(probs > 0, axis=-1), axis=-1)
    return jnp.minimum(index, last_positive).astype(jnp.int32)
