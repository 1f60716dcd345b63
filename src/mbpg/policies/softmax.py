"""The tabular softmax policy: pi(a|s) = exp(theta[s, a]) / sum_b exp(theta[s, b])."""

from __future__ import annotations

import equinox as eqx
import jax

from mbpg.distributions import categorical


class SoftmaxPolicy(eqx.Module):
    """Parameters are logits [S, A]; the policy object itself carries no state, so it can be static under jit."""

    def probs(self, logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, axis=-1)

    def sample(self, logits: jax.Array, state: jax.Array, key: jax.Array) -> jax.Array:
        return categorical(key, jax.nn.softmax(logits[state]))

    def log_prob(self, logits: jax.Array, state: jax.Array, action: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(logits[state])[action]
