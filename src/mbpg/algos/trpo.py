"""TRPO (Schulman et al. 2015): a natural-gradient step on the importance-weighted surrogate inside a KL ball,
by conjugate gradients and a backtracking line search (mbpg.optim.trust_region_step, shared with ME-TRPO and SLBO).

Gradient type: MFG by default (real states, real advantages by GAE). `gradient` swaps in the model-based
candidates of `mbpg.algos.model_gradients` (mvg, fmg) or their adaptive mix (auto, auto-cf, auto-is): the step is then
taken on the mixed surrogate sum_k mean(ratio_k * w_k A_k), whose gradient at the current policy is the chosen
mix, inside the same trust region (the KL measured on every candidate's states).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.model_gradients import (LearnedModel, ModelGradients, ModelGradientSettings,
                                         check_gradient_settings)
from mbpg.algos.on_policy import (OnPolicyAgent, advantages_and_returns, finished_episode_return, fit_value,
                                  flatten_time)
from mbpg.keys import side_key
from mbpg.optim import trust_region_step
from mbpg.values import ValueNetwork


@dataclasses.dataclass(frozen=True)
class TrustRegionSettings:
    """The options of TRPO's update (trust-region step, GAE, value regression). TRPO and the agents that run the
    same update on imagined rollouts (ME-TRPO, SLBO) share them."""

    max_kl: float = 0.01
    """Trust-region radius: mean KL(pi_old || pi_new) allowed per update."""
    cg_iterations: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    damping: float = 0.1
    """Fisher damping."""
    backtrack_ratio: float = 0.8
    """Line-search shrink factor."""
    max_backtracks: int = 10
    """Line-search tries."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE(lambda)."""
    value_learning_rate: float = 1e-3
    """Adam step size of the value network."""
    value_epochs: int = 10
    """Passes of value regression per batch."""
    value_minibatches: int = 16
    """Minibatches per value pass."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths."""

    def trust_region_settings(self) -> dict:
        """These options as keyword arguments, e.g. to build a TRPOConfig from a subclass's config."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(TrustRegionSettings)}


@dataclasses.dataclass(frozen=True)
class TRPOConfig(TrustRegionSettings, ModelGradientSettings):
    n_envs: int = 8
    """Environments stepped in parallel (per seed)."""
    n_steps: int = 256
    """Steps per environment per update."""


class TRPOState(eqx.Module):
    policy_params: eqx.Module
    value: ValueNetwork
    value_opt: optax.OptState
    env_states: object
    key: jax.Array
    model: LearnedModel | None = None  # only for the model-based gradients


class TRPO(OnPolicyAgent):
    name = "trpo"

    def __init__(self, config: TRPOConfig, env):
        super().__init__(config, env)
        self.value_optimizer = optax.adam(config.value_learning_rate)
        if self.steps_per_chunk < config.value_minibatches:
            raise ValueError(f"n_envs * n_steps = {self.steps_per_chunk} samples cannot fill --value-minibatches "
                             f"{config.value_minibatches}; collect more per update or lower --value-minibatches.")
        check_gradient_settings(config, env, self.spec)
        self.model_gradients = None if config.gradient == "mfg" else ModelGradients(
            config, env, self.spec, self.policy, config.gamma, config.gae_lambda)

    def init(self, key) -> TRPOState:
        key_policy, key_value, key_env, key = jax.random.split(key, 4)
        value = ValueNetwork(self.spec.obs_dim, self.config.hidden, key_value)
        model = None if self.model_gradients is None else self.model_gradients.init(side_key(key, "model init"))
        return TRPOState(self.policy.init(key_policy), value, self.value_optimizer.init(eqx.filter(value, eqx.is_array)),
                         self.reset_envs(key_env), key, model)

    def learn(self, state: TRPOState, rollout, key_value):
        config = self.config
        advantages, returns = advantages_and_returns(rollout, state.value, config.gamma, config.gae_lambda)
        old_params = state.policy_params
        log_prob = jax.vmap(self.policy.log_prob, in_axes=(None, 0, 0))
        model, model_metrics = state.model, {}
        if self.model_gradients is None:
            obs, actions, old_log_probs, advantages, returns = flatten_time(
                (rollout.obs, rollout.action, rollout.log_prob, advantages, returns))
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            def surrogate_loss(params):
                return -jnp.mean(jnp.exp(log_prob(params, obs, actions) - old_log_probs) * advantages)

            kl_obs = obs
        else:
            # One scale for every candidate (no mean shift: the selector compared these very advantages).
            scale = advantages.std() + 1e-8
            model, samples, model_metrics = self.model_gradients.step(
                state.model, old_params, state.value, rollout, advantages, scale,
                side_key(key_value, "model gradients"))
            obs, returns = flatten_time((rollout.obs, returns))
            log_prob_k = jax.vmap(log_prob, in_axes=(None, 1, 1), out_axes=1)

            def surrogate_loss(params):
                ratio = jnp.exp(log_prob_k(params, samples.obs, samples.action) - samples.log_prob)
                return -jnp.sum(jnp.mean(ratio * samples.advantage, 0))

            kl_obs = samples.obs.reshape((-1, self.spec.obs_dim))

        def mean_kl(params):
            return jnp.mean(jax.vmap(self.policy.kl, in_axes=(None, None, 0))(old_params, params, kl_obs))

        params, info = trust_region_step(surrogate_loss, mean_kl, old_params, config.max_kl, config.cg_iterations,
                                         config.damping, config.backtrack_ratio, config.max_backtracks)
        value, value_opt, value_loss = fit_value(state.value, self.value_optimizer, state.value_opt, obs, returns,
                                                 key_value, config.value_epochs, config.value_minibatches)
        metrics = {"surrogate_improvement": info["improvement"], "kl": info["kl"],
                   "step_accepted": info["accepted"].astype(jnp.float32), "value_loss": value_loss,
                   "train_episode_return": finished_episode_return(rollout), **model_metrics}
        return dataclasses.replace(state, policy_params=params, value=value, value_opt=value_opt,
                                   model=model), metrics
