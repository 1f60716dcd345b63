"""SLBO (Luo et al. 2019): alternate a multi-step model fit and TRPO inside the model, stage after stage.

One stage per training chunk:
  1. collect `n_envs x n_steps` real steps with the policy's mean action plus Ornstein-Uhlenbeck noise
     (theta 0.15, sigma 0.3 in units of the action box's half-width, SLBO's exploration): temporally correlated
     noise pushes a pendulum much further from the policy's own states than white noise of the same size;
  2. recompute the model's normalisation on all real data (SLBO refreshes its normalisers each stage);
  3. `alternations` times: `model_steps` Adam steps on the multi-step L2-norm loss (horizon H, rolling the model
     forward from real states along real actions, mbpg.models.deterministic.train_multi_step), then
     `policy_iterations` TRPO steps on imagined rollouts (start states from the real initial distribution, the
     known reward). Alternating, rather than fitting the model to convergence first, is the algorithm: the
     model keeps being corrected on the data while the policy moves (the paper's stochastic lower-bound view).

The model is a deterministic MLP of the normalised state change (one member by default, as in SLBO; with more
members a random one is used at each imagined step, as in ME-TRPO). The model's optimiser state (Adam with
gradient clipping and an L2 penalty) carries over from stage to stage.

Gradient type: FMG (imagined states and imagined returns).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.metrpo import ImaginedTRPOSettings, ModelTRPOAgent
from mbpg.envs import autoreset
from mbpg.models.deterministic import (
    DeterministicEnsemble,
    TrajectoryBuffer,
    init_multi_step_state,
    multi_step_optimizer,
    normalise,
    train_multi_step,
)
from mbpg.values import ValueNetwork


@dataclasses.dataclass(frozen=True)
class SLBOConfig(ImaginedTRPOSettings):
    # real data
    n_envs: int = 2
    """Real environments stepped in parallel."""
    n_steps: int = 100
    """Real steps per environment per stage (the stored segment length; must be >= the model horizon)."""
    buffer_size: int = 10_000
    """Real transitions kept (oldest segments overwritten first). Every fit reads the whole fixed-size buffer
    through a mask, so its cost grows with this capacity, not with the data: keep it near what a run collects."""
    ou_theta: float = 0.15
    """Mean reversion of the OU exploration noise (SLBO's 0.15)."""
    ou_sigma: float = 0.3
    """Scale of the OU noise's innovations, in units of the action box's half-width (SLBO's 0.3)."""
    # model
    ensemble_size: int = 1
    """Deterministic models trained side by side (SLBO uses one)."""
    model_hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of the model (SLBO's MuJoCo model is 2 x 500)."""
    model_activation: str = "relu"
    """Hidden activation of the model."""
    model_horizon: int = 2
    """H: steps the model is rolled forward from a real state in the multi-step loss (SLBO's 2)."""
    model_learning_rate: float = 1e-3
    """Adam step size of the model (SLBO's 1e-3)."""
    model_weight_decay: float = 1e-5
    """L2 penalty on the model's parameters (SLBO's 1e-5)."""
    model_max_grad_norm: float = 2.0
    """Global-norm clip of each model member's gradient (SLBO's 2)."""
    model_batch_size: int = 128
    """H-step windows per model gradient step."""
    model_steps: int = 100
    """Model gradient steps per alternation (SLBO's 100)."""
    # alternation
    alternations: int = 5
    """Rounds of {model steps, TRPO steps} per stage (SLBO's 20, on 10^4 real steps per stage)."""
    policy_iterations: int = 8
    """TRPO iterations in the model per alternation (SLBO's 40)."""


class SLBOState(eqx.Module):
    policy_params: eqx.Module
    value: ValueNetwork
    value_opt: optax.OptState
    model: DeterministicEnsemble
    model_opt: optax.OptState
    buffer: TrajectoryBuffer
    env_states: object
    noise: jax.Array  # [n_envs, action_dim] OU exploration state
    key: jax.Array


def ou_step(noise: jax.Array, key: jax.Array, theta: float, sigma: float) -> jax.Array:
    """One Ornstein-Uhlenbeck step with unit time step: x' = x - theta x + sigma N(0, 1), mean-reverting to 0."""
    return noise - theta * noise + sigma * jax.random.normal(key, noise.shape, noise.dtype)


class SLBO(ModelTRPOAgent):
    name = "slbo"

    def __init__(self, config: SLBOConfig, env):
        if config.model_horizon > config.n_steps:
            raise ValueError(f"--model-horizon ({config.model_horizon}) exceeds --n-steps ({config.n_steps}): the "
                             "multi-step loss needs windows of H consecutive real steps inside one stored segment.")
        super().__init__(config, env)
        self.model_optimizer = multi_step_optimizer(config.model_learning_rate, config.model_weight_decay,
                                                    config.model_max_grad_norm)
        low, high = jnp.asarray(self.spec.action_low), jnp.asarray(self.spec.action_high)
        self.half_range = tuple(map(float, 0.5 * (high - low)))

    def init(self, key) -> SLBOState:
        key, key_parts = jax.random.split(key)
        params, value, value_opt, model, buffer, env_states = self.init_parts(key_parts)
        noise = jnp.zeros((self.config.n_envs, self.spec.action_dim))
        return SLBOState(params, value, value_opt, model, init_multi_step_state(self.model_optimizer, model), buffer,
                         env_states, noise, key)

    def collect(self, params, env_states, noise, key):
        """n_steps of every real env with mode + OU noise; returns env states, noise, and the transitions
        [n_steps, n_envs]. The noise restarts from 0 with each new episode."""
        c = self.config
        half_range = jnp.asarray(self.half_range)

        def one_step(carry, key):
            env_states, noise = carry
            key_noise, key_env = jax.random.split(key)
            noise = ou_step(noise, key_noise, c.ou_theta, c.ou_sigma)
            actions = jax.vmap(self.policy.mode, in_axes=(None, 0))(params, env_states.obs) + noise * half_range
            env_states, transition = jax.vmap(
                lambda s, a, k: autoreset.step(self.env, s, self.spec.clip(a), k, self.limit))(
                env_states, actions, jax.random.split(key_env, c.n_envs))
            done = transition.terminated | transition.truncated
            return (env_states, jnp.where(done[:, None], 0.0, noise)), transition

        (env_states, noise), transitions = jax.lax.scan(one_step, (env_states, noise), jax.random.split(key, c.n_steps))
        return env_states, noise, transitions

    def train_chunk(self, state: SLBOState):
        c = self.config
        key, key_collect, key_alternate = jax.random.split(state.key, 3)
        env_states, noise, real = self.collect(state.policy_params, state.env_states, state.noise, key_collect)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        done = real.terminated | real.truncated
        buffer = state.buffer.add(swap(real.obs), swap(real.action), swap(real.next_obs), swap(done),
                                  jnp.zeros(c.n_envs, bool))
        model = normalise(state.model, buffer, jnp.repeat(buffer.filled, buffer.length).astype(jnp.float32))

        def alternation(carry, key):
            params, value, value_opt, model, model_opt = carry
            key_model, key_policy = jax.random.split(key)
            model, model_opt, model_loss = train_multi_step(model, model_opt, self.model_optimizer, buffer, key_model,
                                                            horizon=c.model_horizon, n_steps=c.model_steps,
                                                            batch_size=c.model_batch_size)

            def policy_step(carry, key):
                params, value, value_opt = carry
                params, value, value_opt, metrics = self.policy_iteration(params, value, value_opt, model, key)
                return (params, value, value_opt), metrics

            (params, value, value_opt), metrics = jax.lax.scan(
                policy_step, (params, value, value_opt), jax.random.split(key_policy, c.policy_iterations))
            metrics = jax.tree.map(lambda m: m[-1], metrics)
            return (params, value, value_opt, model, model_opt), {**metrics, "model_loss": model_loss}

        carry = (state.policy_params, state.value, state.value_opt, model, state.model_opt)
        (params, value, value_opt, model, model_opt), metrics = jax.lax.scan(
            alternation, carry, jax.random.split(key_alternate, c.alternations))
        first_model_loss = metrics["model_loss"][0]
        metrics = {k: v[-1] for k, v in metrics.items()}
        metrics["model_loss_first"] = first_model_loss
        finished = jnp.sum(done)
        metrics["train_episode_return"] = jnp.where(
            finished > 0, jnp.sum(real.episode_return) / jnp.maximum(finished, 1), jnp.nan)
        return SLBOState(params, value, value_opt, model, model_opt, buffer, env_states, noise, key), metrics
