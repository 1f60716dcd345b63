"""Count-based partial models of a finite MDP (the model of MBPG, Wang & Dietterich 2003).

MBPG never pretends to know what it has not seen. It keeps raw counts n(s, a, s'), reward sums and the start
states it observed, and builds from them a model that is explicit about its gaps:

* a pair is **known** once n(s, a) >= m; its row is the maximum-likelihood estimate n(s, a, .) / n(s, a) and its
  reward the mean observed reward. Below m the pair's partial counts are ignored (as in R-max): a row built from
  one or two samples is confidently wrong, and the exact gradient would trust it completely.
* an **unknown** pair leaves the model for an absorbing *exit* state (index S, value 0) and is credited a fixed
  value `unknown_value` up front, so Q_hat(s, a) = unknown_value exactly. Choosing it is the exploration policy
  of the model: R_max / (1 - gamma) (optimism, the default of the MBPG loop) makes the exact gradient on the model
  push the policy toward unknown pairs in proportion to d_hat(s) pi(a|s) (Q_hat - V_hat), i.e. toward the unknown
  pairs of high model occupancy; 0 (pessimism, for rewards >= 0) makes it avoid them.
* a **pruned** state (negligible model occupancy, `prune`) is cut out the same way: every transition into it goes
  to the exit, crediting gamma p_hat(s'|s, a) V_frozen(s'), and its own row goes to the exit paying V_frozen(s).
  With V_frozen = V_hat of the unpruned model at the current policy, the pruned model reproduces V_hat and Q_hat on
  the kept states exactly at that policy, and its gradient differs only through the lost occupancy of paths that
  pass through pruned states (bounded by sum of their d_hat times the largest advantage spread / (1 - gamma)).

The model is a `TabularMDP` on S + 1 states (exit last), so every exact oracle and estimator accepts it. Arrays
keep static shapes, so the whole MBPG loop compiles once and vmaps over seeds.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import TabularMDP
from mbpg.envs.validation import is_concrete


class TransitionCounts(eqx.Module):
    """What has been observed: n(s, a, s') [S, A, S], the sum of rewards at each (s, a) [S, A] and how often each
    state was a start state [S]. Float arrays (exact integers up to 2^24 in float32)."""

    transitions: jax.Array
    reward_sums: jax.Array
    starts: jax.Array

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]

    @property
    def pair_counts(self) -> jax.Array:
        """n(s, a) = sum_s' n(s, a, s')."""
        return self.transitions.sum(-1)

    @property
    def total(self) -> jax.Array:
        """Real transitions counted so far."""
        return self.transitions.sum()


def empty_counts(n_states: int, n_actions: int, dtype=jnp.float32) -> TransitionCounts:
    if n_states < 1 or n_actions < 1:
        raise ValueError(f"a partial model needs at least one state and one action; got {n_states}, {n_actions}.")
    return TransitionCounts(jnp.zeros((n_states, n_actions, n_states), dtype), jnp.zeros((n_states, n_actions), dtype),
                            jnp.zeros((n_states,), dtype))


def add_transitions(counts: TransitionCounts, states, actions, next_states, rewards) -> TransitionCounts:
    """Counts after observing the transitions (s_i, a_i, r_i, s'_i) (any matching shapes; jittable)."""
    states, actions, next_states = (jnp.asarray(x).reshape(-1) for x in (states, actions, next_states))
    rewards = jnp.asarray(rewards, counts.reward_sums.dtype).reshape(-1)
    if not (states.shape == actions.shape == next_states.shape == rewards.shape):
        raise ValueError(f"states, actions, next_states and rewards must have one entry per transition; got shapes "
                         f"{states.shape}, {actions.shape}, {next_states.shape}, {rewards.shape}.")
    if is_concrete(states, actions, next_states):
        _check_indices(counts, np.asarray(states), np.asarray(actions), np.asarray(next_states))
    one = jnp.ones_like(rewards)
    return TransitionCounts(counts.transitions.at[states, actions, next_states].add(one),
                            counts.reward_sums.at[states, actions].add(rewards), counts.starts)


def add_starts(counts: TransitionCounts, start_states) -> TransitionCounts:
    """Counts after observing episodes that began in `start_states` (the start distribution is learned too)."""
    start_states = jnp.asarray(start_states).reshape(-1)
    if is_concrete(start_states):
        values = np.asarray(start_states)
        if values.size and (values.min() < 0 or values.max() >= counts.n_states):
            raise ValueError(f"start states must be integers in [0, {counts.n_states}); got [{values.min()}, "
                             f"{values.max()}].")
    return TransitionCounts(counts.transitions, counts.reward_sums,
                            counts.starts.at[start_states].add(jnp.ones(start_states.shape, counts.starts.dtype)))


def known_pairs(counts: TransitionCounts, threshold: float) -> jax.Array:
    """known[s, a] = n(s, a) >= threshold (the m of the partial model)."""
    return counts.pair_counts >= threshold


def partial_mdp(counts: TransitionCounts, gamma: float, known_threshold: float, unknown_value: float,
                kept=None, frozen_values=None) -> TabularMDP:
    """The partial model on S + 1 states (the exit last): known rows by maximum likelihood, unknown pairs and
    transitions into pruned states leave for the exit with their value credited as reward (see the module
    docstring). `kept` [S] bool (default: all) and `frozen_values` [S] (needed when anything is pruned) come from
    `prune`. The start distribution is the empirical one of `counts.starts`."""
    if known_threshold < 1:
        raise ValueError(f"known_threshold m must be >= 1 (samples before a pair is trusted); got {known_threshold}.")
    n_states, n_actions = counts.n_states, counts.n_actions
    dtype = counts.transitions.dtype
    if is_concrete(counts.starts) and not float(np.asarray(counts.starts).sum()) > 0:
        raise ValueError("the partial model needs at least one observed start state (add_starts) to estimate the "
                         "start distribution.")
    kept = jnp.ones(n_states, bool) if kept is None else jnp.asarray(kept, bool)
    if frozen_values is None:
        if is_concrete(kept) and not bool(np.asarray(kept).all()):
            raise ValueError("pruned states need frozen_values (V_hat of the unpruned model), as returned by prune.")
        frozen_values = jnp.zeros(n_states, dtype)
    frozen_values = jnp.asarray(frozen_values, dtype)

    n_pair = counts.pair_counts
    known = (n_pair >= known_threshold) & kept[:, None]
    p_hat = counts.transitions / jnp.maximum(n_pair, 1.0)[..., None]
    r_hat = counts.reward_sums / jnp.maximum(n_pair, 1.0)
    # Known rows: mass toward kept states stays; mass toward pruned states exits with their frozen value.
    to_kept = p_hat * kept[None, None, :]
    to_exit = jnp.sum(p_hat * ~kept[None, None, :], axis=-1)
    known_reward = r_hat + gamma * jnp.einsum("sat,t->sa", p_hat * ~kept[None, None, :], frozen_values)
    # Unknown pairs of kept states are worth unknown_value; every action of a pruned state is worth V_frozen(s).
    exit_value = jnp.where(kept[:, None], jnp.asarray(unknown_value, dtype), frozen_values[:, None])
    rows = jnp.where(known[..., None], to_kept, 0.0)
    exit_column = jnp.where(known, to_exit, 1.0)[..., None]
    transitions = jnp.concatenate([rows, exit_column], axis=-1)
    rewards = jnp.where(known, known_reward, exit_value)
    exit_row = jnp.zeros((1, n_actions, n_states + 1), dtype).at[..., -1].set(1.0)
    transitions = jnp.concatenate([transitions, exit_row], axis=0)
    rewards = jnp.concatenate([rewards, jnp.zeros((1, n_actions), dtype)], axis=0)
    initial = counts.starts / jnp.maximum(counts.starts.sum(), 1.0)
    initial = jnp.concatenate([initial, jnp.zeros((1,), dtype)])
    return TabularMDP(transitions, rewards, initial, gamma)


def extend_logits(logits: jax.Array) -> jax.Array:
    """Policy logits [S, A] for the S + 1 model states (the exit's actions are all alike, so its row is zero)."""
    return jnp.concatenate([logits, jnp.zeros((1, logits.shape[-1]), logits.dtype)], axis=0)


def prune(occupancy: jax.Array, values: jax.Array, counts: TransitionCounts, gamma: float, known_threshold: float,
          threshold: float) -> tuple[jax.Array, jax.Array]:
    """(kept [S], frozen_values [S]) from the unpruned model's occupancy d_hat and values V_hat ([S] or [S + 1]).

    A state is pruned when its normalised model occupancy (1 - gamma) d_hat(s) is below `threshold` and the model
    knows at least one of its pairs. States the model knows nothing of are not pruned: their d_hat is 0 only
    because the model cannot reach them yet, so pruning them would stop exploration where it has just arrived.
    threshold = 0 prunes nothing. Never prunes a state at or above the threshold.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"the pruning threshold is a share of the normalised occupancy, in [0, 1); got {threshold}.")
    n_states = counts.n_states
    share = (1.0 - gamma) * occupancy[:n_states]
    modelled = jnp.any(known_pairs(counts, known_threshold), axis=-1)
    kept = ~((share < threshold) & modelled)
    return kept, jnp.asarray(values[:n_states])


def _check_indices(counts: TransitionCounts, states, actions, next_states) -> None:
    for name, values, bound in (("states", states, counts.n_states), ("actions", actions, counts.n_actions),
                                ("next_states", next_states, counts.n_states)):
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"{name} must be integers in [0, {bound}); got values in "
                             f"[{values.min()}, {values.max()}].")
