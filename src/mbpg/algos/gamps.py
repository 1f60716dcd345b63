"""GAMPS: Gradient-Aware Model-based Policy Search (D'Oro, Metelli, Tirinzoni, Papini & Restelli, AAAI 2020).

Gradient type: **MVG** (d from real trajectories, Q under the learned model p_hat).

One iteration:
1. collect N real trajectories with the current policy (their log-probabilities are kept: they are the behaviour
   policy of that batch from now on);
2. fit p_hat on *all* data so far by weighted maximum likelihood, weights w_t = gamma^t rho_{0:t} sum_{l<=t}||g_l||
   with rho the prefix importance ratio of the current policy over each batch's behaviour policy
   (`mbpg.models.gradient_aware`); `weighting="uniform"` is the maximum-likelihood baseline with the same model
   class and the same data;
3. Q_hat(s_t, a_t) at every real pair of the current batch by exact dynamic programming on the finite model
   (`q_source="exact"`) or M Monte-Carlo rollouts of the model (`q_source="rollouts"`);
4. the score-function gradient 1/N sum_i sum_t gamma^t Q_hat(s_t, a_t) grad log pi(a_t | s_t) on the current
   batch, and a plain gradient-ascent step.

This is a function-style trainer for tabular MDPs with a `DisplacementModel`-like class (anything with
`fit(reference, states, actions, next_states, weights)` and `to_mdp(q, reference)`); it keeps every policy and
gradient so the lab can measure exact returns and gradient errors along the way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import TabularMDP
from mbpg.gradients import sample_trajectories, score_function_gradient
from mbpg.gradients.q_sources import model_exact_q, model_rollout_q, return_to_go
from mbpg.models.gradient_aware import RatioMode, gamps_weights, prefix_log_ratios, score_norms
from mbpg.policies import SoftmaxPolicy
from mbpg.values import discount_weights, effective_horizon


@dataclasses.dataclass(frozen=True)
class GAMPSConfig:
    """Settings of the GAMPS loop (and of its two baselines, selected by `gradient`)."""

    iterations: int = 30
    """Policy updates (one batch of real trajectories each)."""
    n_trajectories: int = 10
    """Real trajectories per iteration N."""
    horizon: int | None = None
    """Trajectory length (default: smallest H with gamma^H <= 1e-3)."""
    learning_rate: float = 20.0
    """Step size of plain gradient ascent on the logits."""
    gradient: Literal["gamps", "ml", "gpomdp"] = "gamps"
    """gamps: gradient-aware weighted ML model; ml: the same model class by unweighted maximum likelihood
    (the baseline); gpomdp: model-free reward-to-go (the reference)."""
    ratio: RatioMode = "clip"
    """How prefix importance ratios of old batches are tamed: clip, self-normalised or none."""
    clip: float = 10.0
    """Largest importance ratio kept when ratio='clip'."""
    reuse_data: bool = True
    """Fit the model on every batch so far (True) or on the current batch only."""
    q_source: Literal["exact", "rollouts"] = "exact"
    """Q_hat by exact DP on the finite model, or by Monte-Carlo model rollouts."""
    n_rollouts: int = 4
    """Model rollouts M per real pair when q_source='rollouts'."""

    def __post_init__(self):
        for name in ("iterations", "n_trajectories", "n_rollouts"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if self.horizon is not None and (not isinstance(self.horizon, (int, np.integer)) or self.horizon < 1):
            raise ValueError(f"horizon must be a positive integer or None; got {self.horizon!r}.")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0; got {self.learning_rate}.")
        if self.gradient not in ("gamps", "ml", "gpomdp"):
            raise ValueError(f"gradient must be 'gamps', 'ml' or 'gpomdp'; got {self.gradient!r}.")
        if self.q_source not in ("exact", "rollouts"):
            raise ValueError(f"q_source must be 'exact' or 'rollouts'; got {self.q_source!r}.")


@functools.partial(jax.jit, static_argnames=("n", "horizon"))
def collect_batch(env, logits, key, n, horizon):
    """N real trajectories of the softmax policy `logits` and their log-probabilities under it (the behaviour
    log-probabilities that later importance ratios divide by)."""
    policy = SoftmaxPolicy()
    batch = sample_trajectories(env, policy, logits, key, n, horizon)
    log_probs = jax.vmap(jax.vmap(lambda s, a: policy.log_prob(logits, s, a)))(batch.states, batch.actions)
    return batch, log_probs


@functools.partial(jax.jit, static_argnames=("q_source", "n_rollouts"))
def model_value_gradient(env: TabularMDP, model: TabularMDP, logits, batch, key=None, q_source="exact",
                         n_rollouts: int = 4):
    """The MVG gradient on real trajectories `batch` with Q_hat from `model`: 1/N sum gamma^t Q_hat g."""
    policy = SoftmaxPolicy()
    logits = jnp.asarray(logits, batch.rewards.dtype)
    horizon = batch.rewards.shape[1]
    if q_source == "exact":
        signal = model_exact_q(batch, model, logits)
    else:
        if key is None:
            raise ValueError("q_source='rollouts' needs key=jax.random.key(...) for the model rollouts.")
        signal = model_rollout_q(batch, model, policy, logits, key, n_rollouts, horizon)
    return score_function_gradient(policy, logits, batch, discount_weights(horizon, env.gamma, signal.dtype), signal)


@jax.jit
def gpomdp_gradient(env: TabularMDP, logits, batch):
    policy = SoftmaxPolicy()
    horizon = batch.rewards.shape[1]
    return score_function_gradient(policy, jnp.asarray(logits, batch.rewards.dtype), batch,
                                   discount_weights(horizon, env.gamma, batch.rewards.dtype),
                                   return_to_go(batch, env.gamma))


@functools.partial(jax.jit, static_argnames=("gamma", "ratio", "clip"))
def _batch_weights(logits, states, actions, behaviour_log_probs, gamma, ratio, clip):
    """GAMPS weights of one batch w.r.t. the policy `logits` (jitted per batch shape, so reusing data compiles
    once however many batches accumulate)."""
    policy = SoftmaxPolicy()
    norms = score_norms(policy, logits, states, actions)
    log_ratios = prefix_log_ratios(policy, logits, states, actions, behaviour_log_probs)
    return gamps_weights(norms, gamma, log_ratios, ratio=ratio, clip=clip)


def fit_model(env, model_class, logits, batches, gradient: str, ratio: RatioMode = "clip", clip: float = 10.0):
    """p_hat from the batches [(trajectories, behaviour log-probs), ...]: gradient-aware weights w.r.t. the
    policy `logits` ("gamps") or unit weights ("ml"). Returns (model MDP, model parameters)."""
    states = np.concatenate([np.asarray(b.states) for b, _ in batches])
    actions = np.concatenate([np.asarray(b.actions) for b, _ in batches])
    next_states = np.concatenate([np.asarray(b.next_states) for b, _ in batches])
    weights = None
    if gradient == "gamps":
        logits = jnp.asarray(logits, jnp.float32)
        weights = np.concatenate([np.asarray(_batch_weights(logits, b.states, b.actions, lp, float(env.gamma),
                                                            ratio, float(clip))) for b, lp in batches])
    parameters = model_class.fit(env, states, actions, next_states, weights)
    return model_class.to_mdp(parameters, env), parameters


def train_tabular(env: TabularMDP, model_class, config: GAMPSConfig, key: jax.Array, logits=None,
                  progress: Callable[[int, np.ndarray, np.ndarray], None] | None = None):
    """Run the loop; returns (final logits, history) with history['logits'][k] the policy before update k (one
    more entry after the last update) and history['gradient'][k] the estimate used at update k.

    The trainer does not evaluate itself: exact returns and gradient errors are the lab's business
    (`mbpg.lab.gradient_aware.learning_curve`), so algorithms stay below the lab in the dependency order.
    `progress(iteration, logits, gradient)` is called after each estimate.
    """
    if not isinstance(env, TabularMDP):
        raise ValueError(f"train_tabular needs a TabularMDP; got {type(env).__name__}.")
    horizon = config.horizon or effective_horizon(env.gamma)
    logits = np.zeros((env.n_states, env.n_actions)) if logits is None else np.asarray(logits, np.float64)
    if logits.shape != (env.n_states, env.n_actions):
        raise ValueError(f"logits must have shape {(env.n_states, env.n_actions)}; got {logits.shape}.")
    batches = []
    history = {"logits": [], "gradient": []}
    for iteration in range(config.iterations):
        key, key_collect, key_q = jax.random.split(key, 3)
        current = jnp.asarray(logits, jnp.float32)
        batch, log_probs = collect_batch(env, current, key_collect, config.n_trajectories, horizon)
        batches = (batches if config.reuse_data else []) + [(batch, log_probs)]
        if config.gradient == "gpomdp":
            gradient = gpomdp_gradient(env, current, batch)
        else:
            model, _ = fit_model(env, model_class, current, batches, config.gradient, config.ratio, config.clip)
            gradient = model_value_gradient(env, model, current, batch, key_q, config.q_source, config.n_rollouts)
        gradient = np.asarray(gradient, np.float64)
        history["logits"].append(logits)
        history["gradient"].append(gradient)
        if progress:
            progress(iteration, logits, gradient)
        logits = logits + config.learning_rate * gradient
    history["logits"].append(logits)
    return logits, history
