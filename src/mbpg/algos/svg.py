"""SVG(0), SVG(1) and SVG(inf): stochastic value gradients (Heess et al. 2015, "Learning continuous control
policies by stochastic value gradients").

All three take the pathwise gradient on REAL transitions: the noise that explains each replayed action (and, with
a model, each observed outcome) is inferred (`mbpg.gradients.noise`), the step is re-simulated with that noise held
fixed, and the value of the re-simulated path is differentiated in the policy parameters. They differ in where the
value comes from:

    SVG(0)    a learned Q(s, a), no model: objective Q(s, a_hat).                          gradient type: MFG
    SVG(1)    one model step plus a learned V: r(s, a_hat) + gamma V(s_hat').               gradient type: MVG
    SVG(inf)  no critic: the return of a whole real episode re-simulated through the model. gradient type: MVG

(MVG: the states are real, the value of an action is computed through the learned model p_hat.)

Choices, and why:
* Replay with importance weights (SVG(0)/SVG(1), the paper's "experience replay" variants): a replayed action was
  drawn by an older behaviour policy mu, so the value terms and the V regression are weighted by
  w = pi_theta(a|s) / mu(a|s), truncated at `max_importance_weight` (bias for bounded variance). mu(a|s) is the
  density the acting policy gave the action when it was stored (uniform over the box before `learning_starts`).
  SVG(0)'s Q needs no weight for its regression (the next action is drawn from pi); its actor term does.
  Limit: pi's density of a replayed action is read through the clipped atanh (the replay stores actions, not
  pre-squash samples), so for an action whose pre-squash |u| exceeded ~6.94 (float32) both densities are those
  of the clip point and w is off (a policy saturated at a mean of 8 std 0.5 gave E_mu[w] 0.07 instead of 1).
  With the defaults on Pendulum-v1 at most 0.6% of stored actions per 1,000 steps were that saturated (a 30k-step
  SVG(1) run, measured in a review, not kept in the repo); storing u would remove the limit.
* Entropy: the tanh-Gaussian policy (SAC's) learns its own std, and a pure value gradient shrinks it until the
  agent stops exploring and the importance weights of old data degenerate. So all three maximise the
  entropy-regularised return, r - alpha log pi, with SAC's automatic temperature (target entropy -|A|); SVG(1)'s V
  is the matching soft value. The entropy term uses a fresh policy sample (unweighted, it is on-policy by
  construction); only the value terms use the inferred noise.
* Reward: `reward="known"` uses the environment's own reward function of (observation, action) (Pendulum-v1: the
  JAX port's `step` on the state recovered from the observation), exact and differentiable, as the paper did
  where the reward was known; `reward="learned"` makes the model predict it as one more Gaussian output, whose
  noise is inferred like the state's.
* Model: a `GaussianEnsemble` (usually one member) trained online by jitted SGD steps on the Gaussian NLL of
  replayed transitions. Its input/target normalisation follows running statistics of every transition observed,
  refreshed before each model step. With several members, each transition is explained and re-simulated by a
  random member.
* SVG(inf) is on-policy, as in the paper ("models and policies are learned after each episode"): each chunk
  collects `chunk_steps` real steps (default: one Pendulum-v1 episode) with the current policy, trains the model on
  the replay, then takes `policy_updates` steps on the newest segment, re-inferring the noise at the current
  parameters before each (so the re-simulated path always passes through the real states). Many updates on one
  stale segment do not help: the path stays the OLD one, the inferred noise drifts into the tails, and the policy
  follows a gradient taken at actions it no longer chooses.
* SVG(inf) decays the value gradient backpropagated through the model by `gradient_decay` (lambda) per step:
  v_s = r_s + r_a pi_s + gamma lambda v'_{s'} (f_s + f_a pi_s). lambda = 1 is the paper's recursion; the value of
  the path is unchanged (the re-simulated states equal the real ones), only the credit an action gets for rewards
  k steps later is scaled by lambda^k. Why: through 200 steps of Pendulum (upright is unstable, about x1.19 per
  step) the full recursion explodes: per-episode gradient norms reach 1e8-1e10 even through the TRUE dynamics,
  and through a learned model the 400-episode mean of the full-horizon gradient points against the true-dynamics
  one (cosine -0.93), while it agrees up to 20 steps (cosine 0.99).
* SVG(inf)'s entropy term and temperature use fresh policy samples at the path's states, like SVG(0)/SVG(1): the
  log-density of the inferred noise is that of a stale action (a cross-entropy, not the entropy), which grows
  without bound as the policy moves away from it or as a saturated action is inverted through the clipped atanh,
  and it drove the temperature down while the policy collapsed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.algos.off_policy import OffPolicyAgent
from mbpg.algos.on_policy import is_host_env
from mbpg.algos.replay import Replay
from mbpg.algos.spaces import env_spec
from mbpg.envs import autoreset
from mbpg.envs.classic_control import Pendulum
from mbpg.gradients.noise import infer_noise, resimulate
from mbpg.models.ensemble import EnsembleConfig, GaussianEnsemble, member_loss, init_ensemble
from mbpg.policies.mlp import TanhGaussianMLPPolicy
from mbpg.values import TwinQNetwork, ValueNetwork, soft_update


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class SVG0Config:
    learning_rate: float = 1e-3
    """Adam step size of actor, critic and temperature."""
    batch_size: int = 256
    """Replayed transitions per gradient step."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    learning_starts: int = 1000
    """Uniform-random actions before the first update."""
    buffer_size: int = 100_000
    """Replay capacity (fixed, so that a resumed run keeps the same state shapes)."""
    updates_per_step: int = 1
    """Actor/critic gradient steps per environment step."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of actor and critic."""
    max_importance_weight: float = 5.0
    """Truncation of pi(a|s)/mu(a|s) on replayed actions."""
    initial_temperature: float = 1.0
    """Starting entropy temperature alpha (then tuned toward entropy -|A|)."""
    chunk_steps: int = 1000
    """Environment steps per compiled chunk (logging and checkpoint granularity)."""


@dataclasses.dataclass(frozen=True)
class SVG1Config(SVG0Config):
    model_learning_rate: float = 1e-3
    """Adam step size of the dynamics model."""
    model_hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of the Gaussian dynamics model."""
    model_members: int = 1
    """Members of the Gaussian model ensemble (each transition uses a random one)."""
    model_updates_per_step: int = 1
    """Model NLL gradient steps before each actor/critic update (so per env step: this x updates_per_step)."""
    reward: Literal["known", "learned"] = "known"
    """Reward of the re-simulated step: the env's own function (Pendulum-v1) or a learned model output."""


@dataclasses.dataclass(frozen=True)
class SVGInfConfig:
    learning_rate: float = 1e-3
    """Adam step size of actor and temperature."""
    model_learning_rate: float = 1e-3
    """Adam step size of the dynamics model."""
    gamma: float = 0.99
    """Discount of the re-simulated episode return."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor."""
    model_hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of the Gaussian dynamics model."""
    model_members: int = 1
    """Members of the Gaussian model ensemble: each policy update draws one at random, which explains and
    re-simulates every episode of its chunk (one episode with the default chunk_steps)."""
    reward: Literal["known", "learned"] = "known"
    """Reward of the re-simulated steps: the env's own function (Pendulum-v1) or a learned model output."""
    chunk_steps: int = 200
    """Real steps collected with the current policy per chunk (whole episodes when a multiple of their length)."""
    model_updates: int = 100
    """Model NLL gradient steps per chunk."""
    batch_size: int = 256
    """Transitions per model gradient step."""
    buffer_size: int = 100_000
    """Replay capacity of the model's training data."""
    policy_updates: int = 5
    """Policy gradient steps per chunk on the newest segment."""
    gradient_decay: float = 0.9
    """lambda in (0, 1]: the value gradient backpropagated through one model step is scaled by lambda (1: the
    paper's full recursion, which explodes through 200-step episodes; the path's value is unchanged)."""
    max_grad_norm: float = 10.0
    """Global-norm clip of the policy gradient (it is backpropagated through whole episodes)."""
    initial_temperature: float = 0.1
    """Starting entropy temperature alpha (then tuned toward entropy -|A|)."""


# --------------------------------------------------------------------------------------------------------------
# Known rewards and the online model


def known_reward(env):
    """The environment's reward as a differentiable function of (observation, action), or None if unknown."""
    if isinstance(env, Pendulum):
        def reward(obs, action):
            state = jnp.stack([jnp.arctan2(obs[1], obs[0]), obs[2]])  # angle in [-pi, pi]: what the cost wraps to
            return env.step(state, action, jax.random.key(0))[1]
        return reward
    return None


class Normaliser(eqx.Module):
    """Running count, sum and sum of squares of the model's inputs [s, a] and targets [s' - s, (r)]."""

    count: jax.Array
    total: jax.Array
    total_sq: jax.Array

    @staticmethod
    def create(size: int) -> "Normaliser":
        return Normaliser(jnp.zeros(()), jnp.zeros(size), jnp.zeros(size))

    def add(self, row) -> "Normaliser":
        return Normaliser(self.count + 1, self.total + row, self.total_sq + row * row)

    def mean_std(self):
        n = jnp.maximum(self.count, 1.0)
        mean = self.total / n
        std = jnp.sqrt(jnp.maximum(self.total_sq / n - mean * mean, 0.0))
        return mean, jnp.where(self.count > 1, jnp.maximum(std, 1e-6), 1.0)


def _model_row(transition: dict, predict_reward: bool) -> jax.Array:
    parts = [transition["obs"], jnp.reshape(transition["action"], (-1,)), transition["next_obs"] - transition["obs"]]
    if predict_reward:
        parts.append(jnp.reshape(transition["reward"], (1,)))
    return jnp.concatenate(parts)


class OnlineModel:
    """The Gaussian dynamics model of SVG(1)/SVG(inf): creation and one jittable NLL step from the replay."""

    def __init__(self, obs_dim, action_dim, hidden, members, learning_rate, predict_reward):
        self.obs_dim, self.action_dim, self.members = obs_dim, action_dim, members
        self.config = EnsembleConfig(n_members=members, n_elites=members, hidden=hidden,
                                     learning_rate=learning_rate, predict_reward=predict_reward)
        self.optimizer = optax.adam(learning_rate)
        self.in_size = obs_dim + action_dim

    def init(self, key):
        model = init_ensemble(self.config, self.obs_dim, self.action_dim, key)
        return model, self.optimizer.init(eqx.filter(model.members, eqx.is_array)), Normaliser.create(
            self.in_size + model.target_dim)

    def step(self, model: GaussianEnsemble, opt_state, normaliser: Normaliser, replay: Replay, key, batch_size):
        mean, std = normaliser.mean_std()
        model = dataclasses.replace(model, input_mean=mean[: self.in_size], input_std=std[: self.in_size],
                                    target_mean=mean[self.in_size:], target_std=std[self.in_size:])
        batch = replay.sample(key, self.members * batch_size)
        rows = jax.vmap(lambda t: _model_row(t, self.config.predict_reward))(batch)
        rows = ((rows - mean) / std).reshape(self.members, batch_size, -1)
        x, y = rows[..., : self.in_size], rows[..., self.in_size:]
        decays = self.config.layer_weight_decay()

        def loss(members):
            total, nll = jax.vmap(lambda m, xm, ym: member_loss(m, xm, ym, decays,
                                                                 self.config.log_var_bound_penalty))(members, x, y)
            return jnp.sum(total), jnp.mean(nll)

        (_, nll), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model.members)
        updates, opt_state = self.optimizer.update(grads, opt_state, eqx.filter(model.members, eqx.is_array))
        return dataclasses.replace(model, members=eqx.apply_updates(model.members, updates)), opt_state, nll


def _temperature_loss(log_alpha, log_probs, target_entropy):
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_probs + target_entropy))


def _resolve_reward(config, env):
    if config.reward == "known":
        reward = known_reward(env)
        if reward is None:
            raise ValueError(f"no known reward function for {type(env).__name__} (only Pendulum-v1 has one here); "
                             "pass --reward learned to let the model predict the reward.")
        return reward
    if config.reward != "learned":
        raise ValueError(f"--reward must be 'known' or 'learned', got {config.reward!r}.")
    return None


# --------------------------------------------------------------------------------------------------------------
# SVG(0) and SVG(1): off-policy agents with replay


class SVGState(eqx.Module):
    actor: eqx.Module
    critic: eqx.Module
    target_critic: eqx.Module
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    model: GaussianEnsemble | None
    model_opt: optax.OptState | None
    normaliser: Normaliser | None
    replay: Replay
    env_state: autoreset.EnvState | None
    steps: jax.Array
    key: jax.Array


LEARNER_FIELDS = ("actor", "critic", "target_critic", "log_alpha", "actor_opt", "critic_opt", "alpha_opt", "model",
                  "model_opt")


class SVG0(OffPolicyAgent):
    """SVG(0): learned twin Q (the minimum of the two, as in SAC), no model. Gradient type: MFG."""

    name = "svg0"
    learner_fields = LEARNER_FIELDS
    uses_model = False

    def __init__(self, config, env):
        self.config, self.env = config, env
        self.spec = env_spec(env)
        if self.spec.discrete:
            raise ValueError(f"{self.name} needs continuous actions (a Box action space); use ppo for discrete ones.")
        self.policy = TanhGaussianMLPPolicy(self.spec.obs_dim, self.spec.action_dim, hidden=config.hidden,
                                            action_low=self.spec.action_low, action_high=self.spec.action_high)
        self.limit = autoreset.episode_limit(env)
        self.steps_per_chunk = config.chunk_steps
        self.target_entropy = -float(self.spec.action_dim)
        self.optimizer = optax.adam(config.learning_rate)
        self.uniform_log_prob = -sum(math.log(h - l) for l, h in zip(self.spec.action_low, self.spec.action_high))

    def make_critic(self, key):
        return TwinQNetwork(self.spec.obs_dim, self.spec.action_dim, self.config.hidden, key)

    def init(self, key) -> SVGState:
        key_actor, key_critic, key_model, key_env, key = jax.random.split(key, 5)
        actor = self.policy.init(key_actor)
        critic = self.make_critic(key_critic)
        log_alpha = jnp.log(jnp.asarray(self.config.initial_temperature, jnp.float32))
        model = model_opt = normaliser = None
        if self.uses_model:
            model, model_opt, normaliser = self.model.init(key_model)
        env_state = None if is_host_env(self.env) else autoreset.reset(self.env, key_env)
        obs = jnp.zeros(self.spec.obs_dim, jnp.float32)
        example = {"obs": obs, "action": jnp.zeros(self.spec.action_dim), "reward": jnp.zeros(()),
                   "next_obs": obs, "terminated": jnp.zeros((), bool), "log_prob": jnp.zeros(())}
        opt = self.optimizer.init
        return SVGState(actor, critic, critic, log_alpha, opt(eqx.filter(actor, eqx.is_array)),
                        opt(eqx.filter(critic, eqx.is_array)), opt(log_alpha), model, model_opt, normaliser,
                        Replay.create(example, self.config.buffer_size), env_state, jnp.zeros((), jnp.int32), key)

    def act(self, state: SVGState, obs, key):
        return self.policy.mode(state.actor, obs)

    def importance_weights(self, actor, batch):
        """Truncated pi_theta(a|s) / mu(a|s) for replayed actions, and log pi_theta(a|s)."""
        log_probs = jax.vmap(lambda s, a: self.policy.log_prob(actor, s, a))(batch["obs"], batch["action"])
        weights = jnp.minimum(jnp.exp(log_probs - batch["log_prob"]), self.config.max_importance_weight)
        return jax.lax.stop_gradient(weights), jax.lax.stop_gradient(log_probs)

    def fresh_log_probs(self, actor, obs, key):
        keys = jax.random.split(key, obs.shape[0])
        return jax.vmap(lambda s, k: self.policy.sample_with_log_prob(actor, s, k)[1])(obs, keys)

    def critic_step(self, state, batch, alpha, key):
        """Soft TD(0) on twin Q; the next action is drawn from pi, so no importance weight is needed."""
        n = batch["obs"].shape[0]
        sample = jax.vmap(self.policy.sample_with_log_prob, in_axes=(None, 0, 0))
        next_actions, next_log_probs = sample(state.actor, batch["next_obs"], jax.random.split(key, n))
        q1_next, q2_next = jax.vmap(state.target_critic)(batch["next_obs"], next_actions)
        target = jax.lax.stop_gradient(batch["reward"] + self.config.gamma * (1.0 - batch["terminated"]) * (
            jnp.minimum(q1_next, q2_next) - alpha * next_log_probs))

        def loss(critic):
            q1, q2 = jax.vmap(critic)(batch["obs"], batch["action"])
            return jnp.mean((q1 - target) ** 2) + jnp.mean((q2 - target) ** 2)

        return eqx.filter_value_and_grad(loss)(state.critic)

    def actor_objective(self, actor, state, batch, alpha, key):
        """mean_i w_i min_j Q_j(s_i, a_hat_i) - alpha E_pi[log pi], a_hat_i re-simulated from inferred noise."""
        weights, _ = self.importance_weights(actor, batch)

        def value(s, a):
            eps = jax.lax.stop_gradient(self.policy.infer_noise(jax.lax.stop_gradient(actor), s, a))
            return jnp.minimum(*state.critic(s, self.policy.reparameterised(actor, s, eps)))

        values = jax.vmap(value)(batch["obs"], batch["action"])
        log_probs = self.fresh_log_probs(actor, batch["obs"], key)
        return jnp.mean(weights * values) - alpha * jnp.mean(log_probs), (weights, log_probs)

    def model_step(self, state, key):
        return state.model, state.model_opt, jnp.zeros(())

    def update(self, state: SVGState, key) -> tuple[SVGState, dict]:
        key_batch, key_model, key_critic, key_actor = jax.random.split(key, 4)
        model, model_opt, model_nll = self.model_step(state, key_model)
        state = dataclasses.replace(state, model=model, model_opt=model_opt)
        batch = state.replay.sample(key_batch, self.config.batch_size)
        alpha = jnp.exp(state.log_alpha)

        loss_critic, grads = self.critic_step(state, batch, alpha, key_critic)
        updates, critic_opt = self.optimizer.update(grads, state.critic_opt)
        critic = eqx.apply_updates(state.critic, updates)
        state = dataclasses.replace(state, critic=critic, critic_opt=critic_opt)

        objective = lambda actor: self.actor_objective(actor, state, batch, alpha, key_actor)  # noqa: E731
        (value, (weights, log_probs)), grads = eqx.filter_value_and_grad(objective, has_aux=True)(state.actor)
        grads = jax.tree.map(jnp.negative, grads)  # ascent
        updates, actor_opt = self.optimizer.update(grads, state.actor_opt)
        actor = eqx.apply_updates(state.actor, updates)

        loss_alpha, grad_alpha = jax.value_and_grad(_temperature_loss)(state.log_alpha, log_probs,
                                                                      self.target_entropy)
        updates, alpha_opt = self.optimizer.update(grad_alpha, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)
        new_state = dataclasses.replace(state, actor=actor, actor_opt=actor_opt, log_alpha=log_alpha,
                                        alpha_opt=alpha_opt,
                                        target_critic=soft_update(state.target_critic, critic, self.config.tau))
        return new_state, {"critic_loss": loss_critic, "actor_objective": value, "model_nll": model_nll,
                           "alpha": jnp.exp(log_alpha), "entropy": -log_probs.mean(),
                           "mean_importance_weight": weights.mean()}

    def observe(self, state: SVGState, transition: dict, key_update) -> tuple[SVGState, dict]:
        """Store one real transition with its behaviour log-density, then take this env step's updates.

        The actor has not changed since `explore` drew the action, so its density now is mu(a|s)."""
        uniform = state.steps < self.config.learning_starts
        log_mu = jnp.where(uniform, self.uniform_log_prob,
                           self.policy.log_prob(state.actor, transition["obs"], transition["action"]))
        transition = {**transition, "log_prob": log_mu}
        normaliser = state.normaliser
        if self.uses_model:
            normaliser = normaliser.add(_model_row(transition, self.model.config.predict_reward))
        state = dataclasses.replace(state, replay=state.replay.add(transition), steps=state.steps + 1,
                                    normaliser=normaliser)
        return self.learn_if_ready(state, key_update)


class SVG1(SVG0):
    """SVG(1): one re-simulated model step plus a learned soft V with a target copy. Gradient type: MVG."""

    name = "svg1"
    uses_model = True

    def __init__(self, config, env):
        super().__init__(config, env)
        self.reward_fn = _resolve_reward(config, env)
        self.model = OnlineModel(self.spec.obs_dim, self.spec.action_dim, config.model_hidden, config.model_members,
                                 config.model_learning_rate, predict_reward=self.reward_fn is None)

    def make_critic(self, key):
        return ValueNetwork(self.spec.obs_dim, self.config.hidden, key, activation="relu")

    def model_step(self, state, key):
        def one(carry, key):
            model, opt, _ = carry
            return self.model.step(model, opt, state.normaliser, state.replay, key, self.config.batch_size), None

        init = (state.model, state.model_opt, jnp.zeros(()))
        (model, model_opt, nll), _ = jax.lax.scan(one, init, jax.random.split(key, self.config.model_updates_per_step))
        return model, model_opt, nll

    def critic_step(self, state, batch, alpha, key):
        """Importance-weighted soft TD(0) for V: w (r - alpha log pi(a|s) + gamma Vbar(s') - V(s))^2."""
        weights, log_probs = self.importance_weights(state.actor, batch)
        next_values = jax.vmap(state.target_critic)(batch["next_obs"])
        target = jax.lax.stop_gradient(batch["reward"] - alpha * log_probs
                                       + self.config.gamma * (1.0 - batch["terminated"]) * next_values)

        def loss(critic):
            return jnp.mean(weights * (jax.vmap(critic)(batch["obs"]) - target) ** 2)

        return eqx.filter_value_and_grad(loss)(state.critic)

    def members(self, key, n):
        return jax.random.randint(key, (n,), 0, self.config.model_members)

    def actor_objective(self, actor, state, batch, alpha, key):
        """mean_i w_i [r(s_i, a_hat_i) + gamma (1 - done_i) V(s_hat'_i)] - alpha E_pi[log pi]: a_hat and s_hat'
        re-simulated from the noise that explains the real (s, a, s', r); at the current parameters they equal
        the real a and s'."""
        key_member, key_fresh = jax.random.split(key)
        weights, _ = self.importance_weights(actor, batch)
        members = self.members(key_member, batch["obs"].shape[0])

        def value(s, a, r, s_next, terminated, member):
            eps, eta = infer_noise(self.policy, actor, state.model, s, a, s_next, r, member)
            a_hat, _, s_hat, r_hat = resimulate(self.policy, actor, state.model, s, eps, eta, member)
            reward = self.reward_fn(s, a_hat) if self.reward_fn is not None else r_hat
            return reward + self.config.gamma * (1.0 - terminated) * state.critic(s_hat)

        values = jax.vmap(value)(batch["obs"], batch["action"], batch["reward"], batch["next_obs"],
                                 batch["terminated"], members)
        log_probs = self.fresh_log_probs(actor, batch["obs"], key_fresh)
        return jnp.mean(weights * values) - alpha * jnp.mean(log_probs), (weights, log_probs)


# --------------------------------------------------------------------------------------------------------------
# SVG(inf): on-policy, whole real episodes through the model


class SVGInfState(eqx.Module):
    actor: eqx.Module
    log_alpha: jax.Array
    actor_opt: optax.OptState
    alpha_opt: optax.OptState
    model: GaussianEnsemble
    model_opt: optax.OptState
    normaliser: Normaliser
    replay: Replay
    env_state: autoreset.EnvState
    key: jax.Array


class SVGInf:
    """SVG(inf): the gradient of the return of real episodes re-simulated through the model. Gradient type: MVG."""

    name = "svginf"

    def __init__(self, config: SVGInfConfig, env):
        self.config, self.env = config, env
        self.spec = env_spec(env)
        if self.spec.discrete:
            raise ValueError("svginf needs continuous actions (a Box action space); use ppo for discrete ones.")
        if is_host_env(env):
            raise ValueError("svginf runs whole episodes inside one compiled chunk and needs a JAX port "
                             "(e.g. Pendulum-v1); for a host-side Gymnasium env use svg1.")
        if not 0.0 < config.gradient_decay <= 1.0:
            raise ValueError(f"--gradient-decay must be in (0, 1]; got {config.gradient_decay}.")
        self.reward_fn = _resolve_reward(config, env)
        self.policy = TanhGaussianMLPPolicy(self.spec.obs_dim, self.spec.action_dim, hidden=config.hidden,
                                            action_low=self.spec.action_low, action_high=self.spec.action_high)
        self.model = OnlineModel(self.spec.obs_dim, self.spec.action_dim, config.model_hidden, config.model_members,
                                 config.model_learning_rate, predict_reward=self.reward_fn is None)
        self.limit = autoreset.episode_limit(env)
        self.steps_per_chunk = config.chunk_steps
        self.target_entropy = -float(self.spec.action_dim)
        self.actor_optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                                           optax.adam(config.learning_rate))
        self.alpha_optimizer = optax.adam(config.learning_rate)

    def init(self, key) -> SVGInfState:
        key_actor, key_model, key_env, key = jax.random.split(key, 4)
        actor = self.policy.init(key_actor)
        model, model_opt, normaliser = self.model.init(key_model)
        log_alpha = jnp.log(jnp.asarray(self.config.initial_temperature, jnp.float32))
        obs = jnp.zeros(self.spec.obs_dim, jnp.float32)
        example = {"obs": obs, "action": jnp.zeros(self.spec.action_dim), "reward": jnp.zeros(()), "next_obs": obs}
        return SVGInfState(actor, log_alpha, self.actor_optimizer.init(eqx.filter(actor, eqx.is_array)),
                           self.alpha_optimizer.init(log_alpha), model, model_opt, normaliser,
                           Replay.create(example, self.config.buffer_size), autoreset.reset(self.env, key_env), key)

    def act(self, state, obs, key):
        return self.policy.mode(state.actor, obs)

    def segment_return(self, actor, model, segment, alpha, member, key=None, gradient_decay=None):
        """Mean over the episodes in `segment` of sum_t gamma^t (r_hat_t - alpha log pi(a~_t|s_hat_t)) along the
        path re-simulated from the real episode's inferred noise; returns (objective, log pi(a~_t|s_hat_t) per
        step). An episode starts at the segment's first step and after every real episode end, from the real
        observation there. a~_t is a fresh policy sample drawn with `key` (the inferred action a_hat_t if key is
        None). The gradient backpropagated through each model step is scaled by `gradient_decay` (the config's
        if None); the value is not."""
        decay = self.config.gradient_decay if gradient_decay is None else gradient_decay
        starts = jnp.concatenate([jnp.ones(1, bool), segment["done"][:-1]])
        noises = jax.vmap(lambda s, a, r, s_next: infer_noise(self.policy, actor, model, s, a, s_next, r, member))(
            segment["obs"], segment["action"], segment["reward"], segment["next_obs"])
        n = starts.shape[0]
        keys = jax.random.split(jax.random.key(0) if key is None else key, n)

        def step(carry, xs):
            s_hat, discount = carry
            obs, start, (eps, eta), key_fresh = xs
            s = jnp.where(start, obs, s_hat)
            discount = jnp.where(start, 1.0, discount)
            a_hat, log_prob, s_next, r_hat = resimulate(self.policy, actor, model, s, eps, eta, member)
            if key is not None:
                log_prob = self.policy.sample_with_log_prob(actor, s, key_fresh)[1]
            reward = self.reward_fn(s, a_hat) if self.reward_fn is not None else r_hat
            frozen = jax.lax.stop_gradient(s_next)
            s_next = frozen + decay * (s_next - frozen)  # same value; v'_{s'} reaches the step before x lambda
            return (s_next, discount * self.config.gamma), (discount * (reward - alpha * log_prob), log_prob)

        carry = (segment["obs"][0], jnp.ones(()))
        _, (terms, log_probs) = jax.lax.scan(step, carry, (segment["obs"], starts, noises, keys))
        return terms.sum() / starts.sum(), log_probs

    def train_chunk(self, state: SVGInfState):
        key, key_steps, key_model, key_policy = jax.random.split(state.key, 4)

        def env_step(env_state, key):
            key_act, key_env = jax.random.split(key)
            action = self.policy.sample(state.actor, env_state.obs, key_act)
            env_state, transition = autoreset.step(self.env, env_state, action, key_env, self.limit)
            return env_state, {"obs": transition.obs, "action": action, "reward": transition.reward,
                               "next_obs": transition.next_obs, "done": transition.terminated | transition.truncated,
                               "episode_return": transition.episode_return}

        env_state, segment = jax.lax.scan(env_step, state.env_state, jax.random.split(key_steps, self.steps_per_chunk))
        def store(carry, transition):
            replay, normaliser = carry
            row = _model_row(transition, self.model.config.predict_reward)
            return (replay.add(transition), normaliser.add(row)), None

        fields = ("obs", "action", "reward", "next_obs")
        (replay, normaliser), _ = jax.lax.scan(store, (state.replay, state.normaliser),
                                               {k: segment[k] for k in fields})

        def model_step(carry, key):
            model, opt, _ = carry
            return self.model.step(model, opt, normaliser, replay, key, self.config.batch_size), None

        (model, model_opt, nll), _ = jax.lax.scan(model_step, (state.model, state.model_opt, jnp.zeros(())),
                                                  jax.random.split(key_model, self.config.model_updates))

        def policy_step(carry, key):
            actor, actor_opt, log_alpha, alpha_opt = carry
            alpha = jnp.exp(log_alpha)
            key_member, key_fresh = jax.random.split(key)
            member = jax.random.randint(key_member, (), 0, self.config.model_members)
            (objective, log_probs), grads = eqx.filter_value_and_grad(self.segment_return, has_aux=True)(
                actor, model, segment, alpha, member, key_fresh)
            grads = jax.tree.map(jnp.negative, grads)
            updates, actor_opt = self.actor_optimizer.update(grads, actor_opt, eqx.filter(actor, eqx.is_array))
            grad_alpha = jax.grad(_temperature_loss)(log_alpha, log_probs, self.target_entropy)
            alpha_updates, alpha_opt = self.alpha_optimizer.update(grad_alpha, alpha_opt)
            carry = (eqx.apply_updates(actor, updates), actor_opt, optax.apply_updates(log_alpha, alpha_updates),
                     alpha_opt)
            return carry, (objective, -log_probs.mean())

        carry = (state.actor, state.actor_opt, state.log_alpha, state.alpha_opt)
        (actor, actor_opt, log_alpha, alpha_opt), (objectives, entropies) = jax.lax.scan(
            policy_step, carry, jax.random.split(key_policy, self.config.policy_updates))
        state = SVGInfState(actor, log_alpha, actor_opt, alpha_opt, model, model_opt, normaliser, replay, env_state,
                            key)
        done = segment["done"]
        metrics = {"model_nll": nll, "segment_objective": objectives.mean(), "entropy": entropies.mean(),
                   "alpha": jnp.exp(log_alpha),
                   "train_episode_return": jnp.where(done.any(), segment["episode_return"].sum()
                                                     / jnp.maximum(done.sum(), 1), jnp.nan)}
        return state, metrics
