"""ME-TRPO (Kurutach et al. 2018): TRPO run entirely inside an ensemble of learned deterministic models.

One outer iteration per training chunk:
  1. collect `n_envs x n_steps` real steps with the current (stochastic) policy; each env's stretch of steps is a
     trajectory segment, fixed once as training or validation data (mbpg.models.deterministic);
  2. refit every member on the squared L2 loss of the normalised state change, early stopping on the
     trajectory-level validation split;
  3. TRPO on imagined rollouts: start states drawn from the REAL initial distribution (the env's own reset), a
     random member at every step of every rollout (so the policy cannot exploit one member's errors), the known
     reward function; advantages by GAE with a value network fit on the imagined returns;
  4. policy validation every `validate_every` TRPO iterations: the policy's deterministic return from fixed
     start states under each member alone; if fewer than `improvement_threshold` (70%) of the members see it
     improve on the previous validation, policy optimisation stops for this iteration (the models no longer
     agree that it is getting better, so further steps probably exploit model error).

Gradient type: FMG. The states d come from model rollouts and Q from model returns (GAE on imagined rewards).

`ModelTRPOAgent` holds what ME-TRPO and SLBO (mbpg.algos.slbo) share: the imagined environment, one TRPO
iteration inside a model (the update is `mbpg.algos.trpo.TRPO.learn`, unchanged: only the rollout it sees is
imagined), the real-data buffer and acting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.mbpo import known_reward_and_termination
from mbpg.algos.on_policy import collect, finished_episode_return, is_host_env, make_policy, reset_envs
from mbpg.algos.spaces import env_spec
from mbpg.algos.trpo import TRPO, TRPOConfig, TRPOState, TrustRegionSettings
from mbpg.envs import autoreset
from mbpg.models.deterministic import (
    DeterministicEnsemble,
    TrajectoryBuffer,
    fit_one_step,
    init_deterministic_ensemble,
    predict,
    validation_split,
)
from mbpg.values import ValueNetwork


class ImaginedEnv(eqx.Module):
    """The model stepped like a functional environment, so `collect` and `autoreset` roll out in it unchanged.

    The state is the observation. `reset` is the real environment's reset (ME-TRPO starts imagined rollouts from
    the real initial distribution, which is known for our JAX ports). `member` None draws a member uniformly at
    every step (ME-TRPO); an integer array picks one member for the whole rollout (policy validation, SLBO).
    The reward is the environment's known reward of (obs, clipped action, next obs).
    """

    model: DeterministicEnsemble
    member: jax.Array | None
    real_env: object = eqx.field(static=True)
    reward_fn: Callable = eqx.field(static=True)
    termination_fn: Callable = eqx.field(static=True)
    max_episode_steps: int = eqx.field(static=True)

    def reset(self, key: jax.Array) -> jax.Array:
        return autoreset.observe(self.real_env, self.real_env.reset(key)).astype(self.model.input_mean.dtype)

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array):
        if self.member is None:
            index = jax.random.randint(key, (), 0, self.model.n_members)
        else:
            index = self.member
        next_obs = predict(self.model, index, state, action)
        return next_obs, jnp.asarray(self.reward_fn(state, action, next_obs), state.dtype)

    def observation(self, state: jax.Array) -> jax.Array:
        return state

    def is_terminal(self, state: jax.Array) -> jax.Array:
        return jnp.asarray(self.termination_fn(state), bool)


def rollout_segments(rollout, spec) -> tuple:
    """Time-major real rollout [T, n_envs] -> per-env segments [n_envs, T] of (obs, clipped action, next_obs,
    done): the model learns from the action the environment actually received."""
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return (swap(rollout.obs), swap(spec.clip(rollout.action)), swap(rollout.next_obs),
            swap(rollout.terminated | rollout.truncated))


def validation_verdict(returns: jax.Array, reference: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
    """ME-TRPO's policy validation: (share of members whose return strictly improved on the reference, whether
    that share is below `threshold`, i.e. whether to stop optimising the policy)."""
    share = jnp.mean((returns > reference).astype(jnp.float32))
    return share, share < threshold


class ModelTRPOAgent:
    """Set-up shared by ME-TRPO and SLBO: spaces, policy, the model's known reward, TRPO inside the model."""

    name = "model-trpo"

    def __init__(self, config, env):
        if is_host_env(env):
            raise ValueError(f"{self.name} runs on the JAX ports (e.g. Pendulum-v1): the imagined rollouts start "
                             "from the env's own reset inside the compiled chunk; host-side Gymnasium envs are "
                             "not supported.")
        self.config, self.env = config, env
        self.spec = env_spec(env)
        if self.spec.discrete:
            raise ValueError(f"{self.name} models continuous actions; {type(env).__name__} has discrete ones. Use "
                             "a continuous-control env such as Pendulum-v1.")
        self.reward_fn, self.termination_fn = known_reward_and_termination(
            env, self.name, "use Pendulum-v1 or CartPoleSwingUp-v0")
        self.policy = make_policy(self.spec, config.hidden)
        self.limit = autoreset.episode_limit(env)
        self.horizon = config.imagined_horizon or self.limit
        self.steps_per_chunk = config.n_envs * config.n_steps
        self.buffer_segments = max(config.buffer_size // config.n_steps, config.n_envs)
        # TRPO's own update, applied to imagined rollouts; its n_envs/n_steps are the imagined batch's shape.
        self.trpo = TRPO(TRPOConfig(n_envs=config.imagined_envs, n_steps=self.horizon,
                                    **config.trust_region_settings()), env)

    # -- pieces ------------------------------------------------------------------------------------------------

    def init_parts(self, key):
        """Policy, value, value optimiser state, model, empty buffer and running real envs."""
        key_policy, key_value, key_model, key_env = jax.random.split(key, 4)
        c = self.config
        value = ValueNetwork(self.spec.obs_dim, c.hidden, key_value)
        value_opt = self.trpo.value_optimizer.init(eqx.filter(value, eqx.is_array))
        model = init_deterministic_ensemble(c.ensemble_size, self.spec.obs_dim, self.spec.action_dim, c.model_hidden,
                                            key_model, c.model_activation)
        buffer = TrajectoryBuffer.create(self.buffer_segments, c.n_steps, self.spec.obs_dim, self.spec.action_dim)
        return (self.policy.init(key_policy), value, value_opt, model, buffer,
                reset_envs(self.env, key_env, c.n_envs))

    def imagined_env(self, model: DeterministicEnsemble, member=None) -> ImaginedEnv:
        return ImaginedEnv(model, member, self.env, self.reward_fn, self.termination_fn, self.horizon)

    def policy_iteration(self, params, value, value_opt, model: DeterministicEnsemble, key, member=None):
        """One TRPO step on `imagined_envs` fresh imagined episodes of `horizon` steps. Returns (params, value,
        value_opt, metrics)."""
        key_reset, key_collect, key_learn = jax.random.split(key, 3)
        env = self.imagined_env(model, member)
        starts = reset_envs(env, key_reset, self.config.imagined_envs)
        _, rollout = collect(env, self.spec, self.policy, params, starts, key_collect, self.horizon, self.horizon)
        trpo_state = TRPOState(params, value, value_opt, None, key_learn)
        trpo_state, metrics = self.trpo.learn(trpo_state, rollout, key_learn)
        metrics = {"imagined_return": metrics.pop("train_episode_return"), **metrics}
        return trpo_state.policy_params, trpo_state.value, trpo_state.value_opt, metrics

    def member_returns(self, params, model: DeterministicEnsemble, starts: jax.Array) -> jax.Array:
        """[n_members]: mean undiscounted return of the deterministic policy over `starts` [N, obs_dim] for
        `horizon` steps under each member alone, an episode ending at the model's first terminal state (the
        reward of the step into it counted)."""
        def one_member(index):
            env = self.imagined_env(model, index)

            def step(carry, _):
                obs, alive = carry
                action = self.act_with(params, obs)
                next_obs, reward = env.step(obs, action, jax.random.key(0))
                return (next_obs, alive & ~env.is_terminal(next_obs)), jnp.where(alive, reward, 0.0)

            def episode(start):
                _, rewards = jax.lax.scan(step, (start, jnp.ones((), bool)), None, length=self.horizon)
                return jnp.sum(rewards)

            return jnp.mean(jax.vmap(episode)(starts))

        return jax.vmap(one_member)(jnp.arange(model.n_members))

    def act_with(self, params, obs):
        return self.spec.clip(self.policy.mode(params, obs))

    def act(self, state, obs, key):
        """The deterministic evaluation action: the policy's mode, clipped to the action box."""
        return self.act_with(state.policy_params, obs)


# ==============================================================================================================


@dataclasses.dataclass(frozen=True)
class ImaginedTRPOSettings(TrustRegionSettings):
    """TRPO's options as ME-TRPO and SLBO use them on imagined rollouts, plus the imagined batch's shape."""

    gamma: float = 0.99
    """Discount of the imagined returns."""
    value_epochs: int = 5
    """Passes of value regression per TRPO iteration."""
    imagined_envs: int = 32
    """Imagined episodes per TRPO iteration."""
    imagined_horizon: int = 0
    """Length of each imagined episode; 0 means the task's episode length (200 on Pendulum-v1)."""


@dataclasses.dataclass(frozen=True)
class METRPOConfig(ImaginedTRPOSettings):
    # real data
    n_envs: int = 3
    """Real environments stepped in parallel; each one's steps in an iteration form one trajectory segment of the
    validation split (>= 2)."""
    n_steps: int = 100
    """Real steps per environment per outer iteration (the segment length)."""
    buffer_size: int = 10_000
    """Real transitions kept (oldest segments overwritten first). Every fit reads the whole fixed-size buffer
    through a mask, so its cost grows with this capacity, not with the data: keep it near what a run collects."""
    validation_fraction: float = 1 / 3
    """Share of each iteration's segments held out for early stopping (ME-TRPO's 1/3)."""
    # model
    ensemble_size: int = 5
    """Members of the deterministic ensemble (ME-TRPO's K = 5)."""
    model_hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of each member."""
    model_activation: str = "relu"
    """Hidden activation of the members."""
    model_learning_rate: float = 1e-3
    """Adam step size of the members (ME-TRPO's 1e-3)."""
    model_batch_size: int = 128
    """Transitions per member per model gradient step."""
    model_max_epochs: int = 50
    """Most epochs per refit (warm-started members need few once the data stop changing much)."""
    model_patience: int = 5
    """Stop a refit after this many epochs without any member improving its validation loss."""
    # policy optimisation inside the model
    policy_iterations: int = 40
    """Most TRPO iterations per outer iteration."""
    validate_every: int = 5
    """TRPO iterations between policy validations."""
    validation_starts: int = 16
    """Real initial states the validation returns are averaged over (fixed within an outer iteration)."""
    improvement_threshold: float = 0.7
    """Keep optimising while at least this share of members sees the validation return improve (ME-TRPO's 70%)."""


class METRPOState(eqx.Module):
    policy_params: eqx.Module
    value: ValueNetwork
    value_opt: optax.OptState
    model: DeterministicEnsemble
    buffer: TrajectoryBuffer
    env_states: object
    key: jax.Array


class METRPO(ModelTRPOAgent):
    name = "metrpo"

    def __init__(self, config: METRPOConfig, env):
        if not 0.0 < config.validation_fraction < 1.0:
            raise ValueError(f"--validation-fraction must lie in (0, 1), got {config.validation_fraction}.")
        if not 0.0 < config.improvement_threshold <= 1.0:
            raise ValueError(f"--improvement-threshold must lie in (0, 1], got {config.improvement_threshold}.")
        if config.n_envs < 2:
            raise ValueError("--n-envs must be >= 2 for metrpo: each env's segment of real steps is one trajectory "
                             "of the validation split, and both splits need one.")
        super().__init__(config, env)

    def init(self, key) -> METRPOState:
        key, key_parts = jax.random.split(key)
        return METRPOState(*self.init_parts(key_parts), key)

    def optimise_policy(self, params, value, value_opt, model, key):
        """TRPO iterations in the model until `policy_iterations` or until policy validation fails."""
        c = self.config
        key_starts, key_loop = jax.random.split(key)
        starts = reset_envs(self.imagined_env(model), key_starts, c.validation_starts).obs
        reference = self.member_returns(params, model, starts)

        def validate(params, reference, fraction, i):
            """(returns, share improved, stop?) when validation is due after iteration i, else unchanged."""
            def run(reference):
                returns = self.member_returns(params, model, starts)
                return returns, validation_verdict(returns, reference, c.improvement_threshold)[0]

            due = i % c.validate_every == 0
            returns, share = jax.lax.cond(due, run, lambda r: (r, fraction), reference)
            return returns, share, due & (share < c.improvement_threshold)

        def keep_going(carry):
            i, stopped = carry[3], carry[5]
            return (i < c.policy_iterations) & ~stopped

        def body(carry):
            params, value, value_opt, i, reference, _, fraction, _ = carry
            params, value, value_opt, metrics = self.policy_iteration(params, value, value_opt, model,
                                                                      jax.random.fold_in(key_loop, i))
            reference, share, stopped = validate(params, reference, fraction, i + 1)
            return params, value, value_opt, i + 1, reference, stopped, share, metrics

        shapes = eqx.filter_eval_shape(lambda *args: self.policy_iteration(*args)[3], params, value, value_opt,
                                       model, key_loop)
        metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        carry = (params, value, value_opt, jnp.zeros((), jnp.int32), reference, jnp.zeros((), bool), jnp.ones(()),
                 metrics)
        params, value, value_opt, iterations, _, stopped, share, metrics = jax.lax.while_loop(keep_going, body, carry)
        metrics = {**metrics, "policy_iterations": iterations.astype(jnp.float32),
                   "validation_stopped": stopped.astype(jnp.float32), "improved_fraction": share}
        return params, value, value_opt, metrics

    def train_chunk(self, state: METRPOState):
        c = self.config
        key, key_collect, key_split, key_fit, key_policy = jax.random.split(state.key, 5)
        env_states, rollout = collect(self.env, self.spec, self.policy, state.policy_params, state.env_states,
                                      key_collect, c.n_steps, self.limit)
        buffer = state.buffer.add(*rollout_segments(rollout, self.spec),
                                  validation_split(key_split, c.n_envs, c.validation_fraction))
        model, fit = fit_one_step(state.model, buffer, key_fit, learning_rate=c.model_learning_rate,
                                  batch_size=c.model_batch_size, max_epochs=c.model_max_epochs,
                                  patience=c.model_patience)
        params, value, value_opt, metrics = self.optimise_policy(state.policy_params, state.value, state.value_opt,
                                                                 model, key_policy)
        metrics = {**metrics, "model_epochs": fit.epochs.astype(jnp.float32),
                   "model_validation_loss": jnp.mean(fit.validation_loss),
                   "train_episode_return": finished_episode_return(rollout)}
        return METRPOState(params, value, value_opt, model, buffer, env_states, key), metrics
