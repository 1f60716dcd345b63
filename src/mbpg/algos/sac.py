"""SAC (Haarnoja et al. 2018): twin soft Q critics, a tanh-Gaussian actor trained by the reparameterised
(pathwise) gradient, and automatic entropy temperature.

Gradient type: MFG — the pathwise form with Q learned from real transitions only (MBPO reuses this agent with
model transitions, which is what moves it to MVG/FMG).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.off_policy import OffPolicyAgent
from mbpg.algos.on_policy import is_host_env
from mbpg.algos.replay import Replay
from mbpg.algos.spaces import env_spec
from mbpg.envs import autoreset
from mbpg.policies.mlp import TanhGaussianMLPPolicy
from mbpg.values import TwinQNetwork, soft_update


@dataclasses.dataclass(frozen=True)
class SACConfig:
    learning_rate: float = 1e-3
    """Adam step size of actor, critics and temperature (the SB3 zoo's Pendulum setting)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    learning_starts: int = 100
    """Uniform-random actions before the first update."""
    buffer_size: int = 1_000_000
    """Replay capacity (fixed, so that a resumed run with more --steps keeps the same state shapes)."""
    updates_per_step: int = 1
    """Gradient steps per environment step."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    initial_temperature: float = 1.0
    """Starting entropy temperature alpha."""
    chunk_steps: int = 1000
    """Environment steps per compiled chunk (logging and checkpoint granularity)."""


class SACState(eqx.Module):
    actor: eqx.Module
    critic: TwinQNetwork
    target_critic: TwinQNetwork
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    replay: Replay
    env_state: autoreset.EnvState
    steps: jax.Array
    key: jax.Array


LEARNER_FIELDS = ("actor", "critic", "target_critic", "log_alpha", "actor_opt", "critic_opt", "alpha_opt")


class SAC(OffPolicyAgent):
    name = "sac"
    learner_fields = LEARNER_FIELDS

    def __init__(self, config: SACConfig, env):
        self.config, self.env = config, env
        self.spec = env_spec(env)
        if self.spec.discrete:
            raise ValueError("SAC here is for continuous actions (a Box action space); use ppo for discrete ones.")
        self.policy = TanhGaussianMLPPolicy(self.spec.obs_dim, self.spec.action_dim, hidden=config.hidden,
                                            action_low=self.spec.action_low, action_high=self.spec.action_high)
        self.capacity = config.buffer_size
        self.limit = autoreset.episode_limit(env)
        self.steps_per_chunk = config.chunk_steps
        self.target_entropy = -float(self.spec.action_dim)
        self.optimizer = optax.adam(config.learning_rate)

    def init(self, key) -> SACState:
        key_actor, key_critic, key_env, key = jax.random.split(key, 4)
        actor = self.policy.init(key_actor)
        critic = TwinQNetwork(self.spec.obs_dim, self.spec.action_dim, self.config.hidden, key_critic)
        log_alpha = jnp.log(jnp.asarray(self.config.initial_temperature, jnp.float32))
        env_state = None if is_host_env(self.env) else autoreset.reset(self.env, key_env)
        obs = jnp.zeros(self.spec.obs_dim, jnp.float32)
        example = {"obs": obs, "action": jnp.zeros(self.spec.action_dim), "reward": jnp.zeros(()),
                   "next_obs": obs, "terminated": jnp.zeros((), bool)}
        return SACState(actor, critic, critic, log_alpha, self.optimizer.init(eqx.filter(actor, eqx.is_array)),
                        self.optimizer.init(eqx.filter(critic, eqx.is_array)), self.optimizer.init(log_alpha),
                        Replay.create(example, self.capacity), env_state, jnp.zeros((), jnp.int32), key)

    def act(self, state: SACState, obs, key):
        return self.policy.mode(state.actor, obs)

    def update(self, state: SACState, key) -> tuple[SACState, dict]:
        key_batch, key_next, key_new = jax.random.split(key, 3)
        batch = state.replay.sample(key_batch, self.config.batch_size)
        alpha = jnp.exp(state.log_alpha)
        n = self.config.batch_size
        sample = jax.vmap(self.policy.sample_with_log_prob, in_axes=(None, 0, 0))
        next_actions, next_log_probs = sample(state.actor, batch["next_obs"], jax.random.split(key_next, n))
        q1_next, q2_next = jax.vmap(state.target_critic)(batch["next_obs"], next_actions)
        # Bootstrap through truncations, not through true terminal states.
        target = batch["reward"] + self.config.gamma * (1.0 - batch["terminated"]) * (
            jnp.minimum(q1_next, q2_next) - alpha * next_log_probs)
        target = jax.lax.stop_gradient(target)

        def critic_loss(critic):
            q1, q2 = jax.vmap(critic)(batch["obs"], batch["action"])
            return jnp.mean((q1 - target) ** 2) + jnp.mean((q2 - target) ** 2)

        loss_q, grads = eqx.filter_value_and_grad(critic_loss)(state.critic)
        updates, critic_opt = self.optimizer.update(grads, state.critic_opt)
        critic = eqx.apply_updates(state.critic, updates)

        def actor_loss(actor):
            actions, log_probs = sample(actor, batch["obs"], jax.random.split(key_new, n))
            q1, q2 = jax.vmap(critic)(batch["obs"], actions)
            return jnp.mean(alpha * log_probs - jnp.minimum(q1, q2)), log_probs

        (loss_pi, log_probs), grads = eqx.filter_value_and_grad(actor_loss, has_aux=True)(state.actor)
        updates, actor_opt = self.optimizer.update(grads, state.actor_opt)
        actor = eqx.apply_updates(state.actor, updates)

        entropy_gap = jax.lax.stop_gradient(log_probs + self.target_entropy)
        loss_alpha, grad_alpha = jax.value_and_grad(lambda la: -jnp.mean(la * entropy_gap))(state.log_alpha)
        updates, alpha_opt = self.optimizer.update(grad_alpha, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        target_critic = soft_update(state.target_critic, critic, self.config.tau)
        new_state = dataclasses.replace(state, actor=actor, critic=critic, target_critic=target_critic,
                                        log_alpha=log_alpha, actor_opt=actor_opt, critic_opt=critic_opt,
                                        alpha_opt=alpha_opt)
        return new_state, {"critic_loss": loss_q, "actor_loss": loss_pi, "alpha_loss": loss_alpha,
                           "alpha": jnp.exp(log_alpha), "entropy": -log_probs.mean()}

    def observe(self, state: SACState, transition: dict, key_update) -> tuple[SACState, dict]:
        """Store one real transition and, once learning has started, take the gradient steps of this env step."""
        state = dataclasses.replace(state, replay=state.replay.add(transition), steps=state.steps + 1)
        return self.learn_if_ready(state, key_update)
