"""Exact policy evaluation on tabular MDPs and LQR: the ground truth every estimator is measured against.

Both evaluations are plain JAX (differentiable, jittable) and run in the dtype of their inputs: call them under
`jax.enable_x64(True)` where the numbers must be exact to float64 precision.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mbpg.envs import LQR, TabularMDP


class TabularEvaluation(NamedTuple):
    """V[s], Q[s, a], the unnormalised discounted occupancy d[s] (sums to 1/(1-gamma)) and J = mu . V."""

    values: jax.Array
    action_values: jax.Array
    occupancy: jax.Array
    expected_return: jax.Array


def evaluate_tabular(mdp: TabularMDP, probs: jax.Array) -> TabularEvaluation:
    """Solve the Bellman equation V = r_pi + gamma P_pi V and the occupancy d = mu^T (I - gamma P_pi)^-1."""
    transitions, rewards, initial = (jnp.asarray(x, probs.dtype) for x in (mdp.transitions, mdp.rewards, mdp.initial))
    policy_transitions = jnp.einsum("sa,sat->st", probs, transitions)
    system = jnp.eye(mdp.n_states, dtype=probs.dtype) - mdp.gamma * policy_transitions
    values = jnp.linalg.solve(system, jnp.sum(probs * rewards, axis=-1))
    action_values = rewards + mdp.gamma * transitions @ values
    occupancy = jnp.linalg.solve(system.T, initial)
    return TabularEvaluation(values, action_values, occupancy, initial @ values)


class LQREvaluation(NamedTuple):
    """V(x) = -(x' value_matrix x + value_offset); state_moment = sum_t gamma^t E[x_t x_t'] (the occupancy's
    second moment, which is all of d that a linear-Gaussian gradient needs); J; and whether sqrt(gamma)(A + B K)
    is stable (when it is not, J is -inf and the other fields are meaningless)."""

    value_matrix: jax.Array
    value_offset: jax.Array
    state_moment: jax.Array
    expected_return: jax.Array
    stable: jax.Array


def solve_discrete_lyapunov(a: jax.Array, c: jax.Array) -> jax.Array:
    """X with X = a X a' + c, by the Kronecker-product linear system (small n; differentiable)."""
    n = a.shape[0]
    x = jnp.linalg.solve(jnp.eye(n * n, dtype=a.dtype) - jnp.kron(a, a), c.reshape(-1))
    x = x.reshape(n, n)
    return 0.5 * (x + x.T)


def evaluate_lqr(lqr: LQR, gain: jax.Array) -> LQREvaluation:
    """Closed forms for the linear-Gaussian policy u = K x + std e under discount gamma."""
    dtype = gain.dtype
    A, B, Q, R = (jnp.asarray(x, dtype) for x in (lqr.A, lqr.B, lqr.state_cost, lqr.action_cost))
    gamma, n, m = lqr.gamma, lqr.state_dim, lqr.action_dim
    closed_loop = A + B @ gain
    action_cov = lqr.policy_std**2 * jnp.eye(m, dtype=dtype)
    effective_noise = B @ action_cov @ B.T + jnp.asarray(lqr.noise_cov, dtype)

    # Stable iff Y = I + gamma F' Y F has a positive definite solution (Lyapunov's theorem): a test that, unlike
    # eigenvalues of a non-symmetric matrix, runs under jit on every backend.
    root = jnp.sqrt(jnp.asarray(gamma, dtype))
    witness = solve_discrete_lyapunov(root * closed_loop.T, jnp.eye(n, dtype=dtype))
    stable = jnp.all(jnp.isfinite(witness)) & (jnp.linalg.eigvalsh(witness)[0] > 0)

    value_matrix = solve_discrete_lyapunov(root * closed_loop.T, Q + gain.T @ R @ gain)
    value_offset = (jnp.trace(R @ action_cov) + gamma * jnp.trace(value_matrix @ effective_noise)) / (1 - gamma)
    mean0, cov0 = jnp.asarray(lqr.initial_mean, dtype), jnp.asarray(lqr.initial_cov, dtype)
    second_moment0 = cov0 + jnp.outer(mean0, mean0)
    state_moment = solve_discrete_lyapunov(root * closed_loop, second_moment0 + gamma / (1 - gamma) * effective_noise)
    expected_return = -(jnp.trace(value_matrix @ second_moment0) + value_offset)
    expected_return = jnp.where(stable, expected_return, -jnp.inf)
    return LQREvaluation(value_matrix, value_offset, state_moment, expected_return, stable)


def lqr_action_value(lqr: LQR, evaluation: LQREvaluation, state: jax.Array, action: jax.Array) -> jax.Array:
    """Q(x, u) = r(x, u) + gamma E[V(A x + B u + w)] for the policy that `evaluation` belongs to."""
    mean_next = lqr.A @ state + lqr.B @ action
    expected_next_value = -(mean_next @ evaluation.value_matrix @ mean_next
                            + jnp.trace(evaluation.value_matrix @ lqr.noise_cov) + evaluation.value_offset)
    return lqr.reward(state, action) + lqr.gamma * expected_next_value


def exact_action_value_fn(env, params):
    """Q^{pi, env}(state, action) as a callable, for any environment with an exact evaluation."""
    if isinstance(env, TabularMDP):
        table = evaluate_tabular(env, jax.nn.softmax(params, axis=-1)).action_values
        return lambda state, action: table[state, action]
    if isinstance(env, LQR):  # NaN where the policy is unstable on env: Q is undefined, and the value matrix of
        evaluation = evaluate_lqr(env, params)  # an unstable evaluation is finite nonsense (mvg-dp drew it)
        return lambda state, action: jnp.where(evaluation.stable, lqr_action_value(env, evaluation, state, action),
                                               jnp.nan)
    raise TypeError(f"no exact evaluation for {type(env).__name__}: it needs a TabularMDP or an LQR.")
