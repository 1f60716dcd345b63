"""Noise inference: explain a REAL transition by the noise that a reparameterised policy and a Gaussian model
would have needed to produce it (Heess et al. 2015, "Learning continuous control policies by stochastic value
gradients", section 4).

Why: a value gradient needs d(next state)/d(action) and d(action)/d(theta) along the path the agent actually
took. Writing the policy as a = f(s, eps; theta) and the model as s' = mu(s, a) + sigma(s, a) * eta, and solving
for the eps and eta that reproduce the real (s, a, s', r), gives a path that equals the real one at the current
parameters, while its derivatives come from the policy and the model. The states (the distribution d) stay real;
only the *value* is model-based: the MVG cell of the design table.

The inferred noise is a constant of the re-simulation: callers infer it once (no gradient) and differentiate
`resimulate` with it held fixed. Any policy with `infer_noise` and `reparameterised_with_log_prob` (or
`reparameterised`) fits (Gaussian and tanh-Gaussian MLP policies, the linear-Gaussian policy), and any model
with the `GaussianEnsemble` layout [next_obs, reward] fits the model side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpg.models.ensemble import GaussianEnsemble, predict_all


def _targets(model: GaussianEnsemble, next_obs, reward) -> jax.Array:
    next_obs = jnp.asarray(next_obs)
    if next_obs.shape != (model.obs_dim,):
        raise ValueError(f"next_obs must be ONE observation of shape ({model.obs_dim},), got {next_obs.shape}; "
                         "vmap over a batch.")
    if not model.config.predict_reward:
        return next_obs
    if reward is None:
        raise ValueError("this model predicts the reward (predict_reward=True), so inferring its noise needs the "
                         "real reward; pass reward=... (or build the model with predict_reward=False).")
    return jnp.concatenate([next_obs, jnp.reshape(jnp.asarray(reward, next_obs.dtype), (1,))])


def _member_gaussian(model: GaussianEnsemble, obs, action, member):
    means, variances = predict_all(model, obs, action)
    return means[member], variances[member]


def infer_model_noise(model: GaussianEnsemble, obs, action, next_obs, reward=None, member=0) -> jax.Array:
    """eta with [next_obs, reward] = mu(s, a) + sigma(s, a) * eta for ensemble member `member` (for ONE
    transition; the reward entry only when the model predicts the reward)."""
    mean, variance = _member_gaussian(model, obs, action, member)
    return (_targets(model, next_obs, reward) - mean) * jax.lax.rsqrt(variance)


def resimulate_model(model: GaussianEnsemble, obs, action, eta, member=0):
    """`(next_obs, reward)` = mu(s, a) + sigma(s, a) * eta, differentiable in obs, action and the model; reward is
    None when the model does not predict it."""
    mean, variance = _member_gaussian(model, obs, action, member)
    out = mean + jnp.sqrt(variance) * eta
    reward = out[model.obs_dim] if model.config.predict_reward else None
    return out[: model.obs_dim], reward


def infer_noise(policy, params, model: GaussianEnsemble, obs, action, next_obs, reward=None, member=0):
    """(eps, eta) explaining one real transition: the policy noise of the action and the model noise of the
    outcome. Computed without gradient (they are constants of the re-simulation)."""
    params, model = jax.lax.stop_gradient((params, model))
    eps = policy.infer_noise(params, obs, action)
    eta = infer_model_noise(model, obs, action, next_obs, reward, member)
    return jax.lax.stop_gradient(eps), jax.lax.stop_gradient(eta)


def resimulate(policy, params, model: GaussianEnsemble, obs, eps, eta, member=0):
    """One step re-simulated from fixed noise: `(action, log_prob, next_obs, reward)`.

    At the parameters the noise was inferred with, this returns the real action, its log-density, the real next
    observation and (if modelled) the real reward, up to float rounding; its derivatives in `params`, `obs` and
    `model` are the policy's and the model's. `log_prob` is None for a policy without
    `reparameterised_with_log_prob`.
    """
    if hasattr(policy, "reparameterised_with_log_prob"):
        action, log_prob = policy.reparameterised_with_log_prob(params, obs, eps)
    else:
        action, log_prob = policy.reparameterised(params, obs, eps), None
    next_obs, reward = resimulate_model(model, obs, action, eta, member)
    return action, log_prob, next_obs, reward
