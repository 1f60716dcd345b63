"""Does gradient-aware model fitting (GAMPS) give better gradients than maximum likelihood with the same class?

The test bed is a two-area gridworld: the lower rows (start and goal) move as intended, the upper rows move
the *opposite* way (up goes down, left goes right). The model class (`DisplacementModel`, one displacement
distribution per action for the whole grid) can fit one area or a blend, never both. A randomly acting agent
starts in the lower-left corner and drifts into the large upper area, where it spends most of its *late* steps;
maximum likelihood counts every step alike and fits a blend dominated by the upper area. The policy gradient
under discount gamma depends mostly on early steps near the start, which is where the GAMPS weights
gamma^t sum_{l<=t} ||g_l|| put the mass. (Our reconstruction of the paper's "gridworld with two areas of
different dynamics"; its exact layout was not available to us, see docs/gamps/README.md.)

`gradient_error_study` measures, for the same real trajectories, ||g_hat - grad J|| with the model fitted both
ways (paired, so the difference has a tight interval); `learning_curves` runs the GAMPS loop with each gradient
and records the exact return.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.algos.gamps import (
    GAMPSConfig,
    collect_batch,
    fit_model,
    model_value_gradient,
    train_tabular,
)
from mbpg.envs import TabularMDP, gridworld
from mbpg.lab.exact import exact_gradient, exact_return
from mbpg.models.gradient_aware import DISPLACEMENTS, DisplacementModel, FullTabularModel, score_norms
from mbpg.policies import SoftmaxPolicy
from mbpg.values import effective_horizon

# q[a, k] of the two areas: intended moves, and the opposite move (up<->down, right<->left).
INTENDED = np.eye(len(DISPLACEMENTS))[:4]
OPPOSITE = INTENDED[[2, 3, 0, 1]]


def two_area_gridworld(rows: int = 5, cols: int = 5, upper_rows: int = 3, gamma: float = 0.9,
                       upper=OPPOSITE, lower=INTENDED) -> tuple[TabularMDP, DisplacementModel]:
    """The gridworld (start lower-left, goal lower-right, reward 1 and reset at the goal) whose first
    `upper_rows` rows follow displacement distributions `upper` [4, 5] and the rest `lower`; and the shared
    displacement model class that cannot tell the areas apart."""
    if not 0 < upper_rows < rows:
        raise ValueError(f"upper_rows must lie in [1, rows-1] = [1, {rows - 1}] so both areas exist; got {upper_rows}.")
    goal, start = (rows - 1, cols - 1), (rows - 1, 0)
    base = gridworld(rows, cols, slip=0.0, gamma=gamma, goal=goal, start=start)
    goal_index = goal[0] * cols + goal[1]
    model_class = DisplacementModel(rows, cols, fixed=(goal_index,))
    per_cell = np.stack([np.asarray(upper if s // cols < upper_rows else lower, np.float64)
                         for s in range(rows * cols)])
    transitions = np.einsum("sak,skt->sat", per_cell, model_class.indicator())
    transitions[goal_index] = np.asarray(base.transitions)[goal_index]
    return base.replace(transitions=transitions), model_class


def random_logits(env: TabularMDP, seed: int = 7, scale: float = 1.0) -> np.ndarray:
    """A fixed non-uniform softmax policy (the lab's convention: the uniform policy is atypically symmetric)."""
    return scale * np.asarray(jax.random.normal(jax.random.key(seed), (env.n_states, env.n_actions)), np.float64)


@dataclasses.dataclass
class ErrorRow:
    """One draw: the same N real trajectories, the model fitted by ML and by GAMPS weights."""

    n_trajectories: int
    seed: int
    error_ml: float
    error_gamps: float
    error_true_model: float
    cosine_ml: float
    cosine_gamps: float
    gradient_norm: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a.ravel() @ b.ravel() / norm) if norm > 0 else 0.0


def gradient_error_study(env: TabularMDP, model_class, logits, sample_sizes: Sequence[int], n_seeds: int,
                         horizon: int | None = None, seed: int = 0,
                         progress: Callable[[str], None] | None = None) -> list[ErrorRow]:
    """For each N and seed: draw N real trajectories at `logits`, fit the model class with unit and with GAMPS
    weights, and measure both MVG gradients (Q by exact DP on the model) against the exact gradient. The same
    trajectories with Q under the *true* dynamics give the sampling floor (`error_true_model`)."""
    if n_seeds < 1 or not sample_sizes or min(sample_sizes) < 1:
        raise ValueError("need n_seeds >= 1 and positive sample sizes.")
    horizon = horizon or effective_horizon(env.gamma)
    logits = np.asarray(logits, np.float64)
    truth = exact_gradient(env, logits)
    current = jnp.asarray(logits, jnp.float32)
    rows = []
    for n in sample_sizes:
        for s in range(n_seeds):
            if progress:
                progress(f"N={n} seed={s}")
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), s)
            batch, log_probs = collect_batch(env, current, key, int(n), horizon)
            estimates = {}
            for name in ("ml", "gamps"):
                model, _ = fit_model(env, model_class, current, [(batch, log_probs)], name)
                estimates[name] = np.asarray(model_value_gradient(env, model, current, batch), np.float64)
            oracle = np.asarray(model_value_gradient(env, env, current, batch), np.float64)
            rows.append(ErrorRow(int(n), s, float(np.linalg.norm(estimates["ml"] - truth)),
                                 float(np.linalg.norm(estimates["gamps"] - truth)),
                                 float(np.linalg.norm(oracle - truth)), _cosine(estimates["ml"], truth),
                                 _cosine(estimates["gamps"], truth), float(np.linalg.norm(truth))))
    return rows


def summarise_errors(rows: Sequence[ErrorRow]) -> list[dict]:
    """Per N: mean errors with 95% normal intervals over seeds, and the paired difference ML - GAMPS."""
    out = []
    for n in sorted({r.n_trajectories for r in rows}):
        group = [r for r in rows if r.n_trajectories == n]
        summary = {"n_trajectories": n, "seeds": len(group), "gradient_norm": group[0].gradient_norm}
        for field in ("error_ml", "error_gamps", "error_true_model", "cosine_ml", "cosine_gamps"):
            summary[field], summary[field + "_ci"] = mean_ci([getattr(r, field) for r in group])
        summary["paired_difference"], summary["paired_difference_ci"] = mean_ci(
            [r.error_ml - r.error_gamps for r in group])
        summary["gamps_wins"] = float(np.mean([r.error_gamps < r.error_ml for r in group]))
        out.append(summary)
    return out


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    values = np.asarray(values, np.float64)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(half)


def expected_counts(env: TabularMDP, logits, horizon: int, weighting: str = "gamps") -> np.ndarray:
    """E[C[s, a, s']]: the expected weighted transition counts of one trajectory of `horizon` steps, exactly.

    Unit weights ("ml") sum the undiscounted state distributions m_t. GAMPS weights need the expected score
    mass carried into each state: with c_t(s) = E[sum_{l<t} ||g_l|| 1{s_t = s}] and n(s, a) = ||g(s, a)||,
    E[w_t 1{s_t=s, a_t=a, s_{t+1}=s'}] = gamma^t (c_t(s) + m_t(s) n(s, a)) pi(a|s) p(s'|s, a) and
    c_{t+1}(s') = sum_{s,a} (c_t(s) + m_t(s) n(s, a)) pi(a|s) p(s'|s, a). Weighted ML is scale-invariant, so
    fitting these counts gives the N -> infinity limit of the fit in the draw."""
    if weighting not in ("gamps", "ml"):
        raise ValueError(f"weighting must be 'gamps' or 'ml'; got {weighting!r}.")
    with jax.enable_x64(True):
        logits = jnp.asarray(np.asarray(logits, np.float64))
        pairs_s = jnp.repeat(jnp.arange(env.n_states)[:, None], env.n_actions, 1)
        pairs_a = jnp.repeat(jnp.arange(env.n_actions)[None, :], env.n_states, 0)
        norms = np.asarray(score_norms(SoftmaxPolicy(), logits, pairs_s, pairs_a), np.float64)  # [S, A]
    pi = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64), -1), np.float64)
    transitions = np.asarray(env.transitions, np.float64)
    m, c = np.asarray(env.initial, np.float64), np.zeros(env.n_states)
    counts = np.zeros_like(transitions)
    for t in range(horizon):
        carried = (c[:, None] + m[:, None] * norms) * pi
        step = env.gamma**t * carried if weighting == "gamps" else m[:, None] * pi
        counts += step[:, :, None] * transitions
        c = np.einsum("sa,sat->t", carried, transitions)
        m = np.einsum("sa,sat->t", m[:, None] * pi, transitions)
    return counts


def population_gradient(env: TabularMDP, model_class, logits, horizon: int | None = None,
                        weighting: str = "gamps") -> np.ndarray:
    """The N -> infinity limit of the `gamps` (or `gamps-ml`) estimator: the exact MVG gradient with the model
    that `model_class` fits to the expected counts (`expected_counts`). Its distance to `exact_gradient` is the
    bias that the model class leaves however much data there is."""
    horizon = horizon or effective_horizon(env.gamma)
    counts = expected_counts(env, logits, horizon, weighting)
    with jax.enable_x64(True):
        model = (model_class or FullTabularModel()).fit_mdp(env, jnp.asarray(counts))
        model = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), model)
    return np.asarray(exact_gradient(env, logits, "mvg", model), np.float64)


def learning_curve(env: TabularMDP, model_class, config: GAMPSConfig, key: jax.Array, logits=None) -> dict:
    """One training run: exact return after each update (index 0 = the initial policy) and the exact gradient
    error and cosine of each update's estimate."""
    _, history = train_tabular(env, model_class, config, key, logits)
    returns = [float(exact_return(env, theta)) for theta in history["logits"]]
    errors, cosines = [], []
    for theta, gradient in zip(history["logits"], history["gradient"]):
        truth = exact_gradient(env, theta)
        errors.append(float(np.linalg.norm(gradient - truth)))
        cosines.append(_cosine(gradient, truth))
    return {"return": returns, "gradient_error": errors, "cosine": cosines}


__all__ = ["two_area_gridworld", "random_logits", "gradient_error_study", "summarise_errors", "mean_ci",
           "learning_curve", "ErrorRow", "expected_counts", "population_gradient"]
