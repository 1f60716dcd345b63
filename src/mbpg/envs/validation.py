"""Input checks shared by the environments: each error names the argument, the problem and the fix."""

from __future__ import annotations

import math

import jax
import numpy as np


def is_concrete(*arrays) -> bool:
    """True when no array is a tracer, i.e. the values can be checked now (not inside jit/vmap/grad)."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def as_leaf(value):
    """Concrete inputs are kept as float64 NumPy arrays, so exact oracles see the numbers the user gave even when
    JAX runs in float32; tracers (an env built inside jit/vmap) pass through. Index them via jnp.asarray."""
    if isinstance(value, jax.core.Tracer):
        return value
    return np.asarray(value, dtype=np.float64)


def check_gamma(gamma) -> float:
    try:
        value = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number in [0, 1); got {gamma!r}.") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(
            f"gamma must lie in [0, 1) (a discounted, continuing problem); got {value}. "
            "Use e.g. gamma=0.99 for long horizons."
        )
    return value


def check_finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} contains a non-finite value ({array[where]}) at index {where}.")


def check_shape(name: str, array: np.ndarray, shape: tuple[int, ...], meaning: str) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({meaning}); got {array.shape}.")
