"""Side streams of random keys: a key for a new consumer that no split of the same key hands out.

Why this exists: under `jax_threefry_partitionable` (JAX's default since 0.5; checked on jax 0.10.2)
`jax.random.fold_in(key, i)` IS `jax.random.split(key, n)[i]`, so folding a small integer into a key that is
also split gives one stream to two consumers. It happened here: PPO shuffled its first epoch with the bits its
model-gradient sampler drew from, and the selector's model trajectories ran on the real candidates' Q key.
`side_key` folds in a tag at or above 2**31, beyond any split a program makes, so the side stream is new.
"""

from __future__ import annotations

import zlib

import jax

SIDE_STREAM_BASE = 2**31


def side_key(key: jax.Array, name: str) -> jax.Array:
    """A key independent of `key`'s splits, named by its consumer (the same name, the same key)."""
    return jax.random.fold_in(key, SIDE_STREAM_BASE + (zlib.crc32(name.encode()) & (SIDE_STREAM_BASE - 1)))
