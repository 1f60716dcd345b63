"""POIS (Metelli et al. 2018, "Policy Optimization via Importance Sampling"): A-POIS and P-POIS.

Gradient type: MFG. d and Q are the real environment's: each iteration collects N real episodes with the behaviour
parameters and then optimises, offline and without new samples, the Renyi-penalised lower bound of
`mbpg.optim.pois` on the return of candidate parameters, whose importance-sampled estimate is reused across the
whole offline ascent. The penalty keeps the candidate where the batch still says something about it.

- A-POIS (action-based): a stochastic policy (linear by default: a softmax over linear logits for discrete
  actions, a linear-Gaussian with a learned state-independent std for continuous ones); per-episode weights are
  products of per-step action likelihood ratios, and the divergence of the trajectory distributions is estimated
  as the mean over episodes of the product of per-state closed-form d2 (categorical or Gaussian).
- P-POIS (parameter-based): a Gaussian hyperpolicy N(mu, diag sigma^2) over the weights of a deterministic linear
  policy, one weight draw per episode; weights and d2 are exact (hyperpolicy densities), and the ascent follows the
  natural gradient of the diagonal Fisher of (mu, log sigma), which is diag(1/sigma^2, 2).

Choices not fixed by the paper, made here:
- ||R||_inf in the bound is the largest |return| in the current batch (the true bound is often unknown or loose).
- The iteration's env-step budget is counted as N x horizon (an upper bound: episodes that end early use fewer);
  the exact count is logged as `real_env_steps`.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from mbpg.algos.on_policy import is_host_env, make_policy
from mbpg.algos.spaces import env_spec
from mbpg.envs import autoreset
from mbpg.gradients.trajectories import Episodes, collect_episodes
from mbpg.optim.pois import ascend_bound, categorical_log_d2, gaussian_log_d2, surrogate_bound
from mbpg.policies.mlp import CategoricalMLPPolicy
from mbpg.values import discount_weights


@dataclasses.dataclass(frozen=True)
class POISConfig:
    n_episodes: int = 100
    """Real episodes per iteration (one behaviour batch)."""
    delta: float = 0.4
    """Confidence of the bound (it holds with probability 1 - delta): smaller is more cautious, larger moves farther."""
    gamma: float = 1.0
    """Discount of the returns the bound is built on."""
    offline_iterations: int = 20
    """Most gradient + line-search steps on one batch (fewer when the bound stops gaining)."""
    line_search_iterations: int = 10
    """Parabolic-fit trials per line search."""
    tolerance: float = 1e-4
    """Stop the offline ascent once a step gains less than this (in units of the return bound)."""
    self_normalised: bool = True
    """Self-normalised importance weights (the default; --no-self-normalised for the plain ones). With plain
    weights the empirical bound is unbounded above: putting all target mass near one sampled episode of
    behaviour probability q grows the first term like 1/q and the penalty only like 1/sqrt(q), so the line search
    runs off (measured: P-POIS on CartPole-v1 stalled near return 65 with bounds of 1e21). Self-normalised weights
    keep the first term within the batch's returns."""
    initial_std: float = 1.0
    """A-POIS: initial std of a Gaussian policy; P-POIS: initial std of the hyperpolicy over policy weights."""


@dataclasses.dataclass(frozen=True)
class APOISConfig(POISConfig):
    delta: float = 0.9
    """Confidence of the bound (it holds with probability 1 - delta). A-POIS's per-step divergence product grows
    with the episode length, so it needs a bolder delta than P-POIS (CartPole-v1, 5 seeds: 0.4 -> 3/5 seeds at
    >= 475 by 1M steps, 0.9 -> 5/5 by 2M)."""


class POISState(eqx.Module):
    params: eqx.Module
    key: jax.Array


class _POIS:
    """What both variants share: spaces, the budget per iteration, the offline ascent and the metrics."""

    name = "pois"

    def __init__(self, config: POISConfig, env):
        if is_host_env(env):
            raise ValueError("POIS collects its episode batches inside jit; use a JAX port (CartPole-v1, "
                             "Pendulum-v1, MountainCarContinuous-v0, ...), not a host-side Gymnasium env.")
        self.config, self.env = config, env
        self.spec = env_spec(env)
        self.horizon = autoreset.episode_limit(env)
        self.steps_per_chunk = config.n_episodes * self.horizon
        self.weights = discount_weights(self.horizon, config.gamma)

    def _returns(self, episodes: Episodes) -> jax.Array:
        return jnp.sum(episodes.rewards * episodes.alive * self.weights, axis=-1)

    def _finish(self, state, key, params, value, moved, log_ratios, episodes):
        weights = jax.nn.softmax(log_ratios)
        metrics = {"bound": value, "offline_steps": moved.astype(jnp.float32),
                   "effective_sample_size": 1.0 / jnp.sum(jnp.square(weights)),
                   "train_episode_return": jnp.mean(jnp.sum(episodes.rewards * episodes.alive, -1)),
                   "real_env_steps": jnp.sum(episodes.alive).astype(jnp.float32)}
        return POISState(params, key), metrics


class APOIS(_POIS):
    """A-POIS: action-based importance sampling with per-step likelihood ratios."""

    name = "apois"

    def __init__(self, config: POISConfig, env):
        super().__init__(config, env)
        self.policy = make_policy(self.spec, hidden=())

    def init(self, key) -> POISState:
        key_policy, key = jax.random.split(key)
        params = self.policy.init(key_policy)
        if not self.spec.discrete:
            log_std = jnp.full_like(params.log_std, math.log(self.config.initial_std))
            params = dataclasses.replace(params, log_std=log_std)
        return POISState(params, key)

    def act(self, state: POISState, obs, key):
        return self.spec.clip(self.policy.mode(state.params, obs))

    def _step_log_d2(self, new, old, obs):
        if isinstance(self.policy, CategoricalMLPPolicy):
            return categorical_log_d2(jax.nn.log_softmax(self.policy.logits(new, obs)),
                                      jax.nn.log_softmax(self.policy.logits(old, obs)))
        return gaussian_log_d2(self.policy.mean(new, obs), self.policy.std(new), self.policy.mean(old, obs),
                               self.policy.std(old))

    def train_chunk(self, state: POISState):
        key, key_collect = jax.random.split(state.key)
        policy, spec = self.policy, self.spec

        def act(params, obs, key):
            action = policy.sample(params, obs, key)
            return action, spec.clip(action)

        episodes = collect_episodes(self.env, act, state.params, key_collect, self.config.n_episodes, self.horizon)
        returns = self._returns(episodes)
        return_bound = jnp.maximum(jnp.max(jnp.abs(returns)), 1e-8)
        per_step = jax.vmap(jax.vmap(policy.log_prob, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
        behaviour_log_probs = per_step(state.params, episodes.obs, episodes.actions)
        mask = episodes.alive

        def log_ratios(params):
            return jnp.sum((per_step(params, episodes.obs, episodes.actions) - behaviour_log_probs) * mask, -1)

        def bound(params):
            step_d2 = jax.vmap(jax.vmap(lambda o: self._step_log_d2(params, state.params, o)))(episodes.obs)
            per_episode = jnp.sum(step_d2 * mask, -1)
            log_d2 = jax.nn.logsumexp(per_episode) - jnp.log(per_episode.shape[0])
            return surrogate_bound(log_ratios(params), returns, log_d2, self.config.delta, return_bound,
                                   self.config.self_normalised) / return_bound

        params, value, moved = ascend_bound(bound, state.params, self.config.offline_iterations,
                                            self.config.line_search_iterations, self.config.tolerance)
        return self._finish(state, key, params, value, moved, log_ratios(params), episodes)


class Hyperpolicy(eqx.Module):
    """N(mean, diag exp(log_std)^2) over the flattened weights of a deterministic linear policy."""

    mean: jax.Array
    log_std: jax.Array

    def log_prob(self, weights: jax.Array) -> jax.Array:
        z = (weights - self.mean) * jnp.exp(-self.log_std)
        return -0.5 * jnp.sum(z * z) - jnp.sum(self.log_std) - 0.5 * weights.shape[-1] * math.log(2 * math.pi)


def natural_gradient(hyper: Hyperpolicy, gradient: Hyperpolicy) -> Hyperpolicy:
    """F^-1 g for the hyperpolicy: its Fisher in (mean, log std) is diagonal, diag(1 / sigma^2, 2)."""
    return Hyperpolicy(gradient.mean * jnp.exp(2 * hyper.log_std), gradient.log_std / 2.0)


class PPOIS(_POIS):
    """P-POIS: parameter-based importance sampling over a Gaussian hyperpolicy, natural-gradient ascent."""

    name = "ppois"

    def __init__(self, config: POISConfig, env):
        super().__init__(config, env)
        outputs = self.spec.n_actions if self.spec.discrete else self.spec.action_dim
        self.shape = (outputs, self.spec.obs_dim + 1)  # a linear map of [obs, 1]

    def init(self, key) -> POISState:
        size = math.prod(self.shape)
        hyper = Hyperpolicy(jnp.zeros(size), jnp.full(size, math.log(self.config.initial_std)))
        return POISState(hyper, key)

    def policy_action(self, weights, obs):
        """The deterministic linear policy: argmax of linear scores (discrete) or a clipped linear action."""
        scores = weights.reshape(self.shape) @ jnp.append(obs, 1.0)
        return jnp.argmax(scores) if self.spec.discrete else self.spec.clip(scores)

    def act(self, state: POISState, obs, key):
        return self.policy_action(state.params.mean, obs)

    def train_chunk(self, state: POISState):
        key, key_weights, key_collect = jax.random.split(state.key, 3)
        old = state.params
        draws = old.mean + jnp.exp(old.log_std) * jax.random.normal(key_weights, (self.config.n_episodes,
                                                                                  old.mean.shape[0]))

        def act(weights, obs, key):
            action = self.policy_action(weights, obs)
            return action, action

        episodes = collect_episodes(self.env, act, draws, key_collect, self.config.n_episodes, self.horizon,
                                    params_axis=0)
        returns = self._returns(episodes)
        return_bound = jnp.maximum(jnp.max(jnp.abs(returns)), 1e-8)
        behaviour_log_probs = jax.vmap(old.log_prob)(draws)

        def log_ratios(hyper):
            return jax.vmap(hyper.log_prob)(draws) - behaviour_log_probs

        def bound(hyper):
            log_d2 = gaussian_log_d2(hyper.mean, jnp.exp(hyper.log_std), old.mean, jnp.exp(old.log_std))
            return surrogate_bound(log_ratios(hyper), returns, log_d2, self.config.delta, return_bound,
                                   self.config.self_normalised) / return_bound

        hyper, value, moved = ascend_bound(bound, old, self.config.offline_iterations,
                                           self.config.line_search_iterations, self.config.tolerance,
                                           natural_gradient)
        return self._finish(state, key, hyper, value, moved, log_ratios(hyper), episodes)
