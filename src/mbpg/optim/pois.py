"""The Renyi-penalised importance-sampling surrogate of POIS (Metelli et al. 2018, "Policy Optimization via
Importance Sampling") and the parabolic line search it is optimised with.

POIS collects one batch with behaviour parameters, then climbs, offline, a high-confidence lower bound on the
return of candidate parameters:

    L(theta') = 1/N sum_i w_i R_i  -  ||R||_inf sqrt((1 - delta) / delta) sqrt(d2 / N)

where w_i are importance weights (target over behaviour) and d2 is the exponentiated 2-Renyi divergence between
the target and behaviour distributions, d2(P || Q) = E_Q[(p/q)^2] = exp(D_2(P || Q)). d2 is also the variance
factor of the importance weights (Var_Q[w] = d2 - 1), which is why it bounds how far the new parameters may move
from the data: the penalty grows with the effective-sample-size loss, and the bound holds with probability
1 - delta. That guarantee is derived (Cantelli's inequality) for plain importance weights; with self-normalised
ones (POIS's default here) the same penalty is kept as a heuristic, not as a proven bound.

Divergences are returned in log space: across a trajectory of hundreds of steps they multiply, and the product
overflows float32 long before it matters.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp


def gaussian_log_d2(mean_p, std_p, mean_q, std_q) -> jax.Array:
    """log d2(P || Q) for diagonal Gaussians P = N(mean_p, std_p^2), Q = N(mean_q, std_q^2), summed over the last
    axis (independent dimensions multiply).

    With s2 = 2 std_q^2 - std_p^2, per dimension
        log d2 = (mean_p - mean_q)^2 / s2 + log(std_q^2 / std_p) - 0.5 log(s2)
    and d2 is infinite where s2 <= 0 (the integral of p^2/q diverges when P is more than sqrt(2) times wider
    than Q): that is returned as +inf, never NaN, so a line search sees "infinitely bad" and backs off.
    """
    var_p, var_q = jnp.square(std_p), jnp.square(std_q)
    s2 = 2.0 * var_q - var_p
    defined = s2 > 0
    safe = jnp.where(defined, s2, 1.0)
    per_dim = jnp.square(mean_p - mean_q) / safe + jnp.log(var_q / std_p) - 0.5 * jnp.log(safe)
    per_dim = jnp.where(defined, per_dim, jnp.inf)
    return jnp.sum(per_dim, axis=-1)


def categorical_log_d2(log_p, log_q) -> jax.Array:
    """log d2(P || Q) = log sum_a p_a^2 / q_a for categorical distributions over the last axis, from their
    log-probabilities (`jax.nn.log_softmax` of the logits). From probabilities it was NaN once a near-deterministic
    policy's small probabilities underflowed to 0 (2 log 0 - log 0), at a logit gap of about 104 in float32."""
    return jax.nn.logsumexp(2.0 * log_p - log_q, axis=-1)


def penalty_coefficient(delta: float) -> float:
    """sqrt((1 - delta) / delta): the Cantelli-inequality factor of a bound that holds with probability 1 - delta."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1) (the bound holds with probability 1 - delta); got {delta}.")
    return ((1.0 - delta) / delta) ** 0.5


def importance_weights(log_ratios: jax.Array, self_normalised: bool) -> jax.Array:
    """Per-sample weights from log(target / behaviour). Self-normalised weights (summing to N) trade a small
    bias for a variance that cannot exceed the returns' range."""
    if self_normalised:
        return log_ratios.shape[0] * jax.nn.softmax(log_ratios)
    return jnp.exp(log_ratios)


def surrogate_bound(log_ratios: jax.Array, returns: jax.Array, log_d2: jax.Array, delta: float,
                    return_bound: jax.Array, self_normalised: bool = False) -> jax.Array:
    """The POIS lower bound L for one batch of N samples.

    `return_bound` plays ||R||_inf; `log_d2` is the log of the (estimated or exact) divergence of the whole
    sample distribution.
    """
    n = returns.shape[0]
    weights = importance_weights(log_ratios, self_normalised)
    penalty = return_bound * penalty_coefficient(delta) * jnp.sqrt(jnp.exp(log_d2) / n)
    return jnp.mean(weights * returns) - penalty


def parabolic_line_search(objective: Callable[[jax.Array], jax.Array], value0: jax.Array, slope0: jax.Array,
                          step: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    """Maximise phi(alpha) = objective(alpha) along a search direction by repeated parabolic fits.

    phi is known at 0 (`value0`) with derivative `slope0 > 0`. Each iteration evaluates phi at a trial step and
    fits the parabola through phi(0), phi'(0) and that point: if it curves down its vertex is the next trial,
    otherwise the trial step is doubled (the bound is still rising). Non-finite values (an infinite divergence)
    halve the step. Returns the best (alpha, phi(alpha)) seen, alpha = 0 if nothing improved: POIS's rule that
    an offline step never lowers the bound.
    """

    def body(carry, _):
        trial, best_alpha, best_value = carry
        value = objective(trial)
        finite = jnp.isfinite(value)
        curvature = (value - value0 - slope0 * trial) / jnp.square(trial)
        vertex = -slope0 / (2.0 * curvature)
        next_trial = jnp.where(~finite, 0.5 * trial,
                               jnp.where(curvature < 0, jnp.clip(vertex, 0.1 * trial, 4.0 * trial), 2.0 * trial))
        better = finite & (value > best_value)
        return (next_trial, jnp.where(better, trial, best_alpha), jnp.where(better, value, best_value)), None

    zero = jnp.zeros_like(step)
    (_, alpha, value), _ = jax.lax.scan(body, (step, zero, value0), None, length=iterations)
    return alpha, value


def ascend_bound(bound: Callable, params, iterations: int, line_search_iterations: int, tolerance: float,
                 precondition: Callable | None = None):
    """Offline POIS optimisation: from the behaviour parameters, repeat {gradient (natural when `precondition`
    is given), parabolic line search} while the bound gains more than `tolerance`.

    Runs inside jit with a fixed iteration budget; once a step gains less than `tolerance` the remaining
    iterations leave the parameters unchanged. Returns (params, bound value, iterations that moved).
    """
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def objective(x):
        return bound(unravel(x))

    def body(carry, _):
        x, value, step, active, moved = carry
        gradient = jax.grad(objective)(x)
        direction = precondition(unravel(x), unravel(gradient)) if precondition else unravel(gradient)
        direction = jax.flatten_util.ravel_pytree(direction)[0]
        direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-12)
        slope = jnp.dot(gradient, direction)
        alpha, new_value = parabolic_line_search(lambda a: objective(x + a * direction), value, slope, step,
                                                 line_search_iterations)
        gain = new_value - value
        take = active & (alpha > 0) & (slope > 0)
        x = jnp.where(take, x + alpha * direction, x)
        value = jnp.where(take, new_value, value)
        step = jnp.where(alpha > 0, alpha, 0.5 * step)
        return (x, value, step, active & take & (gain > tolerance), moved + take), None

    value0 = objective(flat)
    carry0 = (flat, value0, jnp.asarray(0.1, flat.dtype), jnp.ones((), bool), jnp.zeros((), jnp.int32))
    (x, value, _, _, moved), _ = jax.lax.scan(body, carry0, None, length=iterations)
    return unravel(x), value, moved
