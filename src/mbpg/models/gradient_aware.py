"""Gradient-aware model learning (GAMPS, D'Oro, Metelli, Tirinzoni, Papini & Restelli, AAAI 2020).

Why weight the likelihood: a model-value gradient (real (s, a), Q under p_hat) is wrong only through the error of
Q_hat at the visited pairs, and Q_hat(s_t, a_t) is wrong only through model errors at pairs reached *after*
(s_t, a_t), discounted. GAMPS bounds the gradient error by a KL between p and p_hat under a distribution eta that
weights each real transition (s_t, a_t, s_{t+1}) by

    w_t = gamma^t * rho_{0:t} * sum_{l <= t} || grad_theta log pi(a_l | s_l) ||,

rho_{0:t} the per-decision importance ratio of the prefix (current policy over the behaviour policy that collected
the data). Maximising sum_t w_t log p_hat(s_{t+1} | s_t, a_t) over a *misspecified* (low-capacity) model class
spends its capacity on the transitions the gradient depends on; plain maximum likelihood (all w_t = 1) spends it
where the data is. With a class that contains p both fits recover p: the weighting matters only under
misspecification.

This module holds the weights and two weighted maximum-likelihood fits with unit weights as the ML baseline:
- `DisplacementModel`: a gridworld model class with one displacement distribution per action shared by every
  cell (borders clip the move); it cannot represent regions with different dynamics. Fit by EM on weighted counts
  (the log-likelihood is concave in the mixture weights, so EM reaches the global maximum).
- `fit_linear_gaussian`: s' = A s + B a + c + N(0, Sigma) by weighted least squares, for continuous states.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import TabularMDP

RatioMode = Literal["none", "clip", "self-normalised"]


# ----- weights --------------------------------------------------------------------------------------------------


def score_norms(policy, params, states, actions) -> jax.Array:
    """|| grad_theta log pi(a_t | s_t) || (Euclidean over every parameter leaf) at each step, shape [N, H]."""

    def norm(state, action):
        grads = jax.grad(lambda p: policy.log_prob(p, state, action))(params)
        return jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))

    return jax.vmap(jax.vmap(norm))(states, actions)


def prefix_log_ratios(policy, params, states, actions, behaviour_log_probs) -> jax.Array:
    """log rho_{0:t} = sum_{l <= t} [log pi(a_l | s_l) - log pi_b(a_l | s_l)], shape [N, H]."""
    log_probs = jax.vmap(jax.vmap(lambda s, a: policy.log_prob(params, s, a)))(states, actions)
    return jnp.cumsum(log_probs - behaviour_log_probs, axis=-1)


def gamps_weights(
    norms,
    gamma: float,
    log_ratios=None,
    ratio: RatioMode = "clip",
    clip: float = 10.0,
    mask=None,
) -> jax.Array:
    """The GAMPS weights w_t = gamma^t rho_{0:t} sum_{l<=t} ||g_l||, shape [N, H].

    norms: score norms [N, H] (`score_norms`). log_ratios: prefix log importance ratios [N, H]
    (`prefix_log_ratios`); None means on-policy data (rho = 1). ratio: "clip" caps rho at `clip` (bias for
    bounded variance), "self-normalised" divides rho at each step t by its mean over the trajectories that are
    still running, "none" keeps the raw ratio. mask: 1 while the episode runs, 0 after it ended (terminal tasks).
    """
    norms = jnp.asarray(norms)
    if norms.ndim != 2:
        raise ValueError(f"score norms must have shape [N, H] (trajectories x steps); got {norms.shape}.")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1]; got {gamma}.")
    if ratio not in ("none", "clip", "self-normalised"):
        raise ValueError(f"ratio must be 'none', 'clip' or 'self-normalised'; got {ratio!r}.")
    if ratio == "clip" and not clip > 0:
        raise ValueError(f"clip must be > 0 (the largest importance ratio kept); got {clip}.")
    mask = jnp.ones_like(norms) if mask is None else jnp.asarray(mask, norms.dtype)
    if mask.shape != norms.shape:
        raise ValueError(f"mask must have the shape of the score norms {norms.shape}; got {mask.shape}.")
    alive = mask > 0
    rho = jnp.ones_like(norms)
    if log_ratios is not None:
        log_ratios = jnp.asarray(log_ratios, norms.dtype)
        if log_ratios.shape != norms.shape:
            raise ValueError(f"log_ratios must have shape {norms.shape}; got {log_ratios.shape}.")
        # Ended steps leave before exp: a padded step's ratio could overflow (inf * 0 = nan) and, self-normalised,
        # would reach the sum every running trajectory is divided by.
        log_ratios = jnp.where(alive, log_ratios, -jnp.inf)
        if ratio == "self-normalised":
            # rho_i / mean_alive(rho) computed after subtracting the step's largest log-ratio, so one ratio that
            # alone overflows float32 (log-ratio > 88) still gives finite weights.
            top = jnp.max(log_ratios, axis=0, keepdims=True)
            rho = jnp.exp(log_ratios - jnp.where(jnp.isfinite(top), top, 0.0))
            n_alive = jnp.maximum(mask.sum(0, keepdims=True), 1.0)
            rho = rho / jnp.maximum((rho * mask).sum(0, keepdims=True) / n_alive, jnp.finfo(rho.dtype).tiny)
        else:
            rho = jnp.exp(log_ratios)
            if ratio == "clip":
                rho = jnp.minimum(rho, clip)
    discount = gamma ** jnp.arange(norms.shape[1], dtype=norms.dtype)
    weights = discount * rho * jnp.cumsum(jnp.where(alive, norms * mask, 0.0), axis=-1) * mask
    return jnp.where(alive, weights, 0.0)


# ----- tabular: the shared displacement model --------------------------------------------------------------------

# Displacements (row, column): up, right, down, left (the gridworld's moves, same order) and stay.
DISPLACEMENTS = np.array([(-1, 0), (0, 1), (1, 0), (0, -1), (0, 0)])


@dataclasses.dataclass(frozen=True)
class DisplacementModel:
    """p_hat(s' | s, a) = sum_k q[a, k] 1[s' = clip(s + delta_k)] for every cell except `fixed` ones.

    One displacement distribution q[a] per action, shared by all cells: a model class that knows the grid's
    geometry but not where the dynamics change, hence misspecified on a gridworld with regions. Transitions
    from the `fixed` cells (the goal, whose reset to the start is known like the reward) are copied from the
    reference MDP and never fitted.
    """

    rows: int
    cols: int
    fixed: tuple[int, ...] = ()

    def indicator(self) -> np.ndarray:
        """E[s, k, s'] = 1 when displacement k moves cell s to s' (after clipping at the border)."""
        n = self.rows * self.cols
        table = np.zeros((n, len(DISPLACEMENTS), n))
        for s in range(n):
            r, c = divmod(s, self.cols)
            for k, (dr, dc) in enumerate(DISPLACEMENTS):
                table[s, k, min(max(r + dr, 0), self.rows - 1) * self.cols + min(max(c + dc, 0), self.cols - 1)] = 1
        return table

    def to_mdp(self, q, reference: TabularMDP) -> TabularMDP:
        """The model as a TabularMDP (rewards, start and gamma from `reference`)."""
        q = np.asarray(q, np.float64)
        self._check_reference(reference)
        if q.shape != (reference.n_actions, len(DISPLACEMENTS)):
            raise ValueError(f"q must have shape [A, K] = {(reference.n_actions, len(DISPLACEMENTS))}; got {q.shape}.")
        transitions = np.einsum("ak,skt->sat", q, self.indicator())
        fixed = list(self.fixed)
        transitions[fixed] = np.asarray(reference.transitions, np.float64)[fixed]
        return reference.replace(transitions=transitions)

    def fit(self, reference: TabularMDP, states, actions, next_states, weights=None, iterations: int = 500,
            tolerance: float = 1e-10) -> np.ndarray:
        """q maximising sum_i w_i log p_hat(s'_i | s_i, a_i) (weights None: all 1, plain maximum likelihood)."""
        self._check_reference(reference)
        counts = weighted_counts(reference, states, actions, next_states, weights)
        return self.fit_counts(counts, iterations, tolerance)

    def fit_counts(self, counts, iterations: int = 500, tolerance: float = 1e-10) -> np.ndarray:
        """The same fit from weighted transition counts C[s, a, s'] (also: expected counts, for population fits).

        Host entry: checks that every counted transition is one displacement away, then runs `fit_counts_jax` in
        float64 (the fixed point is compared to 1e-10). The objective is concave in q, so EM's fixed point is
        the global maximum; actions without data keep the uniform distribution.
        """
        counts = np.asarray(counts, np.float64).copy()
        indicator = self.indicator()
        counts[list(self.fixed)] = 0.0
        if counts.shape[0] != indicator.shape[0] or counts.shape[2] != indicator.shape[0]:
            raise ValueError(f"counts must have shape [S, A, S] with S = {indicator.shape[0]}; got {counts.shape}.")
        explained = np.einsum("skt->st", indicator)[:, None, :] > 0
        if (counts[~np.broadcast_to(explained, counts.shape)] > 0).any():
            s, a, t = np.argwhere((counts > 0) & ~explained)[0]
            raise ValueError(f"transition {s} -> {t} (action {a}) is not one displacement away: the displacement "
                             "model cannot explain it. List such cells (e.g. a goal that resets) in `fixed`.")
        with jax.enable_x64(True):
            return np.asarray(self.fit_counts_jax(jnp.asarray(counts), iterations, tolerance), np.float64)

    def fit_counts_jax(self, counts, iterations: int = 500, tolerance: float = 1e-6) -> jax.Array:
        """EM for q from counts C[s, a, s'] as a jittable, vmappable function (no input checks: counts of
        transitions the class cannot explain are ignored). Used inside the `gamps` estimator's draw.

        EM in the compact form: G[s, a, k] = C[s, a, target(s, k)] is the mass at the cell displacement k leads
        to, P[s, a, k] = p_hat(target(s, k) | s, a) sums q over the displacements with the same target (borders
        merge some), and the responsibility-weighted mass is q[a, k] sum_s G / P. Stops when q moves less than
        `tolerance` or after `iterations` steps.
        """
        indicator = self.indicator()
        same_target = np.einsum("skt,sjt->skj", indicator, indicator)  # [S, K, K]: k and j land on one cell
        counts = jnp.asarray(counts)
        counts = counts.at[np.asarray(self.fixed, np.int64)].set(0.0) if self.fixed else counts
        at_targets = jnp.einsum("sat,skt->sak", counts, jnp.asarray(indicator, counts.dtype))
        q0 = jnp.full((counts.shape[1], len(DISPLACEMENTS)), 1.0 / len(DISPLACEMENTS), counts.dtype)
        same_target = jnp.asarray(same_target, counts.dtype)

        def em_step(q):
            target_probs = jnp.einsum("aj,skj->sak", q, same_target)
            ratio = jnp.where(at_targets > 0, at_targets / jnp.where(target_probs > 0, target_probs, 1.0), 0.0)
            mass = q * ratio.sum(0)
            row = mass.sum(-1, keepdims=True)
            return jnp.where(row > 0, mass / jnp.where(row > 0, row, 1.0), q)

        def keep_going(carry):
            i, q, change = carry
            return (i < iterations) & (change >= tolerance)

        def body(carry):
            i, q, _ = carry
            new_q = em_step(q)
            return i + 1, new_q, jnp.abs(new_q - q).max()

        _, q, _ = jax.lax.while_loop(keep_going, body, (0, q0, jnp.asarray(jnp.inf, counts.dtype)))
        return q

    def fit_mdp(self, reference: TabularMDP, counts) -> TabularMDP:
        """Jittable: the fitted model as an MDP (the `TabularModelClass` protocol used inside estimator draws)."""
        return self.to_mdp_jax(self.fit_counts_jax(counts), reference)

    def to_mdp_jax(self, q, reference: TabularMDP) -> TabularMDP:
        """`to_mdp` without checks, for traced q."""
        transitions = jnp.einsum("ak,skt->sat", q, jnp.asarray(self.indicator(), q.dtype))
        if self.fixed:
            fixed = np.asarray(self.fixed, np.int64)
            transitions = transitions.at[fixed].set(jnp.asarray(reference.transitions, q.dtype)[fixed])
        return reference.replace(transitions=transitions)

    def log_likelihood(self, q, counts) -> float:
        """sum C[s, a, s'] log p_hat(s' | s, a) over the non-fixed cells."""
        counts = np.asarray(counts, np.float64).copy()
        counts[list(self.fixed)] = 0.0
        probs = np.einsum("ak,skt->sat", np.asarray(q, np.float64), self.indicator())
        return float(np.sum(np.where(counts > 0, counts * np.log(np.where(counts > 0, probs, 1.0)), 0.0)))

    def _check_reference(self, reference: TabularMDP) -> None:
        if reference.n_states != self.rows * self.cols:
            raise ValueError(f"the reference MDP has {reference.n_states} states but the grid is "
                             f"{self.rows}x{self.cols} = {self.rows * self.cols}; build both from the same grid.")


def weighted_counts(reference: TabularMDP, states, actions, next_states, weights=None) -> np.ndarray:
    """C[s, a, s'] = sum of the weights of the observed transitions (s, a, s'); weights None counts each once."""
    states, actions, next_states = (np.asarray(x, np.int64).reshape(-1) for x in (states, actions, next_states))
    if not states.shape == actions.shape == next_states.shape:
        raise ValueError(f"states, actions and next_states must have the same number of entries; got "
                         f"{states.shape}, {actions.shape}, {next_states.shape}.")
    weights = np.ones(states.shape) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if weights.shape != states.shape:
        raise ValueError(f"weights must have one entry per transition ({states.shape[0]}); got {weights.shape[0]}.")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and >= 0 (a weighted likelihood); clip or self-normalise the "
                         "importance ratios if they overflow.")
    for name, values, bound in (("states", states, reference.n_states), ("actions", actions, reference.n_actions),
                                ("next_states", next_states, reference.n_states)):
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"{name} must be integers in [0, {bound}); got values in [{values.min()}, {values.max()}].")
    counts = np.zeros((reference.n_states, reference.n_actions, reference.n_states))
    np.add.at(counts, (states, actions, next_states), weights)
    return counts


def fit_weighted_tabular(reference: TabularMDP, states, actions, next_states, weights=None) -> TabularMDP:
    """Weighted ML in the full tabular class: P[s, a] = weighted counts normalised (uniform where no weight).

    The class contains every p, so any positive weighting recovers p with enough data; it is here to show that.
    """
    counts = weighted_counts(reference, states, actions, next_states, weights)
    totals = counts.sum(-1, keepdims=True)
    transitions = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / reference.n_states)
    return reference.replace(transitions=transitions)


@dataclasses.dataclass(frozen=True)
class FullTabularModel:
    """The full tabular class as a jittable model class: P[s, a] = weighted counts normalised, uniform where a
    pair carries no weight. It contains every p, so GAMPS weights and unit weights fit the same model in the
    limit; it is the control against which the weighting must not matter."""

    def fit_mdp(self, reference: TabularMDP, counts) -> TabularMDP:
        counts = jnp.asarray(counts)
        totals = counts.sum(-1, keepdims=True)
        transitions = jnp.where(totals > 0, counts / jnp.where(totals > 0, totals, 1.0), 1.0 / counts.shape[-1])
        return reference.replace(transitions=transitions)


def trajectory_counts(n_states: int, n_actions: int, states, actions, next_states, weights) -> jax.Array:
    """C[s, a, s'] = sum of `weights` over the steps with that transition (jittable `weighted_counts`)."""
    counts = jnp.zeros((n_states, n_actions, n_states), jnp.asarray(weights).dtype)
    return counts.at[jnp.ravel(states), jnp.ravel(actions), jnp.ravel(next_states)].add(jnp.ravel(weights))


# ----- continuous: linear-Gaussian by weighted least squares ------------------------------------------------------


class LinearGaussianModel(NamedTuple):
    """s' = A s + B a + c + N(0, noise_cov): a low-capacity model for continuous states."""

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    noise_cov: np.ndarray

    def mean(self, state, action):
        return self.A @ state + self.B @ action + self.c


def fit_linear_gaussian(states, actions, next_states, weights=None, ridge: float = 1e-8) -> LinearGaussianModel:
    """Weighted least squares (the weighted Gaussian maximum likelihood): minimise sum_i w_i ||s'_i - A s_i -
    B a_i - c||^2; the noise covariance is the weighted mean outer product of the residuals. `ridge` keeps the
    normal equations solvable when few transitions carry weight; it is relative to the mean weight, so the fit,
    like the likelihood it maximises, does not change when every weight is scaled by the same factor."""
    states, actions, next_states = (np.asarray(x, np.float64) for x in (states, actions, next_states))
    for name, x in (("states", states), ("actions", actions), ("next_states", next_states)):
        if x.ndim < 2:  # a 1-D array is ambiguous: N scalar states, or one transition of an N-dimensional state
            raise ValueError(f"{name} must have one row per transition, shape [N, dim]; got shape {x.shape}. For a "
                             f"one-dimensional {name.rstrip('s').replace('_', ' ')}, pass x[:, None].")
    states, actions, next_states = (x.reshape(-1, x.shape[-1]) for x in (states, actions, next_states))
    n = states.shape[0]
    if actions.shape[0] != n or next_states.shape != states.shape:
        raise ValueError(f"expected states [N, n], actions [N, m], next_states [N, n]; got {states.shape}, "
                         f"{actions.shape}, {next_states.shape}.")
    weights = np.ones(n) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be {n} finite numbers >= 0 (one per transition).")
    if weights.sum() <= 0:
        raise ValueError("all weights are zero: there is nothing to fit. Collect data with nonzero weight.")
    inputs = np.concatenate([states, actions, np.ones((n, 1))], axis=1)
    with jax.enable_x64(True):
        solution, noise_cov = (np.asarray(x, np.float64) for x in weighted_least_squares(
            jnp.asarray(inputs), jnp.asarray(next_states), jnp.asarray(weights), ridge))
    d, m = states.shape[1], actions.shape[1]
    return LinearGaussianModel(solution[:d].T, solution[d:d + m].T, solution[-1], noise_cov)


def weighted_least_squares(inputs, targets, weights, ridge: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """Jittable core of the weighted Gaussian ML fit: W = argmin sum_i w_i ||y_i - W^T x_i||^2 (ridge-regularised
    normal equations) and the weighted residual covariance. Shapes: inputs [n, p], targets [n, d], weights [n];
    returns W [p, d] and the covariance [d, d]. Zero-weight rows (padding, ended episodes) drop out exactly, even
    where they hold inf or NaN. `ridge` is relative to the mean weight (scale-invariant, as the likelihood is)."""
    use = weights > 0
    inputs, targets = jnp.where(use[:, None], inputs, 0.0), jnp.where(use[:, None], targets, 0.0)
    weights = jnp.where(use, weights, 0.0)
    weighted = weights[:, None] * inputs
    gram = inputs.T @ weighted + ridge * jnp.mean(weights) * jnp.eye(inputs.shape[1], dtype=inputs.dtype)
    solution = jnp.linalg.solve(gram, weighted.T @ targets)
    residuals = targets - inputs @ solution
    cov = (weights[:, None] * residuals).T @ residuals / jnp.maximum(weights.sum(), 1e-30)
    return solution, 0.5 * (cov + cov.T)
