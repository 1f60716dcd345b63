"""Finite MDPs as functional JAX environments.

A `TabularMDP` is both the real environment p and, when it was estimated from data, the model p_hat: the
estimators never need to know which one they were handed, which is what lets "source of d" be a plain argument.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.distributions import categorical
from mbpg.envs.validation import as_leaf, check_finite, check_gamma, is_concrete

ROW_SUM_TOLERANCE = 1e-5


def _normalised(probabilities: np.ndarray) -> np.ndarray:
    sums = probabilities.sum(axis=-1, keepdims=True)
    return probabilities / sums if np.abs(sums - 1.0).max() > 1e-12 else probabilities


class TabularMDP(eqx.Module):
    """A discounted, continuing MDP with S states and A actions.

    transitions[s, a, s'] = p(s' | s, a), rewards[s, a] = r(s, a), initial[s] = mu(s), discount gamma in [0, 1).
    The arrays are pytree leaves (so a model can be a traced argument and one compiled estimator serves every
    model), held as float64 NumPy arrays when given concretely; gamma is static because it shapes horizons and
    compile-time constants.
    """

    transitions: jax.Array
    rewards: jax.Array
    initial: jax.Array
    gamma: float = eqx.field(static=True)

    def __init__(self, transitions, rewards, initial, gamma):
        self.transitions, self.rewards, self.initial = as_leaf(transitions), as_leaf(rewards), as_leaf(initial)
        self.gamma = check_gamma(gamma)
        if is_concrete(self.transitions, self.rewards, self.initial):
            _validate(self.transitions, self.rewards, self.initial)
            # Rows within the tolerance are renormalised: `step` samples the normalised row (categorical divides
            # by the total), and the exact oracle must solve for that same MDP. Unnormalised rows scaled by
            # 1 - 9e-6 made exact J 8% off at gamma = 0.9999. Rows normalised to float64 rounding are kept as given.
            self.transitions = _normalised(self.transitions)
            self.initial = _normalised(self.initial)

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]

    def reset(self, key: jax.Array) -> jax.Array:
        """Draw a start state from `initial`."""
        return categorical(key, self.initial)

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One transition: returns (next_state, reward) with reward = r(state, action)."""
        next_state = categorical(key, jnp.asarray(self.transitions)[state, action])
        return next_state, jnp.asarray(self.rewards)[state, action]

    def replace(self, **changes) -> "TabularMDP":
        """A copy with some fields changed (validated like a new MDP)."""
        fields = dict(transitions=self.transitions, rewards=self.rewards, initial=self.initial, gamma=self.gamma)
        fields.update(changes)
        return TabularMDP(**fields)


def _validate(transitions: np.ndarray, rewards: np.ndarray, initial: np.ndarray) -> None:
    if transitions.ndim != 3 or transitions.shape[0] != transitions.shape[2]:
        raise ValueError(
            f"transitions must have shape [S, A, S] (p(s'|s,a)); got {transitions.shape}. "
            "Index it as transitions[state, action, next_state]."
        )
    n_states, n_actions, _ = transitions.shape
    if n_states < 1 or n_actions < 1:
        raise ValueError(f"transitions needs at least one state and one action; got shape {transitions.shape}.")
    if rewards.shape != (n_states, n_actions):
        raise ValueError(
            f"rewards must have shape [S, A] = {(n_states, n_actions)} to match transitions; got {rewards.shape}."
        )
    if initial.shape != (n_states,):
        raise ValueError(f"initial must have shape [S] = ({n_states},) to match transitions; got {initial.shape}.")
    for name, array in (("transitions", transitions), ("rewards", rewards), ("initial", initial)):
        check_finite(name, array)
    for name, array in (("transitions", transitions), ("initial", initial)):
        if (array < 0).any():
            where = tuple(int(i) for i in np.argwhere(array < 0)[0])
            raise ValueError(f"{name} holds a negative probability at index {where}: {array[where]:.3g}.")
    row_sums = transitions.sum(axis=-1)
    bad = np.abs(row_sums - 1.0) > ROW_SUM_TOLERANCE
    if bad.any():
        s, a = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"transitions rows must sum to 1: transitions[{s}, {a}, :] sums to {row_sums[s, a]:.6g} "
            f"({int(bad.sum())} bad rows in all). Normalise with transitions / transitions.sum(-1, keepdims=True)."
        )
    if abs(initial.sum() - 1.0) > ROW_SUM_TOLERANCE:
        raise ValueError(f"initial must sum to 1; it sums to {initial.sum():.6g}.")
