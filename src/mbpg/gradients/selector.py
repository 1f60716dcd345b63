"""The adaptive gradient selector: mix one update's candidate gradient estimates to minimise an unbiased
estimate of the mix's mean squared error.

Why this works without knowing the truth: every candidate k (MFG, MVG, FMG) is an average of per-trajectory
contributions, and the first candidate (MFG) is unbiased. For any fixed weights w, with g_w = sum_k w_k g_k,

    E ||g_w - g_0||^2 = MSE(g_w) + tr Var(g_0) - 2 tr Cov(g_w, g_0),

so  MSE^(w) = ||g_w - g_0||^2 + 2 sum_k w_k C^_k0 - C^_00  is an unbiased estimate of MSE(g_w), where C^_k0 is the
sample covariance (trace) between candidate k's and MFG's estimate, computed over the same trajectories. The
model-based candidates' bias and variance enter through ||g_w - g_0||^2; MFG's own noise is subtracted. The
selector minimises MSE^(w) over the probability simplex (a convex QP; K is small, so it is solved exactly by
enumerating faces). docs/selector.md has the derivation, each term's estimator, and what is and is not unbiased.

This module is the pure part (per-trajectory contributions in, mixed gradient and diagnostics out; jittable and
vmappable), used inside algorithms' updates (`mbpg.algos.model_gradients`, REINFORCE's `--gradient auto`) and by
the lab's "auto" estimator (`mbpg.lab.selector`).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Selection(NamedTuple):
    """What the selector estimated and chose at one update (arrays over the K candidates).

    bias2 is the unbiased estimate ||g_k - g_0||^2 - tr Var^(g_k - g_0): it is negative when a candidate's bias is
    below the noise floor. mse = bias2 + variance, the estimated MSE of using candidate k alone.
    """

    weights: jax.Array
    bias2: jax.Array
    variance: jax.Array
    mse: jax.Array
    mixed_mse: jax.Array


def select_gradient(contributions, independent: Sequence[bool] | None = None):
    """The minimum-estimated-MSE convex mix of K candidate gradient estimates, and why.

    contributions: a pytree (e.g. the policy's gradient pytree) whose leaves have leading axes [K, N]: candidate
        k's estimate is the mean over the N per-trajectory contributions. Candidate 0 must be unbiased (MFG).
        Candidates whose contributions come from the same N real trajectories as candidate 0 (MVG) are paired
        with it trajectory by trajectory; the pairing is what lets their bias be estimated precisely.
    independent: per candidate, True if its contributions come from separate data (FMG's model rollouts), so
        its covariance with candidate 0 is exactly 0 and is not estimated. Default: all False.
    Returns (gradient, Selection): gradient has the leaves' shapes without the [K, N] axes.
    """
    leaves = jax.tree.leaves(contributions)
    if not leaves:
        raise ValueError("contributions is empty; pass per-trajectory gradients with leading axes [K, N].")
    k, n = leaves[0].shape[:2]
    if any(leaf.shape[:2] != (k, n) for leaf in leaves):
        raise ValueError(f"every leaf of contributions needs the same leading axes [K, N]; got "
                         f"{[leaf.shape[:2] for leaf in leaves]}.")
    flat = jnp.concatenate([leaf.reshape(k, n, -1) for leaf in leaves], axis=-1)
    selection = selection_from_flat(flat, independent)
    gradient = jax.tree.map(lambda leaf: _mix(selection.weights, leaf.mean(1)), contributions)
    return gradient, selection


def _mix(weights: jax.Array, means: jax.Array) -> jax.Array:
    """sum_k w_k g_k over the candidates' means [K, ...]; a candidate with weight 0 adds exactly 0, even where
    its mean is not finite (0 * inf would be NaN)."""
    unused = (weights <= 0).reshape((-1,) + (1,) * (means.ndim - 1))
    return jnp.tensordot(weights.astype(means.dtype), jnp.where(unused, 0.0, means), 1)


def selection_from_flat(flat: jax.Array, independent: Sequence[bool] | None = None) -> Selection:
    """`select_gradient` on contributions already flattened to [K, N, P]."""
    gram, cross, variance = _moments(flat, independent)
    # b_0 = 0 by definition (the formula gives 0 up to rounding). E||g_k - g_0||^2 = b_k^2 + tr Var(g_k - g_0).
    bias2 = (jnp.diag(gram) - (variance - 2 * cross + variance[0])).at[0].set(0.0)
    # A candidate whose moments overflow (float32 squares of a gradient beyond ~1e19: an FMG on a model where
    # the policy diverges) gets weight 0 instead of turning every weight into NaN; without MFG's, nothing is known.
    usable = jnp.isfinite(jnp.diag(gram)) & jnp.isfinite(cross) & jnp.isfinite(variance)
    gram = jnp.where(usable[:, None] & usable[None, :], gram, 0.0)
    cross = jnp.where(usable, cross, 0.0)
    weights = jnp.where(usable[0], simplex_qp(gram, cross, allowed=usable), jnp.nan)
    return Selection(weights, bias2, variance, bias2 + variance, _risk(gram, cross, variance[0], weights))


def estimated_mse(flat: jax.Array, weights: jax.Array, independent: Sequence[bool] | None = None) -> jax.Array:
    """The unbiased estimate MSE^(w) of the mix with fixed `weights` (on the simplex), from contributions
    [K, N, P]; the selector minimises this over w. Exposed so that its unbiasedness can be tested directly."""
    gram, cross, variance = _moments(flat, independent)
    return _risk(gram, cross, variance[0], weights)


def _moments(flat: jax.Array, independent: Sequence[bool] | None):
    """From contributions [K, N, P]: the Gram matrix of the differences g_k - g_0 of the candidates' means, the
    traced covariances C^_k0 = tr Cov^(g_k, g_0) and the variances C^_kk = tr Var^(g_k) of the means (sample
    covariances with ddof 1, unbiased for i.i.d. trajectories, divided by N)."""
    k, n = flat.shape[:2]
    if n < 2:
        raise ValueError(f"the selector estimates variances across trajectories and needs N >= 2 per candidate; "
                         f"got N = {n}.")
    independent = (False,) * k if independent is None else tuple(bool(i) for i in independent)
    if len(independent) != k or independent[0]:
        raise ValueError(f"independent needs one flag per candidate ({k}), and candidate 0 (the unbiased "
                         f"reference) cannot be independent of itself; got {independent}.")
    means = flat.mean(1)  # [K, P]
    centred = flat - means[:, None]
    cross = jnp.einsum("knp,np->k", centred, centred[0]) / ((n - 1) * n)
    cross = jnp.where(jnp.asarray(independent), 0.0, cross)  # separate data: exactly 0, not estimated
    variance = jnp.einsum("knp,knp->k", centred, centred) / ((n - 1) * n)
    differences = means - means[0]
    return differences @ differences.T, cross, variance


def _risk(gram, cross, reference_variance, weights):
    """MSE^(w) = ||g_w - g_0||^2 + 2 sum_k w_k C^_k0 - C^_00 (uses sum_k w_k = 1)."""
    return weights @ gram @ weights + 2 * weights @ cross - reference_variance


def simplex_qp(quadratic: jax.Array, linear: jax.Array, allowed: jax.Array | None = None) -> jax.Array:
    """argmin of w^T Q w + 2 c^T w over {w >= 0, sum w = 1}, exactly, for a small K (Q symmetric PSD).

    The minimiser lies in the relative interior of some face of the simplex and is stationary there, so it solves
    that face's KKT system [[Q_SS, 1], [1^T, 0]] [w_S; mu] = [-c_S; 1]. Every face is solved (2^K - 1 small
    systems); the feasible solution with the lowest objective is the answer. Vertices are always feasible and
    their systems never singular, so one always exists. A face whose system is singular is skipped: its minimisers
    form an affine set that reaches the face's boundary, so a smaller face attains the same minimum. Singularity
    is judged against the face's own Q_SS scale, not the constraint's 1s: with candidates whose scales differ by
    1e5 or more, a good face of small ones was once skipped. `allowed` [K] (default all): faces using a
    candidate outside it are not considered (at least one allowed candidate is needed).
    """
    k = linear.shape[0]
    if k > 8:
        raise ValueError(f"simplex_qp enumerates 2^K faces and is meant for a few candidates; got K = {k}.")
    # Scale-free: the weights do not change when Q and c are multiplied by a positive number.
    scale = jnp.maximum(jnp.maximum(jnp.abs(jnp.diag(quadratic)).max(), jnp.abs(linear).max()), 1e-30)
    q, c = quadratic / scale, linear / scale
    masks = jnp.asarray(np.array(list(itertools.product((0.0, 1.0), repeat=k))[1:]), q.dtype)  # [F, K]

    def face(mask):
        block = q * mask[:, None] * mask[None, :]
        system = jnp.block([[block + jnp.diag(1.0 - mask), mask[:, None]],
                            [mask[None, :], jnp.zeros((1, 1), q.dtype)]])
        rhs = jnp.concatenate([-c * mask, jnp.ones(1, q.dtype)])
        solution, singular = _solve_small(system, rhs, scale=jnp.abs(block).max())
        residual = jnp.abs(system @ solution - rhs).max()
        w = solution[:k] * mask
        feasible = (w >= -1e-5).all() & (residual < 1e-4) & ~singular
        w = jnp.clip(w, 0.0, None)
        w = w / jnp.maximum(w.sum(), 1e-30)
        if allowed is not None:
            feasible = feasible & ~jnp.any((mask > 0) & ~allowed)
        return w, jnp.where(feasible, w @ q @ w + 2 * c @ w, jnp.inf)

    weights, values = jax.vmap(face)(masks)
    return weights[jnp.argmin(values)]


def _solve_small(a: jax.Array, b: jax.Array, scale: jax.Array):
    """(x with a x = b, whether a is numerically singular) for a small square a, by Gauss-Jordan elimination with
    partial pivoting unrolled in plain jnp ops. A pivot is singular below 10 n eps times `scale`, which may be
    legitimately tiny (a face of small candidates beside a huge one).

    Why not jnp.linalg: batched LAPACK kernels (jaxlib 0.10.2 on CPU) split the batch over XLA's intra-op thread
    pool and block in it; two such kernels running at once (the two halves of a cross-fitted selection, under
    vmap) took every pool thread on 2 cores and waited for each other forever."""
    n = a.shape[0]
    rows = jnp.arange(n)
    augmented = jnp.concatenate([a, b[:, None]], 1)
    tolerance = 10 * n * jnp.finfo(a.dtype).eps * jnp.maximum(scale, jnp.finfo(a.dtype).tiny)
    singular = jnp.zeros((), bool)
    for col in range(n):
        pivot = jnp.argmax(jnp.where(rows >= col, jnp.abs(augmented[:, col]), -1.0))
        order = rows.at[col].set(pivot).at[pivot].set(col)
        augmented = augmented[order]
        value = augmented[col, col]
        small = jnp.abs(value) <= tolerance
        singular = singular | small
        augmented = augmented.at[col].divide(jnp.where(small, 1.0, value))
        eliminate = jnp.where(rows == col, 0.0, augmented[:, col])
        augmented = augmented - eliminate[:, None] * augmented[col][None, :]
    return augmented[:, n], singular


def describe(selection: Selection, names: Sequence[str]) -> str:
    """One log line: the weights, and per candidate the estimated bias^2, variance and MSE behind them."""
    parts = [f"{name} w={float(w):.2f} (bias2 {float(b):.3g}, var {float(v):.3g}, mse {float(m):.3g})"
             for name, w, b, v, m in zip(names, selection.weights, selection.bias2, selection.variance,
                                         selection.mse)]
    return f"auto: est. MSE of the mix {float(selection.mixed_mse):.3g} | " + "; ".join(parts)


CROSS_FIT_MIN_UNITS = 4
"""The fewest units (trajectories or environments) cross-fitting can use: two halves of two. A training step's
`auto` cross-fits from here on and uses in-sample weights below (docs/selector.md, "One estimate or a training
run"): in-sample weights follow MFG's noise, which lowers one estimate's MSE (the atlas before FMG got its side
key: mean 98.5 vs 134 when cross-fitted) but tilts every step of a run the same way (the gridworld learns more
slowly, 20 seeds)."""


FORCED_CROSS_FIT = {"auto-cf": True, "auto-is": False}
"""The selector's names with cross-fitting forced on (auto-cf) or off (auto-is, in-sample weights), for the lab and
the agents alike; plain auto is in-sample as a one-off estimate and follows `cross_fits` in training."""


def cross_fits(n_units: int, cross_fit: bool | None = None) -> bool:
    """Whether the selector cross-fits with n_units: `cross_fit` when given, else whenever it can (training's
    rule: n_units >= CROSS_FIT_MIN_UNITS)."""
    return n_units >= CROSS_FIT_MIN_UNITS if cross_fit is None else bool(cross_fit)


def select_gradient_auto(contributions, independent: Sequence[bool] | None = None, cross_fit: bool | None = None):
    """The selector as `auto` runs it: `select_gradient_cross_fitted` or `select_gradient`, by `cross_fits`."""
    n = jax.tree.leaves(contributions)[0].shape[1]
    select = select_gradient_cross_fitted if cross_fits(n, cross_fit) else select_gradient
    return select(contributions, independent)


def unit_weights(contributions, independent: Sequence[bool] | None = None, cross_fit: bool | None = None):
    """`select_gradient_auto` as one weight per candidate and unit, (weights [K, N], Selection): for a step that
    mixes the candidates inside a surrogate (see `cross_fitted_unit_weights`)."""
    k, n = jax.tree.leaves(contributions)[0].shape[:2]
    if cross_fits(n, cross_fit):
        return cross_fitted_unit_weights(contributions, independent)
    _, selection = select_gradient(contributions, independent)
    return jnp.broadcast_to(selection.weights[:, None], (k, n)), selection


def select_gradient_cross_fitted(contributions, independent: Sequence[bool] | None = None):
    """`select_gradient` with the weights of each half of the trajectories chosen on the OTHER half.

    Why: the minimiser of MSE^(w) is chosen on the same noise it is then applied to, so with few trajectories
    and many parameters it leans toward whichever candidate's noise happens to agree with MFG's (the selection's
    optimism, measured in the atlas report). Cross-fitting makes each half's weights independent of that half's
    estimates, at the price of choosing from N/2 trajectories. Returns (gradient, Selection) where the Selection's
    weights are the two halves' average w̄ and its other fields come from all N trajectories; its mixed_mse is
    MSE^(w̄), a summary, not an estimate for the returned gradient (each half mixed with the other's weights).
    Needs N >= 4.
    """
    first, second, on_first, on_second = _half_selections(contributions, independent)

    def mix(leaf_first, leaf_second):
        return 0.5 * (_mix(on_second.weights, leaf_first.mean(1)) + _mix(on_first.weights, leaf_second.mean(1)))

    gradient = jax.tree.map(mix, first, second)
    return gradient, _cross_fitted_selection(contributions, independent, on_first, on_second)


def cross_fitted_unit_weights(contributions, independent: Sequence[bool] | None = None):
    """The cross-fitted mix as one weight per candidate and unit: (weights [K, N], Selection) with
    sum_k mean_n weights[k, n] c_kn equal to `select_gradient_cross_fitted`'s gradient.

    Why per unit: an algorithm whose step is not "add the gradient" (TRPO's trust region, PPO's clipped epochs)
    mixes the candidates inside its surrogate, sum_k mean_n w_kn L_kn; at the current policy that surrogate's
    gradient is the mix. Units of the first half carry the weights chosen on the second half and vice versa,
    scaled so that each half counts one half whatever N's parity.
    """
    first, second, on_first, on_second = _half_selections(contributions, independent)
    half, n = jax.tree.leaves(first)[0].shape[1], jax.tree.leaves(contributions)[0].shape[1]
    weights = jnp.concatenate([jnp.repeat(on_second.weights[:, None] * (n / (2 * half)), half, axis=1),
                               jnp.repeat(on_first.weights[:, None] * (n / (2 * (n - half))), n - half, axis=1)],
                              axis=1)
    return weights, _cross_fitted_selection(contributions, independent, on_first, on_second)


def _half_selections(contributions, independent):
    """The two halves of the units (the first n // 2, the rest) and the selection made on each."""
    leaves = jax.tree.leaves(contributions)
    n = leaves[0].shape[1] if leaves else 0
    if n < 4:
        raise ValueError(f"cross-fitting selects on each half of the trajectories and needs N >= 4; got N = {n}.")
    half = n // 2
    first = jax.tree.map(lambda x: x[:, :half], contributions)
    second = jax.tree.map(lambda x: x[:, half:], contributions)
    return first, second, select_gradient(first, independent)[1], select_gradient(second, independent)[1]


def _cross_fitted_selection(contributions, independent, on_first, on_second) -> Selection:
    """The Selection reported for a cross-fitted mix: the estimates from all N units, the halves' mean weights
    and the estimated MSE of mixing with those."""
    leaves = jax.tree.leaves(contributions)
    k, n = leaves[0].shape[:2]
    _, overall = select_gradient(contributions, independent)
    weights = 0.5 * (on_first.weights + on_second.weights)
    flat = jnp.concatenate([leaf.reshape(k, n, -1) for leaf in leaves], axis=-1)
    return overall._replace(weights=weights, mixed_mse=estimated_mse(flat, weights, independent))
