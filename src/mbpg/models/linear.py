"""Linear models for LQR: least squares from transitions, and a perturbation dial on (A, B)."""

from __future__ import annotations

import jax
import numpy as np

from mbpg.envs import LQR


def sample_linear_transitions(lqr: LQR, key: jax.Array, n: int, input_std: float = 1.0):
    """n transitions from Gaussian states and inputs (persistently exciting, so least squares is well posed)."""
    key_x, key_u, key_step = jax.random.split(key, 3)
    states = jax.random.normal(key_x, (n, lqr.state_dim))
    actions = input_std * jax.random.normal(key_u, (n, lqr.action_dim))
    next_states, _ = jax.vmap(lqr.step)(states, actions, jax.random.split(key_step, n))
    return states, actions, next_states


def fit_linear_model(reference: LQR, states, actions, next_states) -> LQR:
    """[A_hat B_hat] by least squares; the noise covariance from the residuals. Costs etc. from `reference`."""
    states, actions, next_states = (np.asarray(x, np.float64) for x in (states, actions, next_states))
    n, m = reference.state_dim, reference.action_dim
    if states.ndim != 2 or states.shape[1] != n or actions.shape != (states.shape[0], m) or \
            next_states.shape != states.shape:
        raise ValueError(f"expected states [N, {n}], actions [N, {m}], next_states [N, {n}]; got "
                         f"{states.shape}, {actions.shape}, {next_states.shape}.")
    if states.shape[0] < n + m:
        raise ValueError(f"least squares needs at least n + m = {n + m} transitions; got {states.shape[0]}.")
    inputs = np.concatenate([states, actions], axis=1)
    solution, *_ = np.linalg.lstsq(inputs, next_states, rcond=None)
    residuals = next_states - inputs @ solution
    noise_cov = residuals.T @ residuals / max(states.shape[0] - n - m, 1)
    return reference.replace(A=solution[:n].T, B=solution[n:].T, noise_cov=0.5 * (noise_cov + noise_cov.T))


def learned_linear_model(lqr: LQR, key: jax.Array, n: int) -> LQR:
    return fit_linear_model(lqr, *sample_linear_transitions(lqr, key, n))


def perturbed_lqr(lqr: LQR, eps: float, key: jax.Array) -> LQR:
    """A model whose A and B are each off by a relative Frobenius error of exactly eps, in a random direction."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0 (a relative error); got {eps}.")
    key_a, key_b = jax.random.split(key)

    def perturb(matrix, key):
        matrix = np.asarray(matrix, np.float64)
        direction = np.asarray(jax.random.normal(key, matrix.shape), np.float64)
        return matrix + eps * np.linalg.norm(matrix) * direction / np.linalg.norm(direction)

    return lqr.replace(A=perturb(lqr.A, key_a), B=perturb(lqr.B, key_b))


def relative_dynamics_error(lqr: LQR, model: LQR) -> float:
    """||[A_hat - A, B_hat - B]||_F / ||[A, B]||_F."""
    true = np.concatenate([np.asarray(lqr.A), np.asarray(lqr.B)], axis=1)
    est = np.concatenate([np.asarray(model.A), np.asarray(model.B)], axis=1)
    return float(np.linalg.norm(est - true) / np.linalg.norm(true))
