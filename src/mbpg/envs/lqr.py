"""Discounted linear-quadratic regulation as a functional JAX environment.

The continuous counterpart of the tabular MDP: J, Q and the gradient have closed forms (discrete Lyapunov
equations), so every estimator can be checked against the truth on continuous states and actions too.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from mbpg.envs.validation import as_leaf, check_finite, check_gamma, check_shape, is_concrete


class LQR(eqx.Module):
    """x' = A x + B u + w with w ~ N(0, noise_cov); reward -(x' state_cost x + u' action_cost u).

    Start states x0 ~ N(initial_mean, initial_cov). The policy class is linear-Gaussian, u = K x + policy_std * e
    with e ~ N(0, I): the gain K is the parameter that exact oracles and estimators differentiate, and the
    exploration noise is part of the problem definition (it fixes which objective J(K) is meant).
    """

    A: jax.Array
    B: jax.Array
    state_cost: jax.Array
    action_cost: jax.Array
    noise_cov: jax.Array
    initial_mean: jax.Array
    initial_cov: jax.Array
    gamma: float = eqx.field(static=True)
    policy_std: float = eqx.field(static=True)

    def __init__(
        self,
        A,
        B,
        state_cost=None,
        action_cost=None,
        noise_cov=None,
        initial_mean=None,
        initial_cov=None,
        gamma: float = 0.9,
        policy_std: float = 0.1,
    ):
        A, B = as_leaf(A), as_leaf(B)
        if A.ndim != 2 or B.ndim != 2:
            raise ValueError(f"A must be [n, n] and B [n, m]; got A{tuple(A.shape)} and B{tuple(B.shape)}.")
        n, m = A.shape[0], B.shape[1]
        self.A, self.B = A, B
        self.state_cost = as_leaf(np.eye(n) if state_cost is None else state_cost)
        self.action_cost = as_leaf(np.eye(m) if action_cost is None else action_cost)
        self.noise_cov = as_leaf(0.01 * np.eye(n) if noise_cov is None else noise_cov)
        self.initial_mean = as_leaf(np.zeros(n) if initial_mean is None else initial_mean)
        self.initial_cov = as_leaf(np.eye(n) if initial_cov is None else initial_cov)
        self.gamma = check_gamma(gamma)
        if not 0.0 < float(policy_std) < float("inf"):
            raise ValueError(f"policy_std must be > 0 and finite (score-function gradients need a stochastic "
                             f"policy); got {policy_std}.")
        self.policy_std = float(policy_std)
        leaves = (self.A, self.B, self.state_cost, self.action_cost, self.noise_cov, self.initial_mean,
                  self.initial_cov)
        if is_concrete(*leaves):
            self._validate()

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    @property
    def action_dim(self) -> int:
        return self.B.shape[1]

    def reset(self, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, (self.state_dim,))
        return jnp.asarray(self.initial_mean, noise.dtype) + psd_sqrt(jnp.asarray(self.initial_cov, noise.dtype)) @ noise

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        noise = psd_sqrt(jnp.asarray(self.noise_cov, state.dtype)) @ jax.random.normal(key, (self.state_dim,), state.dtype)
        return self.A @ state + self.B @ action + noise, self.reward(state, action)

    def reward(self, state: jax.Array, action: jax.Array) -> jax.Array:
        return -(state @ self.state_cost @ state + action @ self.action_cost @ action)

    def replace(self, **changes) -> "LQR":
        fields = {name: getattr(self, name) for name in (
            "A", "B", "state_cost", "action_cost", "noise_cov", "initial_mean", "initial_cov", "gamma", "policy_std")}
        fields.update(changes)
        return LQR(**fields)

    def optimal_gain(self) -> np.ndarray:
        """The gain K* maximising J (discounted Riccati equation; the noise does not change K*)."""
        root = np.sqrt(self.gamma)
        A, B = root * np.asarray(self.A, np.float64), root * np.asarray(self.B, np.float64)
        Q, R = np.asarray(self.state_cost, np.float64), np.asarray(self.action_cost, np.float64)
        P = scipy.linalg.solve_discrete_are(A, B, Q, R)
        return -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)

    def _validate(self) -> None:
        n, m = self.state_dim, self.action_dim
        A, B = np.asarray(self.A), np.asarray(self.B)
        check_shape("A", A, (n, n), "state x state")
        check_shape("B", B, (n, m), "state x action")
        check_shape("state_cost", np.asarray(self.state_cost), (n, n), "state x state")
        check_shape("action_cost", np.asarray(self.action_cost), (m, m), "action x action")
        check_shape("noise_cov", np.asarray(self.noise_cov), (n, n), "state x state")
        check_shape("initial_mean", np.asarray(self.initial_mean), (n,), "state")
        check_shape("initial_cov", np.asarray(self.initial_cov), (n, n), "state x state")
        for name in ("A", "B", "state_cost", "action_cost", "noise_cov", "initial_mean", "initial_cov"):
            check_finite(name, np.asarray(getattr(self, name)))
        for name, strict in (("state_cost", False), ("action_cost", True), ("noise_cov", False),
                             ("initial_cov", False)):
            _check_psd(name, np.asarray(getattr(self, name), np.float64), strict)


def psd_sqrt(cov: jax.Array) -> jax.Array:
    """A symmetric square root of a positive semi-definite matrix (valid for singular ones, unlike Cholesky)."""
    values, vectors = jnp.linalg.eigh(cov)
    return (vectors * jnp.sqrt(jnp.clip(values, 0.0))) @ vectors.T


def _check_psd(name: str, matrix: np.ndarray, strict: bool) -> None:
    if not np.allclose(matrix, matrix.T, atol=1e-8):
        raise ValueError(f"{name} must be symmetric; use ({name} + {name}.T) / 2.")
    smallest = np.linalg.eigvalsh(matrix).min()
    if strict and smallest <= 0:
        raise ValueError(f"{name} must be positive definite; its smallest eigenvalue is {smallest:.3g}.")
    if smallest < -1e-8:
        raise ValueError(f"{name} must be positive semi-definite; its smallest eigenvalue is {smallest:.3g}.")


def double_integrator(gamma: float = 0.9, dt: float = 0.1, policy_std: float = 0.3, noise: float = 0.01) -> LQR:
    """The textbook 2-D LQR: position and velocity driven by a force, unit state cost, small action cost."""
    return LQR(
        A=np.array([[1.0, dt], [0.0, 1.0]]),
        B=np.array([[0.5 * dt * dt], [dt]]),
        state_cost=np.eye(2),
        action_cost=0.1 * np.eye(1),
        noise_cov=noise * np.eye(2),
        initial_mean=np.zeros(2),
        initial_cov=np.eye(2),
        gamma=gamma,
        policy_std=policy_std,
    )


def random_lqr(state_dim: int = 3, action_dim: int = 2, gamma: float = 0.9, seed: int = 0,
               policy_std: float = 0.3) -> LQR:
    """A random LQR with an open-loop spectral radius of 1.05 (mildly unstable, so the gain matters)."""
    key_a, key_b = jax.random.split(jax.random.key(seed))
    A = np.array(jax.random.normal(key_a, (state_dim, state_dim)), np.float64)  # a copy: writable under x64
    A *= 1.05 / np.abs(np.linalg.eigvals(A)).max()
    B = np.asarray(jax.random.normal(key_b, (state_dim, action_dim)), np.float64) / np.sqrt(state_dim)
    return LQR(A, B, gamma=gamma, policy_std=policy_std)
