"""Where a score-function update gets its Q: the real returns (MFG), a learned model from real (s, a) (MVG), or
trajectories imagined by the model (FMG), and the adaptive mix of the three ("auto").

Why one module: REINFORCE's update is grad J ~ E_d[grad log pi(a|s) A(s, a)] whatever d and Q are, so the three
gradient types differ only in the advantages and in the (s, a) they are evaluated on. Everything here returns
advantages on a time-major batch [T, n_envs]; the agent turns them into gradients. The selector
(`mbpg.gradients.selector`) needs one contribution per i.i.d. unit: here a unit is one environment's column of the
batch (its n_steps steps), so `per_env_gradients` gives [n_envs, ...] contributions whose mean is the batch
gradient.

The candidates, for a policy pi, a value baseline V fitted to real returns, and an ensemble p_hat fitted on the
real transitions of *earlier* updates (so that, given p_hat, imagined data are independent of this batch):

- **mfg**: A = reward-to-go - V on the real batch (GPOMDP with a baseline).
- **mvg**: d real, Q from p_hat: from every real (s_t, a_t), one rollout of `model_horizon` steps in p_hat under
  pi, Q_hat = r_t + sum_{j=1}^{H-1} gamma^j r_hat_j + gamma^H V(s_H) (the real first reward, model rewards after,
  V closing the tail; Q_hat = r_t at a true terminal). This is the Monte-Carlo MVG cell (GAMPS's Q source) with a
  critic bootstrap, paired with MFG step by step.
- **fmg**: d and Q from p_hat: n_envs trajectories of n_steps imagined from fresh initial states, with the
  reward-to-go (V at the cut) as in MFG. Its contributions come from separate data: `independent` for the selector.

Rewards and terminations of the model are the environment's known functions (`mbpo.known_model_functions`);
the ensemble learns the dynamics.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from mbpg.algos.mbpo import add_valid, known_reward_and_termination
from mbpg.algos.on_policy import Rollout, advantages_and_returns, reset_envs
from mbpg.algos.replay import Replay
from mbpg.gradients.selector import CROSS_FIT_MIN_UNITS, FORCED_CROSS_FIT, select_gradient_auto, unit_weights
from mbpg.models.ensemble import EnsembleConfig, GaussianEnsemble, fit_buffer, init_ensemble, predict_batch

GRADIENTS = ("mfg", "mvg", "fmg", "auto", *FORCED_CROSS_FIT)
"""The values of an on-policy agent's `gradient` option; auto mixes mfg, mvg and fmg, cross-fitting the weights
(each half of the environments' chosen on the other half) from CROSS_FIT_MIN_UNITS environments on, as training
wants; auto-cf and auto-is force cross-fitted and in-sample weights."""
CANDIDATES = ("mfg", "mvg", "fmg")
INDEPENDENT = (False, False, True)  # FMG's imagined trajectories are separate data


@dataclasses.dataclass(frozen=True)
class ModelGradientSettings:
    """The learned model behind REINFORCE's model-based gradients (unused when gradient='mfg')."""

    gradient: str = "mfg"
    """Gradient type: mfg (real returns), mvg (Q from model rollouts from real (s, a)), fmg (imagined
    trajectories), auto (the minimum-estimated-MSE mix of the three, chosen at every update; weights
    cross-fitted across halves of the environments when n_envs >= 4, in-sample below), auto-cf / auto-is (always
    cross-fitted, needs n_envs >= 4 / always in-sample)."""
    model_horizon: int = 10
    """H: model steps behind each MVG Q estimate before V closes the tail."""
    model_members: int = 5
    """Ensemble members (a random elite per sample and step)."""
    model_elites: int = 3
    """Members used for prediction (lowest holdout error)."""
    model_hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of each member."""
    model_buffer_size: int = 20_000
    """Real transitions kept for model fitting (the most recent)."""
    model_epochs: int = 2
    """At most this many passes of model training per update (early stopping may stop sooner)."""


def check_gradient_settings(settings: ModelGradientSettings, env, spec) -> None:
    if settings.gradient not in GRADIENTS:
        raise ValueError(f"--gradient must be one of {', '.join(GRADIENTS)}; got {settings.gradient!r}.")
    if settings.gradient == "mfg":
        return
    n_envs = getattr(settings, "n_envs", CROSS_FIT_MIN_UNITS)
    if FORCED_CROSS_FIT.get(settings.gradient) and n_envs < CROSS_FIT_MIN_UNITS:
        raise ValueError(f"--gradient {settings.gradient} chooses weights on each half of the environments and needs "
                         f"--n-envs >= {CROSS_FIT_MIN_UNITS}; got {n_envs}.")
    if settings.gradient not in CANDIDATES and n_envs < 2:
        raise ValueError(f"--gradient {settings.gradient} estimates each candidate's variance across environments "
                         f"and needs --n-envs >= 2; got {n_envs}.")
    if spec.discrete:
        raise ValueError(f"--gradient {settings.gradient} needs a learned dynamics model, which takes continuous "
                         f"actions; {type(env).__name__} has discrete actions. Use --gradient mfg.")
    known_reward_and_termination(env, f"--gradient {settings.gradient}", "use --gradient mfg there")


class CandidateBatch(NamedTuple):
    """Samples of the candidates (leading axis K) on the real batch's grid, advantages already scaled."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    advantage: jax.Array


class LearnedModel(eqx.Module):
    """The ensemble and the real transitions it is fitted on (a fixed-capacity buffer, so shapes stay static)."""

    ensemble: GaussianEnsemble
    replay: Replay


class ModelGradients:
    """Advantages of the three candidates and their per-environment gradient contributions, for one agent."""

    def __init__(self, settings: ModelGradientSettings, env, spec, policy, gamma: float, lam: float = 1.0):
        """`lam`: the GAE lambda of the algorithm's own advantages, used for FMG's imagined ones too."""
        self.settings, self.env, self.spec, self.policy = settings, env, spec, policy
        self.gamma, self.lam = gamma, lam
        self.reward_fn, self.termination_fn = known_reward_and_termination(
            env, f"--gradient {settings.gradient}", "use --gradient mfg there")
        self.ensemble_config = EnsembleConfig(n_members=settings.model_members, n_elites=settings.model_elites,
                                              hidden=settings.model_hidden, max_epochs=settings.model_epochs,
                                              predict_reward=False)

    def init(self, key) -> LearnedModel:
        obs = jnp.zeros(self.spec.obs_dim, jnp.float32)
        example = {"obs": obs, "action": jnp.zeros(self.spec.action_dim, jnp.float32), "next_obs": obs}
        return LearnedModel(init_ensemble(self.ensemble_config, self.spec.obs_dim, self.spec.action_dim, key),
                            Replay.create(example, self.settings.model_buffer_size))

    def refit(self, model: LearnedModel, key) -> tuple[LearnedModel, dict]:
        """Fit the ensemble on the buffer (continuing from its parameters); a divergence keeps the old model."""
        data = model.replay.data
        ensemble, fit = fit_buffer(model.ensemble, data["obs"], data["action"], data["next_obs"], None,
                                   model.replay.size, key)
        mse = jnp.mean(fit.holdout_mse[ensemble.elites])
        return dataclasses.replace(model, ensemble=ensemble), {
            "model_holdout_mse": jnp.where(jnp.isfinite(mse), mse, jnp.nan),
            "model_failed": fit.failed.astype(jnp.float32)}

    def store(self, model: LearnedModel, rollout: Rollout) -> LearnedModel:
        items = {"obs": rollout.obs, "action": self.spec.clip(rollout.action), "next_obs": rollout.next_obs}
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), items)
        valid = jnp.ones(flat["obs"].shape[0], bool)
        return dataclasses.replace(model, replay=add_valid(model.replay, flat, valid))

    def _model_step(self, ensemble, obs, action, key):
        action = self.spec.clip(action)
        next_obs, _ = predict_batch(ensemble, obs, action, key)
        reward = jax.vmap(self.reward_fn)(obs, action, next_obs)
        return next_obs, reward, self.termination_fn(next_obs)

    def mvg_advantages(self, params, value, ensemble, rollout: Rollout, key) -> jax.Array:
        """Q_hat(s_t, a_t) - V(s_t) at every real pair [T, n_envs]."""
        shape = rollout.reward.shape
        flat_obs = rollout.obs.reshape((-1, self.spec.obs_dim))
        flat_action = rollout.action.reshape((-1, self.spec.action_dim))
        key_first, key_rest = jax.random.split(key)
        obs, _, terminated = self._model_step(ensemble, flat_obs, flat_action, key_first)
        alive = ~terminated
        sample = jax.vmap(self.policy.sample, in_axes=(None, 0, 0))

        def step(carry, key):
            obs, alive, discount, total = carry
            key_act, key_model = jax.random.split(key)
            action = sample(params, obs, jax.random.split(key_act, obs.shape[0]))
            next_obs, reward, terminated = self._model_step(ensemble, obs, action, key_model)
            total = total + discount * alive * reward
            return (next_obs, alive & ~terminated, discount * self.gamma, total), None

        horizon = self.settings.model_horizon
        init = (obs, alive, jnp.asarray(self.gamma, jnp.float32), jnp.zeros(obs.shape[0], jnp.float32))
        (obs, alive, discount, total), _ = jax.lax.scan(step, init, jax.random.split(key_rest, horizon - 1))
        tail = discount * alive * jax.vmap(value)(obs)
        q = rollout.reward + ~rollout.terminated * (total + tail).reshape(shape)
        return q - jax.vmap(jax.vmap(value))(rollout.obs)

    def imagine(self, params, ensemble, n_envs: int, n_steps: int, key) -> tuple[Rollout, jax.Array]:
        """n_envs trajectories of n_steps in the model from fresh initial states, as a Rollout (cut at the end),
        and alive [T, n_envs]: False from the step after a model terminal on."""
        key_reset, key_steps = jax.random.split(key)
        start = reset_envs(self.env, key_reset, n_envs).obs
        sample = jax.vmap(self.policy.sample, in_axes=(None, 0, 0))
        log_prob = jax.vmap(self.policy.log_prob, in_axes=(None, 0, 0))

        def step(carry, key):
            obs, alive = carry
            key_act, key_model = jax.random.split(key)
            action = sample(params, obs, jax.random.split(key_act, n_envs))
            next_obs, reward, terminated = self._model_step(ensemble, obs, action, key_model)
            # After a model terminal the trajectory is over: its later steps carry no reward and no advantage.
            out = Rollout(obs, action, log_prob(params, obs, action), reward * alive, next_obs, terminated & alive,
                          jnp.zeros(n_envs, bool), jnp.zeros(n_envs, jnp.float32))
            return (next_obs, alive & ~terminated), (out, alive)

        _, (rollout, alive) = jax.lax.scan(step, (start, jnp.ones(n_envs, bool)), jax.random.split(key_steps, n_steps))
        return rollout, alive

    def candidate_batch(self, params, value, ensemble, rollout: Rollout, mfg_advantages, scale, key):
        """The three candidates' samples on one [T, n_envs] grid, stacked [3, T, n_envs, ...] (mfg, mvg, fmg):
        mfg and mvg on the real batch (mvg with the model's advantages), fmg on imagined trajectories; every
        candidate's advantages divided by the same `scale` (so that normalising advantages rescales the step but
        cannot change the selector's choice), fmg's zeroed after a model terminal."""
        key_mvg, key_fmg = jax.random.split(key)
        n_steps, n_envs = rollout.reward.shape
        mvg = self.mvg_advantages(params, value, ensemble, rollout, key_mvg)
        imagined, alive = self.imagine(params, ensemble, n_envs, n_steps, key_fmg)
        fmg, _ = advantages_and_returns(imagined, value, self.gamma, self.lam)
        stack = lambda *rows: jnp.stack(rows)  # noqa: E731
        return CandidateBatch(stack(rollout.obs, rollout.obs, imagined.obs),
                              stack(rollout.action, rollout.action, imagined.action),
                              stack(rollout.log_prob, rollout.log_prob, imagined.log_prob),
                              stack(mfg_advantages / scale, mvg / scale, fmg * alive / scale))

    def candidates(self, params, value, ensemble, rollout: Rollout, mfg_advantages, scale, key):
        """Per-environment gradient contributions of every candidate of the policy loss -E[log pi A]: a pytree
        with leaves [3, n_envs, ...] (mfg, mvg, fmg), from `candidate_batch`."""
        batch = self.candidate_batch(params, value, ensemble, rollout, mfg_advantages, scale, key)
        return self._contributions(params, batch)

    def _contributions(self, params, batch: CandidateBatch):
        rows = [per_env_gradients(self.policy, params, batch.obs[k], batch.action[k], batch.advantage[k])
                for k in range(len(CANDIDATES))]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *rows)

    def gradient(self, params, value, ensemble, rollout: Rollout, mfg_advantages, scale, key):
        """The policy-loss gradient of the configured type (mvg, fmg or auto) and metrics; for auto the
        selector's weights and per-candidate estimates (squared bias, variance) are logged every update."""
        contributions = self.candidates(params, value, ensemble, rollout, mfg_advantages, scale, key)
        if self.settings.gradient in CANDIDATES:
            index = CANDIDATES.index(self.settings.gradient)
            return jax.tree.map(lambda x: x[index].mean(0), contributions), {}
        gradient, selection = select_gradient_auto(contributions, INDEPENDENT,
                                                    FORCED_CROSS_FIT.get(self.settings.gradient))
        return gradient, selection_metrics(selection)

    def step(self, model: LearnedModel, params, value, rollout: Rollout, mfg_advantages, scale, key):
        """One update's model work for a surrogate-based agent: refit the ensemble on EARLIER updates' data, draw
        the weighted candidate samples from it, then add this batch to the model's buffer. Returns (model,
        samples, metrics)."""
        key_model, key_candidates = jax.random.split(key)
        model, metrics = self.refit(model, key_model)
        samples, choice = self.weighted_samples(params, value, model.ensemble, rollout, mfg_advantages, scale,
                                                key_candidates)
        return self.store(model, rollout), samples, {**metrics, **choice}

    def weighted_samples(self, params, value, ensemble, rollout: Rollout, mfg_advantages, scale, key):
        """For a surrogate-based step (TRPO, PPO): the candidates' samples [T * n_envs, K', ...] with their
        advantages multiplied by the mix's weight, so that sum over K' of the mean over samples of ratio * A
        is the mixed surrogate; at the current policy its gradient is the selector's mixed gradient (a weight
        w >= 0 can sit inside PPO's clipped min, since min(r w A, clip(r) w A) = w min(r A, clip(r) A)).

        For a fixed type K' = 1 (that candidate's samples); for auto K' = 3, with per-environment weights
        (`unit_weights`: cross-fitted ones differ between the halves). Samples are time-major ([T, n_envs]
        flattened, as `flatten_time` lays out the real batch), so the real ones line up with the value targets. Returns
        (CandidateBatch of [N, K'] leaves, metrics)."""
        batch = self.candidate_batch(params, value, ensemble, rollout, mfg_advantages, scale, key)
        if self.settings.gradient in CANDIDATES:
            index = CANDIDATES.index(self.settings.gradient)
            batch = jax.tree.map(lambda x: x[index:index + 1], batch)
            metrics = {}
        else:
            contributions = self._contributions(params, batch)
            weights, selection = unit_weights(contributions, INDEPENDENT, FORCED_CROSS_FIT.get(self.settings.gradient))
            # An unused candidate adds exactly 0, even where its advantages overflowed (0 * inf is NaN).
            weights = weights[:, None, :]
            batch = batch._replace(advantage=jnp.where(weights > 0, batch.advantage * weights, 0.0))
            metrics = selection_metrics(selection)
        # [K', T, n_envs, ...] -> [T * n_envs, K', ...], the layout of `flatten_time` for the real batch
        samples = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 2).reshape((-1,) + x.shape[:1] + x.shape[3:]), batch)
        return samples, metrics


def selection_metrics(selection) -> dict:
    """What auto logs every update: the weights and the per-candidate squared bias and variance behind them."""
    metrics = {"auto_mixed_mse": selection.mixed_mse}
    for i, name in enumerate(CANDIDATES):
        metrics[f"auto_weight_{name}"] = selection.weights[i]
        metrics[f"auto_bias2_{name}"] = selection.bias2[i]
        metrics[f"auto_variance_{name}"] = selection.variance[i]
    return metrics


def per_env_gradients(policy, params, obs, actions, advantages):
    """Gradients of -mean_t log pi(a_t|s_t) A_t for each environment column of a [T, n_envs] batch: leaves
    [n_envs, ...] whose mean is the gradient of the whole batch's loss (every column has T steps)."""

    def one(column_obs, column_actions, column_advantages):
        def loss(p):
            log_probs = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(p, column_obs, column_actions)
            return -jnp.mean(log_probs * jax.lax.stop_gradient(column_advantages))

        return eqx.filter_grad(loss)(params)

    return jax.vmap(one, in_axes=(1, 1, 1))(obs, actions, advantages)
