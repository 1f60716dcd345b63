"""TRPO's update (Schulman et al. 2015), written once for every algorithm that constrains a policy step by KL.

The caller supplies two closures over the policy parameters: `loss_fn(params)`, the surrogate to MINIMISE (for
TRPO, -mean(ratio * advantage) on the current batch), and `kl_fn(params)`, the mean KL(pi_old || pi_params) over
the batch's states with pi_old held fixed inside the closure (so kl_fn(params_old) = 0). Both work on any
Equinox/pytree parameters: only floating-point array leaves are updated; everything else (static fields,
activation functions, integer arrays) passes through unchanged. To freeze some arrays, close over them instead
of passing them in `params`.

Nothing here is jitted: closures change every iteration and `jax.jit` would retrace on each new one. Jit the
caller's whole update step instead; every loop here is a lax loop, so it compiles into that step.
"""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real)


def _tree_vdot(a, b) -> jax.Array:
    leaves = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(leaves, jnp.zeros(()))


def conjugate_gradient(matvec, b, iterations: int = 10, tolerance: float = 1e-10):
    """Approximately solve A x = b for symmetric positive-definite A given only x -> A x, with x and b pytrees.

    TRPO never forms the Fisher matrix (parameters^2 entries); CG needs only matrix-vector products and reaches
    a useful direction in ~10 of them. Stops after `iterations` steps or once the squared residual norm
    |b - A x|^2 falls below `tolerance` (the absolute criterion of the reference TRPO code). Starts from x = 0.
    """
    if not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}.")
    b_flat, unravel = ravel_pytree(b)

    def matvec_flat(x):
        out, _ = ravel_pytree(matvec(unravel(x)))
        if out.shape != b_flat.shape:
            raise ValueError(
                f"conjugate_gradient: matvec returned {out.shape[0]} numbers for a vector of {b_flat.shape[0]}; "
                "it must return a pytree of the same structure as b."
            )
        return out

    def cond(state):
        i, _, _, _, rr = state
        return (i < iterations) & (rr > tolerance)

    def body(state):
        i, x, r, p, rr = state
        ap = matvec_flat(p)
        p_ap = jnp.vdot(p, ap)
        # A zero curvature along p (only possible for a singular A) would divide by zero: take no step instead.
        alpha = jnp.where(p_ap != 0, rr / jnp.where(p_ap != 0, p_ap, 1), 0)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / rr) * p
        return i + 1, x, r, p, rr_new

    state = (jnp.zeros((), jnp.int32), jnp.zeros_like(b_flat), b_flat, b_flat, jnp.vdot(b_flat, b_flat))
    _, x, _, _, _ = jax.lax.while_loop(cond, body, state)
    return unravel(x)


def fisher_vector_product(kl_fn, params, vector, damping: float):
    """(H + damping I) v, with H the Hessian of kl_fn at params, by forward-over-reverse differentiation.

    At params = params_old the Hessian of KL(pi_old || pi) is the Fisher information of the policy, so this is
    the Fisher-vector product TRPO needs without materialising F. The damping keeps CG well posed where F is
    singular (parameters the batch does not touch), and bounds the step along badly estimated directions.

    `vector` has the structure of params' floating-point arrays (e.g. a gradient from `eqx.filter_grad`); the
    result has that structure too (None at the non-array leaves).
    """
    diff, static = eqx.partition(params, eqx.is_inexact_array)
    tangent = eqx.filter(vector, eqx.is_inexact_array)

    def kl_of(arrays):
        return kl_fn(eqx.combine(arrays, static))

    try:
        tangent = jax.tree.map(lambda t, p: jnp.asarray(t, p.dtype), tangent, diff)
    except ValueError as error:
        raise ValueError(
            "fisher_vector_product: vector must have the structure of params' floating-point arrays, like a "
            f"gradient from eqx.filter_grad(loss)(params). ({error})"
        ) from error
    _, hvp = jax.jvp(jax.grad(kl_of), (diff,), (tangent,))
    return jax.tree.map(lambda h, t: h + damping * t, hvp, tangent)


def trust_region_step(
    loss_fn,
    kl_fn,
    params,
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    damping: float = 0.1,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
):
    """One natural-gradient step of `loss_fn` inside the KL ball {kl_fn <= max_kl}.

    1. g = grad loss at params; x = CG solution of (F + damping I) x = -g, F the Hessian of kl_fn at params.
    2. Full step s = sqrt(2 max_kl / x^T (F + damping I) x) x: the step that puts the quadratic model of the
       KL exactly on the boundary.
    3. Try params + ratio^k s for k = 0, 1, ..., max_backtracks - 1; accept the first one whose real KL is
       <= max_kl and whose real loss is strictly below the current one. The quadratic model is only a model:
       without this check a step can overshoot the constraint or worsen the loss.

    If no trial is accepted, params are returned unchanged (bit for bit) with info["accepted"] False: a
    rejected step is a valid outcome (e.g. at a stationary point), not an error. Beware the near-stationary
    case: the step length is normalised to the KL ball whatever the gradient's size, so a gradient that is pure
    rounding noise still yields a full-size step, and the rounded loss may "improve" by ~1e-8. Check
    info["grad_norm"] when that matters.

    Returns (new_params, info) with info: accepted (bool), step_fraction (ratio^k of the accepted step, 0 if
    rejected), kl and improvement (of the returned params, 0 if rejected; improvement = loss_before -
    loss_after), expected_improvement (first-order prediction for the full step), backtracks (trials made),
    loss (before the step), grad_norm (of the surrogate's gradient).
    """
    checks = (
        ("max_kl", max_kl, lambda v: v > 0),
        ("damping", damping, lambda v: v >= 0),
        ("backtrack_ratio", backtrack_ratio, lambda v: 0 < v < 1),
    )
    for name, value, valid in checks:
        if _is_number(value) and not valid(value):
            raise ValueError(f"trust_region_step: {name}={value} is out of range (need max_kl > 0, damping >= 0, "
                             "0 < backtrack_ratio < 1); TRPO's defaults are 0.01, 0.1 and 0.8.")
    if not isinstance(max_backtracks, numbers.Integral) or max_backtracks < 1:
        raise ValueError(f"max_backtracks must be a positive integer, got {max_backtracks!r}.")

    diff, static = eqx.partition(params, eqx.is_inexact_array)
    if not jax.tree.leaves(diff):
        raise ValueError("trust_region_step: params contain no floating-point arrays to update.")

    def loss_of(arrays):
        return loss_fn(eqx.combine(arrays, static))

    def kl_of(arrays):
        return kl_fn(eqx.combine(arrays, static))

    loss_before, grad = jax.value_and_grad(loss_of)(diff)
    dtype = loss_before.dtype

    def fvp(vector):
        return fisher_vector_product(kl_of, diff, vector, damping)

    direction = conjugate_gradient(fvp, jax.tree.map(jnp.negative, grad), cg_iterations)
    curvature = _tree_vdot(direction, fvp(direction))
    # A zero direction (zero gradient) has zero curvature: step length 0, the trials cannot improve, rejected.
    positive = curvature > 0
    scale = jnp.where(positive, jnp.sqrt(2.0 * max_kl / jnp.where(positive, curvature, 1.0)), 0.0)
    full_step = jax.tree.map(lambda x: (scale * x).astype(x.dtype), direction)
    expected_improvement = -_tree_vdot(grad, full_step)

    def trial(fraction):
        return jax.tree.map(lambda p, s: p + (fraction * s).astype(p.dtype), diff, full_step)

    ratio = jnp.asarray(backtrack_ratio, dtype)

    def cond(state):
        k, accepted, *_ = state
        return (~accepted) & (k < max_backtracks)

    def body(state):
        k = state[0]
        fraction = ratio**k
        candidate = trial(fraction)
        loss_after, kl = loss_of(candidate), kl_of(candidate)
        improvement = loss_before - loss_after
        # `positive`: a zero step (zero gradient) only "improves" by the rounding between two compiled
        # evaluations of the same loss (2.5e-14 was seen accepted); it is a rejection.
        ok = positive & jnp.isfinite(loss_after) & jnp.isfinite(kl) & (kl <= max_kl) & (improvement > 0)
        return k + 1, ok, fraction, kl.astype(dtype), improvement.astype(dtype)

    zero = jnp.zeros((), dtype)
    state = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), zero, zero, zero)
    tries, accepted, fraction, kl, improvement = jax.lax.while_loop(cond, body, state)

    new_diff = jax.tree.map(lambda p, c: jnp.where(accepted, c, p), diff, trial(fraction))
    info = {
        "accepted": accepted,
        "step_fraction": jnp.where(accepted, fraction, zero),
        "kl": jnp.where(accepted, kl, zero),
        "improvement": jnp.where(accepted, improvement, zero),
        "expected_improvement": expected_improvement.astype(dtype),
        "backtracks": tries,
        "loss": loss_before,
        "grad_norm": jnp.sqrt(_tree_vdot(grad, grad)).astype(dtype),
    }
    return eqx.combine(new_diff, static), info
