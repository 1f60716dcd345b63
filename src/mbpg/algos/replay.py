"""A fixed-capacity circular replay buffer as a pytree, so adding and sampling stay inside jit."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class Replay(eqx.Module):
    data: dict
    position: jax.Array
    size: jax.Array

    @staticmethod
    def create(example: dict, capacity: int) -> "Replay":
        data = {k: jnp.zeros((capacity,) + jnp.shape(v), jnp.asarray(v).dtype) for k, v in example.items()}
        return Replay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return next(iter(self.data.values())).shape[0]

    def add(self, item: dict) -> "Replay":
        data = {k: v.at[self.position].set(item[k]) for k, v in self.data.items()}
        return Replay(data, (self.position + 1) % self.capacity, jnp.minimum(self.size + 1, self.capacity))

    def sample(self, key: jax.Array, batch_size: int) -> dict:
        indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        return {k: v[indices] for k, v in self.data.items()}

    def sample_recent(self, key: jax.Array, batch_size: int) -> dict:
        """Uniform over the `size` most recently written rows, counted back from `position`: the buffer then
        keeps fewer rows than it holds when `size` is lowered below the rows written (MBPO's model buffer, whose
        retention follows the rollout length). Same draws as `sample`, other rows, so `sample` stays the default."""
        back = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        indices = (self.position - 1 - back) % self.capacity
        return {k: v[indices] for k, v in self.data.items()}
