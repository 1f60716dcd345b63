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

Two parts: the pure selector (`select_gradient`: per-trajectory contributions in, mixed gradient and diagnostics
out; jittable and vmappable, for an algorithm's update as much as for the lab), and `AutoEstimator`, which makes
the selector a lab estimator named "auto" (candidate contributions from one draw of real trajectories).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.gradients import EstimatorOptions, get_estimator, sample_trajectories, score_function_gradient
from mbpg.gradients.estimators import score_signal


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
    gradient = jax.tree.map(lambda leaf: jnp.tensordot(selection.weights.astype(leaf.dtype), leaf.mean(1), 1),
                            contributions)
    return gradient, selection


def selection_from_flat(flat: jax.Array, independent: Sequence[bool] | None = None) -> Selection:
    """`select_gradient` on contributions already flattened to [K, N, P]."""
    gram, cross, variance = _moments(flat, independent)
    # b_0 = 0 by definition (the formula gives 0 up to rounding). E||g_k - g_0||^2 = b_k^2 + tr Var(g_k - g_0).
    bias2 = (jnp.diag(gram) - (variance - 2 * cross + variance[0])).at[0].set(0.0)
    weights = simplex_qp(gram, cross)
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


def simplex_qp(quadratic: jax.Array, linear: jax.Array) -> jax.Array:
    """argmin of w^T Q w + 2 c^T w over {w >= 0, sum w = 1}, exactly, for a small K (Q symmetric PSD).

    The minimiser lies in the relative interior of some face of the simplex and is stationary there, so it solves
    that face's KKT system [[Q_SS, 1], [1^T, 0]] [w_S; mu] = [-c_S; 1]. Every face is solved (2^K - 1 small
    systems, by pseudo-inverse so that singular faces give their minimum-norm stationary point); the feasible
    solution with the lowest objective is the answer. Vertices are always feasible, so one always exists.
    """
    k = linear.shape[0]
    if k > 8:
        raise ValueError(f"simplex_qp enumerates 2^K faces and is meant for a few candidates; got K = {k}.")
    # Scale-free: the weights do not change when Q and c are multiplied by a positive number.
    scale = jnp.maximum(jnp.maximum(jnp.abs(jnp.diag(quadratic)).max(), jnp.abs(linear).max()), 1e-30)
    q, c = quadratic / scale, linear / scale
    masks = jnp.asarray(np.array(list(itertools.product((0.0, 1.0), repeat=k))[1:]), q.dtype)  # [F, K]

    def face(mask):
        system = jnp.block([[q * mask[:, None] * mask[None, :] + jnp.diag(1.0 - mask), mask[:, None]],
                            [mask[None, :], jnp.zeros((1, 1), q.dtype)]])
        rhs = jnp.concatenate([-c * mask, jnp.ones(1, q.dtype)])
        solution = jnp.linalg.pinv(system) @ rhs
        residual = jnp.abs(system @ solution - rhs).max()
        w = solution[:k] * mask
        feasible = (w >= -1e-5).all() & (residual < 1e-4)
        w = jnp.clip(w, 0.0, None)
        w = w / jnp.maximum(w.sum(), 1e-30)
        return w, jnp.where(feasible, w @ q @ w + 2 * c @ w, jnp.inf)

    weights, values = jax.vmap(face)(masks)
    return weights[jnp.argmin(values)]


def describe(selection: Selection, names: Sequence[str]) -> str:
    """One log line: the weights, and per candidate the estimated bias^2, variance and MSE behind them."""
    parts = [f"{name} w={float(w):.2f} (bias2 {float(b):.3g}, var {float(v):.3g}, mse {float(m):.3g})"
             for name, w, b, v, m in zip(names, selection.weights, selection.bias2, selection.variance,
                                         selection.mse)]
    return f"auto: est. MSE of the mix {float(selection.mixed_mse):.3g} | " + "; ".join(parts)


# --- The selector as a lab estimator ---------------------------------------------------------------------------

DEFAULT_CANDIDATES = ("gpomdp", "mvg-dp", "fmg")
"""MFG first (the unbiased reference); then one MVG and one FMG cell whose contributions are i.i.d. across
trajectories, which the covariance estimates assume."""


@dataclasses.dataclass(frozen=True)
class AutoEstimator:
    """The selector over `candidates`, drawn like any lab estimator: per draw, N real trajectories give every
    real-data candidate's contributions (paired), model-data candidates (FMG) draw their own N model trajectories
    (independent), and the draw is the selector's mix. Hashable, so it is a static argument of a jitted sampler.

    Each candidate's own estimate inside a draw equals `draw_gradient` of that estimator: real-data candidates
    with the draw's key, model-data candidates with `fold_in(key, 1)` (their trajectories must not share the
    real ones' random numbers, or they would not be independent).
    """

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    name: str = "auto"
    gradient_type: str = "AUTO"
    d_source: str = "real"
    q_source: str = "selector"
    form: str = "score"

    def __post_init__(self):
        if not self.candidates:
            raise ValueError("auto needs at least one candidate estimator.")
        first = get_estimator(self.candidates[0])
        if first.gradient_type != "MFG":
            raise ValueError(f"auto's first candidate is its unbiased reference and must be model-free (MFG), "
                             f"e.g. gpomdp; got {first.name!r} ({first.gradient_type}).")
        for name in self.candidates:
            estimator = get_estimator(name)
            if estimator.form != "score" or estimator.fitted is not None:
                raise ValueError(f"auto mixes score-function estimators with a given model; {name!r} is not one "
                                 f"(choose from reinforce, gpomdp, fmg, mvg-mc, mvg-dp, mvg-td).")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"auto's candidates must be distinct; got {self.candidates}.")

    @property
    def estimators(self):
        return tuple(get_estimator(name) for name in self.candidates)

    @property
    def needs_model(self) -> bool:
        return any(e.needs_model for e in self.estimators)

    @property
    def envs(self) -> tuple[type, ...]:
        return tuple(t for t in self.estimators[0].envs if all(t in e.envs for e in self.estimators))

    @property
    def independent(self) -> tuple[bool, ...]:
        return tuple(e.d_source == "model" for e in self.estimators)

    def contributions(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
                      options: EstimatorOptions = EstimatorOptions()) -> jax.Array:
        """Per-trajectory contributions of every candidate, [K, N, *params.shape]."""
        model_key = jax.random.fold_in(key, 1)
        batches = {"real": _trajectories(env, policy, params, key, n_trajectories, horizon),
                   "model": _trajectories(model, policy, params, model_key, n_trajectories, horizon)
                   if any(e.d_source == "model" for e in self.estimators) else None}
        rows = []
        for estimator in self.estimators:
            trajectories, q_key = batches[estimator.d_source]
            rows.append(score_contributions(estimator, env, model, policy, params, trajectories, q_key, horizon,
                                            options))
        return jnp.stack(rows)

    def draw_all(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
                 options: EstimatorOptions = EstimatorOptions()):
        """(candidate estimates [K, *params.shape], the mixed estimate, the Selection) from one draw."""
        contributions = self.contributions(env, model, policy, params, key, n_trajectories, horizon, options)
        gradient, selection = select_gradient(contributions, self.independent)
        return contributions.mean(1), gradient, selection

    def draw(self, env, model, policy, params, key, n_trajectories: int, horizon: int,
             options: EstimatorOptions = EstimatorOptions()):
        """One estimate of grad J: the selector's mix (the lab's sampler calls this like `draw_gradient`)."""
        return self.draw_all(env, model, policy, params, key, n_trajectories, horizon, options)[1]


def parse_auto(name: str) -> AutoEstimator | None:
    """"auto" -> the default candidates; "auto:gpomdp+mvg-mc" -> those candidates; anything else -> None."""
    if name == "auto":
        return AutoEstimator()
    if name.startswith("auto:"):
        return AutoEstimator(tuple(part for part in name[5:].split("+") if part), name=name)
    return None


def _trajectories(env, policy, params, key, n_trajectories, horizon):
    """The same split `draw_gradient` makes: trajectories from the first key, the Q source's randomness from the
    second."""
    key_paths, key_q = jax.random.split(key)
    return sample_trajectories(env, policy, params, key_paths, n_trajectories, horizon), key_q


def score_contributions(estimator, env, model, policy, params, trajectories, key_q, horizon: int,
                        options: EstimatorOptions = EstimatorOptions()) -> jax.Array:
    """Per-trajectory terms [N, *params.shape] of a score-function estimator; their mean is `draw_gradient`'s
    estimate from the same trajectories and keys. The Q signal is computed on the whole batch exactly as
    `draw_gradient` does (so leave-one-out baselines and mvg-td's critic see all N trajectories: their terms are
    then not independent, which the selector's covariance estimates assume; the default candidates avoid them)."""
    if estimator.form != "score":
        raise ValueError(f"{estimator.name!r} has no per-trajectory score-function decomposition here.")
    weights, signal = score_signal(estimator, env, model, policy, params, trajectories, key_q, horizon, options)

    def one(trajectory, trajectory_signal):
        single = jax.tree.map(lambda x: x[None], trajectory)
        return score_function_gradient(policy, params, single, weights, trajectory_signal[None])

    return jax.vmap(one)(trajectories, signal)


def lab_estimator(name: str):
    """A lab estimator by name: the registry's (`mbpg.gradients.ESTIMATORS`), or the selector ("auto",
    "auto:gpomdp+mvg-dp+fmg"). Everything the lab samples or measures is resolved here."""
    return parse_auto(name) or get_estimator(name)
