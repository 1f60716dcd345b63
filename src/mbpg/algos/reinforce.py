"""REINFORCE in its GPOMDP form: reward-to-go with a learned state-value baseline, one gradient step per batch.

Gradient type: MFG by default — the score-function estimator of mbpg.gradients ("gpomdp" with a baseline) applied
to a neural policy on real trajectories. `gradient` swaps where Q (and d) come from: mvg and fmg use an ensemble
fitted on the run's real transitions, and auto mixes mfg, mvg and fmg at every update by the minimum estimated
MSE (`mbpg.algos.model_gradients`, derivation in docs/selector.md). The baseline and the step rule are the same
for all four.
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
from mbpg.values import ValueNetwork


VALUE_MINIBATCHES = 4
"""Minibatches per epoch of the value baseline's regression."""


@dataclasses.dataclass(frozen=True)
class ReinforceConfig(ModelGradientSettings):
    n_envs: int = 8
    """Environments stepped in parallel (per seed)."""
    n_steps: int = 256
    """Steps per environment per update."""
    learning_rate: float = 1e-3
    """Adam step size of the policy."""
    value_learning_rate: float = 1e-3
    """Adam step size of the baseline."""
    value_epochs: int = 5
    """Passes of baseline regression per batch."""
    gamma: float = 0.99
    """Discount."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of policy and baseline."""
    normalize_advantages: bool = True
    """Divide advantages by their batch standard deviation (a per-batch step-size rescale)."""


class ReinforceState(eqx.Module):
    policy_params: eqx.Module
    value: ValueNetwork
    policy_opt: optax.OptState
    value_opt: optax.OptState
    env_states: object
    key: jax.Array
    model: LearnedModel | None = None  # only for the model-based gradients


class Reinforce(OnPolicyAgent):
    name = "reinforce"

    def __init__(self, config: ReinforceConfig, env):
        super().__init__(config, env)
        self.policy_optimizer = optax.adam(config.learning_rate)
        self.value_optimizer = optax.adam(config.value_learning_rate)
        if self.steps_per_chunk < VALUE_MINIBATCHES:
            raise ValueError(f"n_envs * n_steps = {self.steps_per_chunk} samples cannot fill the value fit's "
                             f"{VALUE_MINIBATCHES} minibatches; collect at least {VALUE_MINIBATCHES} per update.")
        check_gradient_settings(config, env, self.spec)
        self.model_gradients = None if config.gradient == "mfg" else ModelGradients(
            config, env, self.spec, self.policy, config.gamma)

    def init(self, key) -> ReinforceState:
        key_policy, key_value, key_env, key = jax.random.split(key, 4)
        params = self.policy.init(key_policy)
        value = ValueNetwork(self.spec.obs_dim, self.config.hidden, key_value)
        model = None
        if self.model_gradients is not None:
            model = self.model_gradients.init(side_key(key, "model init"))
        return ReinforceState(params, value, self.policy_optimizer.init(eqx.filter(params, eqx.is_array)),
                              self.value_optimizer.init(eqx.filter(value, eqx.is_array)),
                              self.reset_envs(key_env), key, model)

    def learn(self, state: ReinforceState, rollout, key):
        config = self.config
        key_value = key  # as before model-based gradients existed, so mfg runs keep their numbers
        key_model, key_candidates = jax.random.split(side_key(key, "model gradients"))
        batch_advantages, returns = advantages_and_returns(rollout, state.value, config.gamma, 1.0)
        obs, actions, advantages, returns = flatten_time((rollout.obs, rollout.action, batch_advantages, returns))
        scale = advantages.std() + 1e-8 if config.normalize_advantages else 1.0
        advantages = advantages / scale

        def policy_loss(params):
            log_probs = jax.vmap(self.policy.log_prob, in_axes=(None, 0, 0))(params, obs, actions)
            return -jnp.mean(log_probs * advantages)

        loss, grads = eqx.filter_value_and_grad(policy_loss)(state.policy_params)
        model, model_metrics = state.model, {}
        if self.model_gradients is not None:
            # The model is fitted on earlier updates' data only, then this batch joins the buffer.
            model, model_metrics = self.model_gradients.refit(model, key_model)
            grads, choice = self.model_gradients.gradient(state.policy_params, state.value, model.ensemble, rollout,
                                                          batch_advantages, scale, key_candidates)
            model = self.model_gradients.store(model, rollout)
            model_metrics = {**model_metrics, **choice}
        updates, policy_opt = self.policy_optimizer.update(grads, state.policy_opt)
        params = eqx.apply_updates(state.policy_params, updates)
        value, value_opt, value_loss = fit_value(state.value, self.value_optimizer, state.value_opt, obs, returns,
                                                 key_value, config.value_epochs, VALUE_MINIBATCHES)
        metrics = {"policy_loss": loss, "value_loss": value_loss,
                   "train_episode_return": finished_episode_return(rollout), **model_metrics}
        return dataclasses.replace(state, policy_params=params, value=value, policy_opt=policy_opt,
                                   value_opt=value_opt, model=model), metrics
