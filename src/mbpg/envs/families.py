"""Ready-made tabular MDP families: the gridworld, the chain and random Garnet MDPs.

They are the lab's test beds: small enough for exact oracles, varied enough that no gradient type wins everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs.tabular import TabularMDP

# Gridworld actions, as (row, column) moves.
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])
ACTION_NAMES = ("up", "right", "down", "left")


def gridworld(
    rows: int = 5,
    cols: int = 5,
    slip=0.1,
    gamma: float = 0.9,
    goal: tuple[int, int] | None = None,
    start: tuple[int, int] = (0, 0),
    goal_reward: float = 1.0,
) -> TabularMDP:
    """A stochastic gridworld: four moves; with probability `slip` the move is a uniformly random one instead.

    Bumping into the border leaves the agent in place. Any action in the goal cell pays `goal_reward` and sends the
    agent back to `start`, so the task is continuing and the discounted return counts goal visits.
    `slip` may be one number or an array [rows, cols] of per-cell slip probabilities: regions with different
    dynamics, as in the GAMPS paper's gridworld, where a simple model class cannot fit every region at once.
    State index = row * cols + col.
    """
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(f"gridworld needs at least two cells; got rows={rows}, cols={cols}.")
    if np.shape(slip) not in ((), (rows, cols)):
        raise ValueError(f"slip must be a number or an array of shape ({rows}, {cols}); got shape {np.shape(slip)}.")
    slip_map = np.broadcast_to(np.asarray(slip, dtype=np.float64), (rows, cols))
    if (slip_map < 0).any() or (slip_map > 1).any():
        raise ValueError(f"slip probabilities must lie in [0, 1]; got values in [{slip_map.min()}, {slip_map.max()}].")
    goal = (rows - 1, cols - 1) if goal is None else tuple(goal)
    for name, cell in (("goal", goal), ("start", tuple(start))):
        # (1.5, 1) passed the bounds check and matched no cell: a grid without reward, and no error.
        if len(cell) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in cell):
            raise ValueError(f"{name} must be a (row, column) pair of integers; got {cell}.")
        if not (0 <= cell[0] < rows and 0 <= cell[1] < cols):
            raise ValueError(f"{name} cell {cell} lies outside the {rows}x{cols} grid.")
    if tuple(goal) == tuple(start):
        raise ValueError("goal and start must be different cells.")

    n_states, n_actions = rows * cols, len(MOVES)
    start_index = start[0] * cols + start[1]
    goal_index = goal[0] * cols + goal[1]
    transitions = np.zeros((n_states, n_actions, n_states))
    rewards = np.zeros((n_states, n_actions))
    for r in range(rows):
        for c in range(cols):
            s = r * cols + c
            if s == goal_index:
                transitions[s, :, start_index] = 1.0
                rewards[s, :] = goal_reward
                continue
            destinations = [
                min(max(r + dr, 0), rows - 1) * cols + min(max(c + dc, 0), cols - 1) for dr, dc in MOVES
            ]
            for a in range(n_actions):
                transitions[s, a, destinations[a]] += 1.0 - slip_map[r, c]
                for d in destinations:
                    transitions[s, a, d] += slip_map[r, c] / n_actions
    initial = np.zeros(n_states)
    initial[start_index] = 1.0
    return TabularMDP(transitions, rewards, initial, gamma)


def chain(n_states: int = 8, slip: float = 0.2, gamma: float = 0.9, back_reward: float = 0.2) -> TabularMDP:
    """The n-chain (Strens 2000), rewards scaled to at most 1: a classic trap for myopic gradients.

    Action 1 ("forward") moves one state right and pays 1 only at the last state (where it stays); action 0
    ("back") returns to state 0 and pays `back_reward`. With probability `slip` the other action happens.
    """
    if n_states < 2:
        raise ValueError(f"chain needs n_states >= 2; got {n_states}.")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must lie in [0, 1]; got {slip}.")
    transitions = np.zeros((n_states, 2, n_states))
    reward_of = np.zeros((n_states, 2))  # reward of the *effective* move
    for s in range(n_states):
        forward = min(s + 1, n_states - 1)
        reward_of[s] = (back_reward, 1.0 if s == n_states - 1 else 0.0)
        for a in (0, 1):
            for effective, prob in ((a, 1.0 - slip), (1 - a, slip)):
                transitions[s, a, 0 if effective == 0 else forward] += prob
    rewards = np.stack(
        [(1 - slip) * reward_of[:, 0] + slip * reward_of[:, 1], (1 - slip) * reward_of[:, 1] + slip * reward_of[:, 0]],
        axis=1,
    )
    initial = np.zeros(n_states)
    initial[0] = 1.0
    return TabularMDP(transitions, rewards, initial, gamma)


def garnet(
    n_states: int = 20, n_actions: int = 4, branching: int = 3, gamma: float = 0.9, seed: int = 0
) -> TabularMDP:
    """A random Garnet MDP (Archibald et al. 1995): each (s, a) reaches `branching` random states.

    Probabilities split [0, 1] at uniform random cut points, rewards are uniform on [0, 1], the start state is
    uniform. The same seed gives the same MDP.
    """
    if not 1 <= branching <= n_states:
        raise ValueError(f"branching must lie in [1, n_states={n_states}]; got {branching}.")
    if n_actions < 1:
        raise ValueError(f"n_actions must be at least 1; got {n_actions}.")
    key_next, key_cut, key_reward = jax.random.split(jax.random.key(seed), 3)
    pair_keys = jax.random.split(key_next, n_states * n_actions)
    next_states = jax.vmap(lambda k: jax.random.choice(k, n_states, (branching,), replace=False))(pair_keys)
    cuts = jnp.sort(jax.random.uniform(key_cut, (n_states * n_actions, branching - 1)), axis=-1)
    edges = jnp.concatenate([jnp.zeros((cuts.shape[0], 1)), cuts, jnp.ones((cuts.shape[0], 1))], axis=-1)
    probs = np.asarray(jnp.diff(edges, axis=-1), dtype=np.float64)
    transitions = np.zeros((n_states * n_actions, n_states))
    np.add.at(transitions, (np.arange(n_states * n_actions)[:, None], np.asarray(next_states)), probs)
    transitions /= transitions.sum(-1, keepdims=True)
    rewards = np.asarray(jax.random.uniform(key_reward, (n_states, n_actions)), dtype=np.float64)
    initial = np.full(n_states, 1.0 / n_states)
    return TabularMDP(transitions.reshape(n_states, n_actions, n_states), rewards, initial, gamma)
