"""GAMPS with a low-capacity parametric model on a continuous task (Minigolf-v0): D'Oro et al. (AAAI 2020).

Gradient type: **MVG** (d from real episodes, Q by Monte-Carlo rollouts of the learned model).

Why this file exists next to `algos/gamps.py`: the tabular loop solves the finite model exactly; here the state
is continuous, so (i) the model is a linear-Gaussian regression fitted by *weighted least squares* (the Gaussian
weighted maximum likelihood, `mbpg.models.gradient_aware.weighted_least_squares`), (ii) Q_hat(s_t, a_t) is the
mean return of M model rollouts from each real pair, for the episode's remaining steps, and (iii) episodes end
(holed or overshot), so every sum is masked by `alive`.

What the model learns, and what it is told. Minigolf's step is physics (where the putt would stop, y = x -
u^2 / (2 d), with multiplicative noise on u) followed by rules (`Minigolf.outcome`: short, holed or overshot). The
model learns the physics; the rules stay known, as the tabular GAMPS keeps the known rewards. Two low-capacity
classes (`ContinuousGAMPSConfig.model`):
  * "travel" (default, 2 parameters): the distance travelled is a^2 times a Gaussian factor,
    x - y = a^2 q with q ~ N(mu, sigma^2). The truth is q = (1 + eps)^2 / (2 d): the mean is the right shape, the
    noise's shape is not (a squared Gaussian, skewed), and on a green whose friction varies (`friction_far`) a
    single q is misspecified too. Putts weaker than `MIN_FIT_ACTION` (the clip at a_min makes them travel
    nothing) are left out of the fit.
  * "linear" (3 parameters): y ~ N(w . [x, a, 1], sigma^2), linear in the putt strength where the truth is
    quadratic, with one noise level for all putts where the truth's grows with a^2. Measured: with it neither
    weighted nor unweighted fitting learns (its homoscedastic noise makes short putts near the hole look risky).
Whether gradient-aware weights w_t = gamma^t rho_{0:t} sum_{l<=t} ||g_l|| help is the question
`benchmarks/bench_gamps_minigolf.py` measures against unit weights (ML) and model-free GPOMDP at equal
real-episode budgets, for both classes.

One iteration (`make_train(config)(key)` runs them all in one `lax.scan`; `jax.vmap` over keys runs seeds):
1. N real episodes with the current policy; their log-probabilities are the behaviour log-probabilities of that
   batch from now on; the last `buffer_batches` batches are kept;
2. weights over the buffer: GAMPS (prefix importance ratios clipped at `clip`) or ones ("ml");
3. weighted least squares on every live buffered transition;
4. Q_hat at each real pair of the current batch by `n_rollouts` model rollouts; "gpomdp" uses reward-to-go;
5. a leave-one-out per-step mean baseline (the same for all three signals), the score-function gradient
   1/N sum_i sum_t alive gamma^t (Q_hat - b) grad log pi, and an Adam ascent step. The baseline is unbiased for
   gpomdp's returns; for the model signals it is not quite, since the model was fitted on the batch too (the
   lab's estimators refuse it there, `estimators.check_baseline`; this loop keeps it as a variance cut).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbpg.envs.minigolf import Minigolf
from mbpg.gradients.forms import score_function_gradient
from mbpg.gradients.q_sources import leave_one_out_baseline
from mbpg.gradients.trajectories import Trajectory
from mbpg.models.gradient_aware import gamps_weights, prefix_log_ratios, score_norms, weighted_least_squares
from mbpg.values import discount_weights, reward_to_go


GAMMA = 0.99
"""Minigolf's discount (the reference code's; the env itself carries none)."""
MODELS = ("travel", "linear")
"""The stop-point model classes (see the module docstring)."""
MIN_FIT_ACTION = 0.1
"""'travel' fits q = (x - y) / a^2 on putts at least this strong: a weaker (clipped) putt carries no information
about q and would divide by ~0."""


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}; got {model!r}.")


class PuttPolicy(eqx.Module):
    """a ~ N(theta . phi(x), std^2) with phi(x) = [sqrt(x), 1]: the putt strength is a Gaussian whose mean is
    linear in features of the distance. sqrt(x) because the speed that stops a ball at the hole is sqrt(2 d x);
    the std is fixed (it is part of the objective, as for the LQR policy)."""

    std: float = eqx.field(static=True, default=0.5)

    def features(self, obs: jax.Array) -> jax.Array:
        x = jnp.reshape(obs, (-1,))[0]
        return jnp.stack([jnp.sqrt(jnp.maximum(x, 0.0)), jnp.ones_like(x)])

    def mean(self, params: jax.Array, obs: jax.Array) -> jax.Array:
        return params @ self.features(obs)

    def sample(self, params: jax.Array, obs: jax.Array, key: jax.Array) -> jax.Array:
        return jnp.reshape(self.mean(params, obs) + self.std * jax.random.normal(key, (), params.dtype), (1,))

    def log_prob(self, params: jax.Array, obs: jax.Array, action: jax.Array) -> jax.Array:
        z = (jnp.reshape(action, (-1,))[0] - self.mean(params, obs)) / self.std
        return -0.5 * z * z - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi)


@dataclasses.dataclass(frozen=True)
class ContinuousGAMPSConfig:
    """Settings of the continuous GAMPS loop (defaults: the minigolf study in docs/gamps/)."""

    iterations: int = 40
    """Policy updates; each costs `n_episodes` real episodes."""
    n_episodes: int = 10
    """Real episodes per iteration (the real-data budget per update, equal for every gradient)."""
    gradient: Literal["gamps", "ml", "gpomdp"] = "gamps"
    """gamps: model fitted with gradient-aware weights; ml: the same class by unweighted least squares; gpomdp:
    model-free reward-to-go (the reference)."""
    learning_rate: float = 0.1
    """Adam step size on the policy parameters."""
    n_rollouts: int = 8
    """Model rollouts M per real (s, a)."""
    buffer_batches: int = 5
    """The model is fitted on the last this-many batches (older ones re-weighted by importance ratios)."""
    clip: float = 10.0
    """Largest prefix importance ratio kept in the GAMPS weights."""
    policy_std: float = 0.5
    """Fixed standard deviation of the putt strength."""
    model: Literal["travel", "linear"] = "travel"
    """The stop-point model class: 'travel' (x - y = a^2 q, q Gaussian) or 'linear' (y linear in [x, a, 1])."""
    initial_params: tuple[float, float] = (1.0, 0.0)
    """theta at the start: mean putt = theta_0 sqrt(x) + theta_1 (1.0: well short of the hole everywhere)."""
    eval_episodes: int = 200
    """Episodes per iteration that only measure the return (never used for learning)."""

    def __post_init__(self):
        for name in ("iterations", "n_episodes", "n_rollouts", "buffer_batches", "eval_episodes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if self.n_episodes < 2:
            raise ValueError("n_episodes must be >= 2: the baseline is built from the other episodes.")
        for name in ("learning_rate", "clip", "policy_std"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0; got {value}.")
        if self.gradient not in ("gamps", "ml", "gpomdp"):
            raise ValueError(f"gradient must be 'gamps', 'ml' or 'gpomdp'; got {self.gradient!r}.")
        check_model(self.model)


class Batch(NamedTuple):
    """Real episodes [N, H]: position x_t, policy output a_t (before the env clips it), where the putt would have
    stopped y_t, reward, alive mask, and log pi_behaviour(a_t | x_t)."""

    x: jax.Array
    actions: jax.Array
    stops: jax.Array
    rewards: jax.Array
    alive: jax.Array
    log_probs: jax.Array


def collect(env: Minigolf, policy: PuttPolicy, params, key, n_episodes: int) -> Batch:
    """`n_episodes` episodes of at most `env.max_episode_steps` putts, masked after they end."""
    horizon = env.max_episode_steps

    def episode(key):
        key_reset, key_steps = jax.random.split(key)

        def step(carry, key):
            state, alive = carry
            key_act, key_env = jax.random.split(key)
            obs = env.observation(state)
            action = policy.sample(params, obs, key_act)
            next_state, reward = env.step(state, action, key_env)
            record = (obs[0], action[0], next_state[2], reward, alive, policy.log_prob(params, obs, action))
            return (next_state, alive & ~env.is_terminal(next_state)), record

        start = (env.reset(key_reset), jnp.ones((), bool))
        return jax.lax.scan(step, start, jax.random.split(key_steps, horizon))[1]

    return Batch(*jax.vmap(episode)(jax.random.split(key, n_episodes)))


def model_inputs(env: Minigolf, x, actions):
    """[x, clip(a), 1]: the 'linear' regression inputs (the env clips the putt, so the model sees the clipped one)."""
    clipped = jnp.clip(actions, env.min_action, env.max_action)
    return jnp.stack([x, clipped, jnp.ones_like(x)], -1)


def n_coefficients(model: str) -> int:
    check_model(model)
    return {"travel": 1, "linear": 3}[model]


def fit_stop_model(env: Minigolf, policy: PuttPolicy, params, buffer: Batch, filled, gradient: str, clip: float,
                   model: str = "travel"):
    """Weighted Gaussian ML fit of the stop-point model over the buffer [K, N, H]: (coefficients, noise std).

    'travel': coefficients [mu] and std sigma of q = (x - y) / a^2; 'linear': least squares of y on [x, a, 1],
    coefficients [3] and the residual std. The weights are GAMPS's (gradient == "gamps") or ones, on live
    transitions of filled batches.
    """
    check_model(model)
    k, n, h = buffer.x.shape
    flat = jax.tree.map(lambda a: a.reshape(k * n, h), buffer)
    alive = flat.alive.astype(flat.x.dtype) * jnp.repeat(filled.astype(flat.x.dtype), n)[:, None]
    if gradient == "gamps":
        obs, acts = flat.x[..., None], flat.actions[..., None]
        norms = score_norms(policy, params, obs, acts)
        log_ratios = prefix_log_ratios(policy, params, obs, acts, flat.log_probs)
        weights = gamps_weights(norms, GAMMA, log_ratios, ratio="clip", clip=clip, mask=alive)
    else:
        weights = alive
    if model == "travel":
        putt = jnp.clip(flat.actions, env.min_action, env.max_action)
        usable = putt >= MIN_FIT_ACTION
        weights = jnp.where(usable, weights, 0.0).reshape(-1)
        ratio = jnp.where(usable, (flat.x - flat.stops) / jnp.where(usable, putt * putt, 1.0), 0.0).reshape(-1, 1)
        mean, cov = weighted_least_squares(jnp.ones_like(ratio), ratio, weights, ridge=1e-6)
    else:
        inputs = model_inputs(env, flat.x, flat.actions).reshape(-1, 3)
        mean, cov = weighted_least_squares(inputs, flat.stops.reshape(-1, 1), weights.reshape(-1), ridge=1e-6)
    return mean[:, 0], jnp.sqrt(jnp.maximum(cov[0, 0], 1e-12))


def predict_stop(env: Minigolf, model: str, coefficients, noise_std, x, action, key):
    """One draw of the model's stop point for a putt `action` from x."""
    check_model(model)
    noise = noise_std * jax.random.normal(key, (), x.dtype)
    if model == "travel":
        putt = jnp.clip(action, env.min_action, env.max_action)
        return x - putt * putt * (coefficients[0] + noise)
    return model_inputs(env, x, action) @ coefficients + noise


def model_q(env: Minigolf, policy: PuttPolicy, params, coefficients, noise_std, batch: Batch, key, n_rollouts: int,
            model: str = "travel"):
    """Q_hat(x_t, a_t) [N, H]: mean discounted return of model rollouts for the remaining H - t steps."""
    check_model(model)
    horizon = env.max_episode_steps

    def rollout(x, action, steps_left, key):
        def putt(x, action, key):
            return env.outcome(x, predict_stop(env, model, coefficients, noise_std, x, action, key))

        x_next, reward, ended = putt(x, action, jax.random.fold_in(key, 0))

        def step(carry, k):
            x, running, total, discount = carry
            key_act, key_model = jax.random.split(jax.random.fold_in(key, k))
            a = policy.sample(params, x[None], key_act)[0]
            new_x, r, done = putt(x, a, key_model)
            live = running & (k < steps_left)
            total = total + jnp.where(live, discount * r, 0.0)
            return (jnp.where(live, new_x, x), live & ~done, total, discount * GAMMA), None

        carry = (x_next, ~ended, reward, jnp.asarray(GAMMA, x.dtype))
        (_, _, total, _), _ = jax.lax.scan(step, carry, jnp.arange(1, horizon))
        return total

    n = batch.x.shape[0]
    steps_left = jnp.broadcast_to(horizon - jnp.arange(horizon), (n, horizon))
    keys = jax.random.split(key, (n, horizon, n_rollouts))
    per_pair = jax.vmap(lambda x, a, s, ks: jax.vmap(lambda k: rollout(x, a, s, k))(ks).mean())
    return jax.vmap(per_pair)(batch.x, batch.actions, steps_left, keys)


def policy_gradient(policy: PuttPolicy, params, batch: Batch, signal):
    """1/N sum_i sum_t alive gamma^t (signal - b) grad log pi, b the leave-one-out per-step mean."""
    alive = batch.alive.astype(signal.dtype)
    signal = signal * alive
    signal = (signal - leave_one_out_baseline("constant", signal, batch.x, None)) * alive
    trajectories = Trajectory(batch.x[..., None], batch.actions[..., None], batch.rewards, batch.x[..., None])
    return score_function_gradient(policy, params, trajectories, discount_weights(batch.x.shape[1], GAMMA,
                                                                                   signal.dtype), signal)


def discounted_returns(batch: Batch) -> jax.Array:
    return jnp.sum(batch.rewards * batch.alive * GAMMA ** jnp.arange(batch.rewards.shape[1]), axis=1)


def make_train(env: Minigolf, config: ContinuousGAMPSConfig):
    """`train(key) -> (params, metrics)`, metrics arrays [iterations]: eval_return (mean discounted return of
    `eval_episodes` fresh episodes *before* each update), batch_return, and the fitted model coefficients."""
    if not isinstance(env, Minigolf):
        raise ValueError(f"the continuous GAMPS trainer drives Minigolf-v0; got {type(env).__name__}.")
    if not env.max_episode_steps:
        raise ValueError("Minigolf needs max_episode_steps (the episode horizon H); got None.")
    policy = PuttPolicy(config.policy_std)
    optimizer = optax.adam(config.learning_rate)
    n, h, k = config.n_episodes, env.max_episode_steps, config.buffer_batches

    def iteration(carry, key):
        params, opt_state, buffer, filled = carry
        key_collect, key_eval, key_q = jax.random.split(key, 3)
        batch = collect(env, policy, params, key_collect, n)
        evaluation = discounted_returns(collect(env, policy, params, key_eval, config.eval_episodes)).mean()
        buffer = jax.tree.map(lambda old, new: jnp.concatenate([new[None], old[:-1]]), buffer, batch)
        filled = jnp.concatenate([jnp.ones((1,), bool), filled[:-1]])
        if config.gradient == "gpomdp":
            signal = reward_to_go(batch.rewards * batch.alive, GAMMA)
            coefficients, noise = jnp.zeros(n_coefficients(config.model)), jnp.zeros(())
        else:
            coefficients, noise = fit_stop_model(env, policy, params, buffer, filled, config.gradient, config.clip,
                                                 config.model)
            signal = model_q(env, policy, params, coefficients, noise, batch, key_q, config.n_rollouts, config.model)
        gradient = policy_gradient(policy, params, batch, signal)
        updates, opt_state = optimizer.update(-gradient, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(eval_return=evaluation, batch_return=discounted_returns(batch).mean(),
                       coefficients=coefficients, noise=noise, params=params)
        return (params, opt_state, buffer, filled), metrics

    def train(key):
        params = jnp.asarray(config.initial_params, jnp.float32)
        empty = Batch(*(jnp.zeros((k, n, h), dt) for dt in (jnp.float32,) * 4 + (bool, jnp.float32)))
        carry = (params, optimizer.init(params), empty, jnp.zeros((k,), bool))
        (params, *_), metrics = jax.lax.scan(iteration, carry, jax.random.split(key, config.iterations))
        return params, metrics

    return train
