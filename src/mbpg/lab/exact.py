"""Exact oracles: J and the three population gradients (MFG, FMG, MVG) on tabular MDPs and LQR.

One rule covers every kind: the gradient is built from d under one environment and Q under another,
    mfg: d under p,     Q under p        (the true gradient)
    fmg: d under p_hat, Q under p_hat    (policy search inside the model)
    mvg: d under p,     Q under p_hat    (real states, model values)
Called on concrete arrays these functions compute in float64 and return NumPy values; inside jit/grad they
follow the caller's dtype.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import LQR, TabularMDP
from mbpg.envs.validation import is_concrete
from mbpg.values import evaluate_lqr, evaluate_tabular

KINDS = ("mfg", "fmg", "mvg")


class UnstableGainWarning(RuntimeWarning):
    """The discounted closed loop sqrt(gamma)(A + B K) is unstable: J = -inf."""


def check_params(env, params) -> None:
    shape = np.shape(params)
    if isinstance(env, TabularMDP):
        expected = (env.n_states, env.n_actions)
        meaning = "softmax logits [S, A]"
    elif isinstance(env, LQR):
        expected = (env.action_dim, env.state_dim)
        meaning = "the gain K [action_dim, state_dim] of u = K x + noise"
    else:
        raise TypeError(f"exact oracles need a TabularMDP or an LQR; got {type(env).__name__}.")
    if shape != expected:
        raise ValueError(f"params must be {meaning} = {expected}; got shape {shape}.")
    if is_concrete(params) and not np.isfinite(np.asarray(params)).all():
        raise ValueError("params contain NaN or inf.")


def _in_float64(function):
    """Concrete inputs: compute in float64 (exactness is the point) and return NumPy float64, which mixes with
    float32 JAX code without dtype warnings. Tracers (inside jax.grad, jit, vmap) pass through in their dtype."""

    def wrapper(env, params, *args, **kwargs):
        if not is_concrete(params):
            return function(env, jnp.asarray(params), *args, **kwargs)
        with jax.enable_x64(True):
            result = function(env, jnp.asarray(np.asarray(params), jnp.float64), *args, **kwargs)
            return np.asarray(result, dtype=np.float64)

    wrapper.__doc__, wrapper.__name__ = function.__doc__, function.__name__
    return wrapper


@_in_float64
def exact_return(env, params) -> jax.Array:
    """J(theta) = E[sum_t gamma^t r_t] from the start distribution (-inf, with a warning, for an unstable LQR gain)."""
    check_params(env, params)
    if isinstance(env, TabularMDP):
        return evaluate_tabular(env, jax.nn.softmax(params, -1)).expected_return
    evaluation = evaluate_lqr(env, params)
    _warn_if_unstable(evaluation.stable, params)
    return evaluation.expected_return


@_in_float64
def exact_gradient(env, params, kind: str = "mfg", model=None) -> jax.Array:
    """The population gradient of type `kind` ("mfg", "fmg" or "mvg"), same shape as params."""
    check_params(env, params)
    if kind not in KINDS:
        raise ValueError(f"unknown gradient kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if kind != "mfg":
        if model is None:
            raise ValueError(f"kind={kind!r} needs model=... (the learned dynamics p_hat).")
        if type(model) is not type(env):
            raise ValueError(f"model must be a {type(env).__name__} like env; got {type(model).__name__}.")
        # d from one and Q from the other must describe the same objective (a model with gamma 0.5 flipped the
        # sign of mvg's gradient without a word).
        for field in ("gamma", "policy_std"):
            if getattr(model, field, None) != getattr(env, field, None):
                raise ValueError(f"the model's {field} ({getattr(model, field)}) differs from the env's "
                                 f"({getattr(env, field)}); a model replaces only the dynamics (and rewards).")
        check_params(model, params)
    d_env = model if kind == "fmg" else env
    q_env = env if kind == "mfg" else model
    if isinstance(env, TabularMDP):
        return _tabular_gradient(d_env, q_env, params)
    return _lqr_gradient(d_env, q_env, params)


def _tabular_gradient(d_env: TabularMDP, q_env: TabularMDP, logits):
    """grad J[s, a] = d(s) pi(a|s) (Q(s, a) - V(s)), with d and (Q, V) from their own environments."""
    probs = jax.nn.softmax(logits, -1)
    occupancy = evaluate_tabular(d_env, probs).occupancy
    values = evaluate_tabular(q_env, probs)
    return occupancy[:, None] * probs * (values.action_values - values.values[:, None])


def _lqr_gradient(d_env: LQR, q_env: LQR, gain):
    """grad_K J = E_{x~d}[ E_u[grad_u Q(x, u)] x' ] (Stein's lemma on the Gaussian score)
                = -2 [(R + gamma B'PB) K + gamma B'PA] Sigma_d, with (A, B, P) of q_env and Sigma_d of d_env."""
    q_eval, d_eval = evaluate_lqr(q_env, gain), evaluate_lqr(d_env, gain)
    _warn_if_unstable(q_eval.stable & d_eval.stable, gain)
    A, B, R, P, gamma = q_env.A, q_env.B, q_env.action_cost, q_eval.value_matrix, q_env.gamma
    gradient = -2.0 * ((R + gamma * B.T @ P @ B) @ gain + gamma * B.T @ P @ A) @ d_eval.state_moment
    return jnp.where(q_eval.stable & d_eval.stable, gradient, jnp.nan)


def _warn_if_unstable(stable, gain) -> None:
    if is_concrete(stable) and not bool(stable):
        warnings.warn(
            f"the gain K = {np.asarray(gain).tolist()} makes the discounted closed loop sqrt(gamma)(A + B K) "
            "unstable: J = -inf and the gradient is undefined (NaN). Start from a stabilising gain, e.g. "
            "lqr.optimal_gain() scaled toward it.",
            UnstableGainWarning,
            stacklevel=3,
        )


def optimal_return(mdp: TabularMDP, tolerance: float = 1e-12) -> float:
    """J* = mu . V* of a tabular MDP by value iteration in float64: the ceiling "reaches the optimal return" is
    measured against (softmax policies approach it without attaining it)."""
    transitions, rewards, initial = (np.asarray(x, np.float64) for x in (mdp.transitions, mdp.rewards, mdp.initial))
    values = np.zeros(mdp.n_states)
    while True:
        new = (rewards + mdp.gamma * transitions @ values).max(axis=1)
        if np.max(np.abs(new - values)) <= tolerance * (1.0 - mdp.gamma):
            return float(initial @ new)
        values = new
