"""PPO (Schulman et al. 2017): clipped-ratio surrogate, several epochs of minibatches per rollout.

Gradient type: MFG by default. States, actions and advantages all come from the real environment; the clip only
limits how far one batch moves the policy. `gradient` swaps in the model-based candidates of
`mbpg.algos.model_gradients` (mvg, fmg) or their adaptive mix (auto, auto-cf, auto-is), chosen once per rollout at the
collecting policy: every epoch then optimises the clipped surrogate summed over the candidates with their
advantages times their weights, whose gradient at the collecting policy is the chosen mix.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.model_gradients import (LearnedModel, ModelGradients, ModelGradientSettings,
                                         check_gradient_settings)
from mbpg.algos.on_policy import (OnPolicyAgent, advantages_and_returns, finished_episode_return, flatten_time,
                                  minibatch_epochs)
from mbpg.keys import side_key
from mbpg.optim import ppo_clip_loss
from mbpg.values import ValueNetwork


@dataclasses.dataclass(frozen=True)
class PPOConfig(ModelGradientSettings):
    """Defaults follow the Stable-Baselines3 zoo's CartPole-v1 setting (without its linear schedules)."""

    n_envs: int = 8
    """Environments stepped in parallel (per seed)."""
    n_steps: int = 32
    """Steps per environment between updates; a chunk is n_envs * n_steps env steps."""
    epochs: int = 20
    """Passes over each rollout."""
    minibatches: int = 1
    """Minibatches per epoch."""
    learning_rate: float = 1e-3
    """Adam step size for policy and value network."""
    gamma: float = 0.98
    """Discount."""
    gae_lambda: float = 0.8
    """GAE(lambda) trade-off between bias (0) and variance (1)."""
    clip: float = 0.2
    """Ratio clip range."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    value_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of policy and value networks."""


class PPOState(eqx.Module):
    policy_params: eqx.Module
    value: ValueNetwork
    opt_state: optax.OptState
    env_states: object
    key: jax.Array
    model: LearnedModel | None = None  # only for the model-based gradients


class PPO(OnPolicyAgent):
    name = "ppo"

    def __init__(self, config: PPOConfig, env):
        super().__init__(config, env)
        if self.steps_per_chunk % config.minibatches:
            raise ValueError(f"n_envs * n_steps = {self.steps_per_chunk} must be divisible by minibatches "
                             f"= {config.minibatches}.")
        self.optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                                     optax.adam(config.learning_rate, eps=1e-5))
        check_gradient_settings(config, env, self.spec)
        self.model_gradients = None if config.gradient == "mfg" else ModelGradients(
            config, env, self.spec, self.policy, config.gamma, config.gae_lambda)

    def init(self, key) -> PPOState:
        key_policy, key_value, key_env, key = jax.random.split(key, 4)
        policy_params = self.policy.init(key_policy)
        value = ValueNetwork(self.spec.obs_dim, self.config.hidden, key_value)
        opt_state = self.optimizer.init(eqx.filter((policy_params, value), eqx.is_array))
        model = None if self.model_gradients is None else self.model_gradients.init(side_key(key, "model init"))
        return PPOState(policy_params, value, opt_state, self.reset_envs(key_env), key, model)

    def loss(self, models, batch):
        """Batch (obs, actions, old log-probs, advantages, returns) of real samples; with model-based gradients
        the first four carry a candidate axis [B, K', ...] (weighted advantages, `weighted_samples`) and a sixth
        entry holds the real observations [B, obs] that the value and the entropy are measured on."""
        policy_params, value = models
        obs, actions, old_log_probs, advantages, returns = batch[:5]
        log_prob = jax.vmap(self.policy.log_prob, in_axes=(None, 0, 0))
        if len(batch) == 5:
            log_probs = log_prob(policy_params, obs, actions)
            policy_loss, info = ppo_clip_loss(log_probs, old_log_probs, advantages, self.config.clip)
        else:  # the mixed surrogate: summed over the candidates, each with its weight inside its advantages
            log_probs = jax.vmap(log_prob, in_axes=(None, 1, 1), out_axes=1)(policy_params, obs, actions)
            losses, infos = jax.vmap(lambda *x: ppo_clip_loss(*x, self.config.clip), in_axes=1)(
                log_probs, old_log_probs, advantages)
            policy_loss, info = losses.sum(), jax.tree.map(jnp.mean, infos)
            obs = batch[5]
        entropy = jax.vmap(self.policy.entropy, in_axes=(None, 0))(policy_params, obs).mean()
        value_loss = 0.5 * jnp.mean((jax.vmap(value)(obs) - returns) ** 2)
        total = policy_loss - self.config.entropy_coef * entropy + self.config.value_coef * value_loss
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, **info}

    def learn(self, state: PPOState, rollout, key_epochs):
        config = self.config
        advantages, returns = advantages_and_returns(rollout, state.value, config.gamma, config.gae_lambda)
        model, model_metrics = state.model, {}
        if self.model_gradients is None:
            data = flatten_time((rollout.obs, rollout.action, rollout.log_prob, advantages, returns))
        else:
            # Chosen once, at the collecting policy; one scale for all candidates and no per-minibatch
            # normalisation (it would re-weight the candidates differently in every minibatch).
            model, samples, model_metrics = self.model_gradients.step(
                state.model, state.policy_params, state.value, rollout, advantages, advantages.std() + 1e-8,
                side_key(key_epochs, "model gradients"))
            data = (*samples, *flatten_time((returns, rollout.obs)))

        def minibatch_step(carry, batch):
            models, opt_state = carry
            if self.model_gradients is None:
                obs, actions, log_probs, adv, ret = batch
                batch = (obs, actions, log_probs, (adv - adv.mean()) / (adv.std() + 1e-8), ret)
            (_, info), grads = eqx.filter_value_and_grad(self.loss, has_aux=True)(models, batch)
            updates, opt_state = self.optimizer.update(grads, opt_state, eqx.filter(models, eqx.is_array))
            return (eqx.apply_updates(models, updates), opt_state), info

        models = (state.policy_params, state.value)
        (models, opt_state), infos = minibatch_epochs(minibatch_step, (models, state.opt_state), data, key_epochs,
                                                      config.epochs, config.minibatches)
        metrics = {**infos, **model_metrics}
        metrics["train_episode_return"] = finished_episode_return(rollout)
        return dataclasses.replace(state, policy_params=models[0], value=models[1], opt_state=opt_state,
                                   model=model), metrics
