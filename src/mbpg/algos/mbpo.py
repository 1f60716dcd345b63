"""MBPO (Janner et al. 2019): SAC trained on a buffer of mostly model transitions, branched from real states.

Every `retrain_interval` real steps (one compiled chunk): refit the probabilistic ensemble on the real buffer
(`fit_buffer`, inside jit), branch `rollouts_per_step * retrain_interval` rollouts of length k from states drawn
uniformly from the real buffer (a random elite per sample and step, actions from the current policy), and append
them to a fixed-capacity model buffer; then act in the real environment with G SAC updates per step, each on a
batch of which `real_ratio` comes from real data and the rest from the model buffer. The SAC learner is
`mbpg.algos.sac.SAC` unchanged: only where its batches come from differs.

Gradient type: MVG for k = 1. Every model transition starts at a real state, so the actor's states d are real
(the real buffer's distribution, with the real slice of each batch), while Q is fit by TD on transitions whose
next state and reward come from p_hat: Q is Q^{pi, p_hat}-like, d is real. That is the table's MVG cell (a TD
critic on one-step model transitions, `mvg-td` in the lab). For k > 1 the states of steps 2..k are model states,
so d drifts toward the model's occupancy and the gradient toward FMG; the linear schedule (k_min -> k_max over
epochs) is exposed for that reason and defaults to k = 1 constant.

The reward and termination of the model come from the environment when they are known functions of the
observation (`known_model_functions`): a known reward is exact, and a model without the termination rule of a
terminating task keeps rolling past a fall, the pitfall of several public ports. Otherwise the ensemble learns
the reward.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from mbpg.algos.on_policy import is_host_env
from mbpg.algos.replay import Replay
from mbpg.algos.sac import SAC, SACConfig, SACState
from mbpg.envs.classic_control import CartPoleSwingUp, MountainCarContinuous, Pendulum
from mbpg.models.ensemble import (
    EnsembleConfig,
    GaussianEnsemble,
    ModelEnv,
    fit_buffer,
    init_ensemble,
    predict_batch,
)


@dataclasses.dataclass(frozen=True)
class MBPOConfig:
    # SAC learner (same meaning as in SACConfig)
    learning_rate: float = 1e-3
    """Adam step size of actor, critics and temperature."""
    batch_size: int = 256
    """Transitions per SAC gradient step (real and model together)."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    initial_temperature: float = 1.0
    """Starting entropy temperature alpha."""
    updates_per_step: int = 20
    """G: SAC gradient steps per real environment step. Model data is plentiful, so MBPO takes many (20 in the
    paper, 10 in mbrl-lib's inverted-pendulum setting)."""
    real_ratio: float = 0.05
    """Share of every SAC batch drawn from real transitions, the rest from the model buffer (MBPO's 0.05). Must
    lie in [0, 1]; it is rounded to a whole number of the batch's transitions."""
    # real data
    random_steps: int = 250
    """Real steps before the first model fit and the first SAC update, taken with uniform-random actions (and
    one more: the first step after that fit still acts at random, since SAC's behaviour switches to the policy
    only once learning has started); a positive multiple of retrain_interval, so that learning starts right after
    a fit (the model buffer is never empty then)."""
    buffer_size: int = 100_000
    """Capacity of the real replay buffer. Fixed, so a run's state keeps its shapes (checkpoints, --resume,
    vmapped seeds); every model fit reads the whole buffer through a mask, so do not make it much larger than
    the run."""
    # model
    retrain_interval: int = 250
    """Real steps between model fits (MBPO's 250). One compiled training chunk: fit, branch, then act."""
    rollouts_per_step: int = 400
    """Branched rollouts per real step; each fit starts rollouts_per_step * retrain_interval of them at once
    (MBPO: 100k per fit, i.e. 400 per step)."""
    k_min: int = 1
    """Rollout length at and before epoch k_first_epoch."""
    k_max: int = 1
    """Rollout length at and after epoch k_last_epoch; the model buffer is sized for k_max. k > 1 feeds the
    actor model states, which drifts the gradient from MVG toward FMG."""
    k_first_epoch: int = 20
    """Epoch at which the linear rollout-length schedule starts rising from k_min (MBPO's [20, 100, 1, k])."""
    k_last_epoch: int = 100
    """Epoch at which the schedule reaches k_max."""
    epoch_length: int = 1000
    """Real steps per epoch, the unit of the k schedule and of model-buffer retention (MBPO's 1000; mbrl-lib's
    inverted pendulum uses 250)."""
    model_retain_epochs: int = 1
    """Epochs of rollouts the model buffer keeps (MBPO's 1): SAC samples the model_retain_epochs * epoch_length *
    rollouts_per_step * k most recent model transitions at the current rollout length k, as MBPO resizes its pool
    whenever k changes. The buffer's capacity is that number at k_max, the oldest rows overwritten first."""
    ensemble_members: int = 7
    """Networks in the probabilistic ensemble."""
    ensemble_elites: int = 5
    """Members with the lowest holdout error that rollouts draw from."""
    model_hidden: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden widths of each ensemble member (MBPO's 4 x 200)."""
    model_activation: str = "silu"
    """Hidden activation of the members (MBPO's swish)."""
    model_learning_rate: float = 1e-3
    """Adam step size of the ensemble."""
    model_weight_decay: float = 5e-5
    """L2 penalty on the members' weight matrices (see EnsembleConfig.weight_decay)."""
    model_batch_size: int = 256
    """Transitions per member per model gradient step."""
    model_max_epochs: int = 200
    """Most epochs per fit; each fit stops earlier when the holdout stops improving (patience 5, 1%) and every
    member keeps its best holdout epoch."""
    known_reward: bool = True
    """Use the environment's own reward and termination functions when mbpo knows them (Pendulum-v1,
    CartPoleSwingUp-v0; MountainCarContinuous-v0's termination); where it does not, the ensemble learns the
    reward. False: always learn the reward."""


def rollout_length(steps, config: MBPOConfig) -> jax.Array:
    """MBPO's linear schedule: k_min up to epoch k_first_epoch, k_max from k_last_epoch, linear (floored) in
    between; the epoch is steps // epoch_length."""
    epoch = jnp.asarray(steps) // config.epoch_length
    span = max(config.k_last_epoch - config.k_first_epoch, 1)
    k = config.k_min + (epoch - config.k_first_epoch) / span * (config.k_max - config.k_min)
    return jnp.clip(jnp.floor(k), config.k_min, config.k_max).astype(jnp.int32)


def known_model_functions(env, learn_reward: bool = False):
    """(reward_fn(obs, action, next_obs) or None, termination_fn(next_obs)) for the JAX ports whose reward and
    termination are functions of the observation; None for the reward means "learn it".

    The reward functions call the environment's own step/reward on the state recovered from the observation, so
    they are exact copies by construction; Pendulum charges the reward on the state before the step, so the real
    dynamics of that call are discarded. Raises ValueError for an environment whose termination rule is unknown.
    """
    never = lambda next_obs: jnp.zeros(jnp.shape(next_obs)[:-1], bool)  # noqa: E731
    if isinstance(env, Pendulum):
        def reward(obs, action, next_obs):
            state = jnp.stack([jnp.arctan2(obs[1], obs[0]), obs[2]])
            return env.step(state, action, jax.random.key(0))[1]

        return (None if learn_reward else reward), never
    if isinstance(env, CartPoleSwingUp):
        def reward(obs, action, next_obs):
            return env.reward(jnp.stack([next_obs[0], next_obs[1], jnp.arctan2(next_obs[3], next_obs[2]),
                                         next_obs[4]]))

        return (None if learn_reward else reward), never
    if isinstance(env, MountainCarContinuous):  # observation = state; the reward needs the true next state
        return None, env.is_terminal
    raise ValueError(f"mbpo knows the termination rule of Pendulum-v1, CartPoleSwingUp-v0 and "
                     f"MountainCarContinuous-v0 only, not of {type(env).__name__}; model rollouts without it would "
                     "run past terminal states. Add the env to mbpo.known_model_functions.")


def known_reward_and_termination(env, user: str, instead: str):
    """`known_model_functions` for a model that predicts the next state only (ME-TRPO, SLBO, the --gradient
    mvg/fmg/auto models): the reward must be known as well, so an env whose reward needs the true state is refused
    here, naming `user` and what to do `instead`, rather than failing inside the first compiled chunk."""
    reward_fn, termination_fn = known_model_functions(env)
    if reward_fn is None:
        raise ValueError(f"{user} steps its learned model with the env's known reward, and {type(env).__name__}'s "
                         f"reward is not a function of the observations (it needs the true state); {instead}, or "
                         "mbpo, whose ensemble learns the reward.")
    return reward_fn, termination_fn


class MixedReplay(eqx.Module):
    """The real buffer and the model buffer behind SAC's `replay` interface: `add` stores a real transition,
    `sample` returns a batch of which `n_real` rows are real and the rest model rows."""

    real: Replay
    model: Replay
    n_real: int = eqx.field(static=True)
    model_recent: bool = eqx.field(static=True, default=False)
    """Sample the model buffer's `size` most recent rows (`Replay.sample_recent`); set under a k schedule, where
    `refresh_model` lowers `size` to the retention of the current k."""

    def add(self, item: dict) -> MixedReplay:
        return dataclasses.replace(self, real=self.real.add(item))

    def sample(self, key: jax.Array, batch_size: int) -> dict:
        key_real, key_model = jax.random.split(key)
        real = self.real.sample(key_real, self.n_real)
        sample_model = self.model.sample_recent if self.model_recent else self.model.sample
        model = sample_model(key_model, batch_size - self.n_real)
        return {k: jnp.concatenate([real[k], model[k]]) for k in real}


def add_valid(replay: Replay, items: dict, valid: jax.Array) -> Replay:
    """Append the rows of `items` (leading axis N) where `valid`, in order, to a circular buffer, inside jit.

    The number of valid rows is data-dependent (rollouts end at terminal states and at k < k_max), so the rows
    are written with a masked scatter rather than a slice of dynamic size.
    """
    valid = valid.astype(jnp.int32)
    slot = (replay.position + jnp.cumsum(valid) - 1) % replay.capacity
    slot = jnp.where(valid > 0, slot, replay.capacity)  # out of range: dropped
    data = {k: v.at[slot].set(items[k].astype(v.dtype), mode="drop") for k, v in replay.data.items()}
    added = jnp.sum(valid)
    return Replay(data, (replay.position + added) % replay.capacity, jnp.minimum(replay.size + added,
                                                                                    replay.capacity))


class MBPOState(eqx.Module):
    sac: SACState  # its replay is a MixedReplay
    model: GaussianEnsemble


class MBPO:
    name = "mbpo"

    def __init__(self, config: MBPOConfig, env):
        if is_host_env(env):
            raise ValueError("mbpo runs on the JAX ports (e.g. Pendulum-v1), whose whole chunk (model fit, "
                             "rollouts, SAC) is one compiled program; host-side Gymnasium envs are not supported.")
        c = config
        if c.random_steps % c.retrain_interval:
            nearest = max(1, round(c.random_steps / c.retrain_interval)) * c.retrain_interval
            raise ValueError(f"--random-steps ({c.random_steps}) must be a multiple of --retrain-interval "
                             f"({c.retrain_interval}), so that the first SAC update follows a model fit; e.g. "
                             f"--random-steps {nearest}.")
        if not 0.0 <= c.real_ratio <= 1.0:
            raise ValueError(f"--real-ratio must lie in [0, 1] (the real share of each SAC batch); got {c.real_ratio}.")
        if c.k_min > c.k_max:
            raise ValueError(f"--k-min ({c.k_min}) exceeds --k-max ({c.k_max}); the rollout length rises from "
                             "k_min to k_max.")
        if c.k_first_epoch > c.k_last_epoch:
            raise ValueError(f"--k-first-epoch ({c.k_first_epoch}) must not exceed --k-last-epoch "
                             f"({c.k_last_epoch}).")
        self.config, self.env = config, env
        # SAC updates once `steps >= learning_starts` counting the step it has just stored; +1 keeps the last
        # random step of a chunk from updating before the next chunk's fit has filled the model buffer.
        self.sac = SAC(SACConfig(learning_rate=c.learning_rate, batch_size=c.batch_size, gamma=c.gamma, tau=c.tau,
                                 learning_starts=c.random_steps + 1, buffer_size=1, updates_per_step=c.updates_per_step,
                                 hidden=c.hidden, initial_temperature=c.initial_temperature,
                                 chunk_steps=c.retrain_interval), env)
        self.spec, self.policy, self.limit = self.sac.spec, self.sac.policy, self.sac.limit
        self.reward_fn, self.termination_fn = known_model_functions(env, learn_reward=not c.known_reward)
        self.ensemble_config = EnsembleConfig(
            n_members=c.ensemble_members, n_elites=c.ensemble_elites, hidden=c.model_hidden,
            activation=c.model_activation, learning_rate=c.model_learning_rate, weight_decay=c.model_weight_decay,
            batch_size=c.model_batch_size, max_epochs=c.model_max_epochs, predict_reward=self.reward_fn is None)
        self.steps_per_chunk = c.retrain_interval
        self.n_rollouts = c.rollouts_per_step * c.retrain_interval
        self.model_capacity = self.model_retention(c.k_max)
        self.k_scheduled = c.k_min != c.k_max
        self.n_real = int(round(c.real_ratio * c.batch_size))

    def model_retention(self, k):
        """Model transitions kept at rollout length k: model_retain_epochs epochs of rollouts_per_step rollouts
        of k steps per real step (MBPO's pool size)."""
        c = self.config
        return c.model_retain_epochs * c.epoch_length * c.rollouts_per_step * k

    def init(self, key) -> MBPOState:
        key_sac, key_model = jax.random.split(key)
        sac = self.sac.init(key_sac)
        obs = jnp.zeros(self.spec.obs_dim, jnp.float32)
        example = {"obs": obs, "action": jnp.zeros(self.spec.action_dim), "reward": jnp.zeros(()),
                   "next_obs": obs, "terminated": jnp.zeros((), bool)}
        replay = MixedReplay(Replay.create(example, self.config.buffer_size),
                             Replay.create(example, self.model_capacity), self.n_real, self.k_scheduled)
        model = init_ensemble(self.ensemble_config, self.spec.obs_dim, self.spec.action_dim, key_model)
        return MBPOState(dataclasses.replace(sac, replay=replay), model)

    def act(self, state: MBPOState, obs, key):
        return self.sac.act(state.sac, obs, key)

    def model_env(self, model: GaussianEnsemble, start_states) -> ModelEnv:
        return ModelEnv.like(self.env, model, start_states, self.reward_fn, self.termination_fn)

    def branch(self, actor, model: GaussianEnsemble, starts: jax.Array, k, key) -> tuple[dict, jax.Array]:
        """Roll the policy out in the model for k_max steps from each start; steps at index >= k, and steps after
        a model termination, are marked invalid. Returns transitions [k_max, N, .] and valid [k_max, N]."""
        env = self.model_env(model, starts)
        low, high = jnp.asarray(env.action_low), jnp.asarray(env.action_high)
        sample = jax.vmap(self.policy.sample_with_log_prob, in_axes=(None, 0, 0))

        def step(carry, inputs):
            obs, alive = carry
            t, key = inputs
            key_act, key_model = jax.random.split(key)
            action = sample(actor, obs, jax.random.split(key_act, obs.shape[0]))[0]
            next_obs, reward = predict_batch(model, obs, jnp.clip(action, low, high), key_model)
            if self.reward_fn is not None:
                reward = jax.vmap(self.reward_fn)(obs, action, next_obs)
            terminated = env.is_terminal(next_obs)
            valid = alive & (t < k)
            transition = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
                          "terminated": terminated}
            return (next_obs, alive & ~terminated), (transition, valid)

        alive = jnp.ones(starts.shape[0], bool)
        _, (transitions, valid) = jax.lax.scan(
            step, (starts, alive), (jnp.arange(self.config.k_max), jax.random.split(key, self.config.k_max)))
        return transitions, valid

    def refresh_model(self, state: MBPOState, key) -> tuple[MBPOState, dict]:
        """The model part of a chunk: refit on the real buffer, then branch rollouts into the model buffer.
        Before `random_steps` nothing is fitted or stored (the real buffer holds too little for either)."""
        key_fit, key_starts, key_branch = jax.random.split(key, 3)
        sac, replay = state.sac, state.sac.replay
        learning = sac.steps >= self.config.random_steps
        real = replay.real.data
        model, fit = fit_buffer(state.model, real["obs"], real["action"], real["next_obs"], real["reward"],
                                jnp.where(learning, replay.real.size, 0), key_fit)
        rows = jax.random.randint(key_starts, (self.n_rollouts,), 0, jnp.maximum(replay.real.size, 1))
        k = rollout_length(sac.steps, self.config)
        transitions, valid = self.branch(sac.actor, model, real["obs"][rows], k, key_branch)
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), transitions)
        model_replay = add_valid(replay.model, flat, valid.reshape(-1) & learning)
        # Keep model_retain_epochs epochs at the current k, as MBPO resizes its pool; with a constant k the
        # capacity already is that retention (and the program stays the one without this clamp).
        if self.k_scheduled:
            model_replay = dataclasses.replace(model_replay,
                                               size=jnp.minimum(model_replay.size, self.model_retention(k)))
        sac = dataclasses.replace(sac, replay=dataclasses.replace(replay, model=model_replay))
        elite_mse = jnp.mean(fit.holdout_mse[model.elites])
        metrics = {"model_epochs": fit.epochs.astype(jnp.float32), "model_failed": fit.failed.astype(jnp.float32),
                   "model_holdout_mse": jnp.where(jnp.isfinite(elite_mse), elite_mse, jnp.nan),
                   "rollout_length": k.astype(jnp.float32), "model_buffer_size": model_replay.size.astype(jnp.float32)}
        return MBPOState(sac, model), metrics

    def train_chunk(self, state: MBPOState):
        key, key_model = jax.random.split(state.sac.key)
        state = dataclasses.replace(state, sac=dataclasses.replace(state.sac, key=key))
        state, model_metrics = self.refresh_model(state, key_model)
        sac, metrics = self.sac.train_chunk(state.sac)
        return MBPOState(sac, state.model), {**metrics, **model_metrics}
