"""Tabular models p_hat: maximum likelihood from counts, and a mixture whose error is a dial.

A model is a `TabularMDP` like the real environment, so every estimator and oracle accepts it unchanged.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import TabularMDP
from mbpg.values import evaluate_tabular


def sample_transitions(mdp: TabularMDP, key: jax.Array, per_pair: int):
    """`per_pair` transitions from every (s, a) (generative-model access): arrays states, actions, next, rewards."""
    states, actions = np.meshgrid(np.arange(mdp.n_states), np.arange(mdp.n_actions), indexing="ij")
    states = jnp.repeat(jnp.asarray(states.reshape(-1)), per_pair)
    actions = jnp.repeat(jnp.asarray(actions.reshape(-1)), per_pair)
    keys = jax.random.split(key, states.shape[0])
    next_states, rewards = jax.vmap(mdp.step)(states, actions, keys)
    return states, actions, next_states, rewards


def fit_tabular_model(
    reference: TabularMDP,
    states,
    actions,
    next_states,
    rewards=None,
    prior: float = 1.0,
) -> TabularMDP:
    """Posterior-mean transition model under a symmetric Dirichlet(prior) on each row, from observed transitions.

    prior = 0 is plain maximum likelihood; unvisited rows then fall back to uniform. Rewards: the empirical mean
    reward of each pair when `rewards` is given (the reference's rewards where a pair was never seen), otherwise
    the reference's rewards are taken as known. `reference` supplies shapes, the start distribution and gamma.
    """
    if prior < 0:
        raise ValueError(f"prior must be >= 0 (a Dirichlet concentration); got {prior}.")
    n_states, n_actions = reference.n_states, reference.n_actions
    states, actions, next_states = (np.asarray(x, dtype=np.int64).reshape(-1) for x in (states, actions, next_states))
    if not (states.shape == actions.shape == next_states.shape):
        raise ValueError(f"states, actions and next_states must have the same length; got "
                         f"{states.shape}, {actions.shape}, {next_states.shape}.")
    for name, values, bound in (("states", states, n_states), ("actions", actions, n_actions),
                                ("next_states", next_states, n_states)):
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"{name} must be integers in [0, {bound}); got values in [{values.min()}, {values.max()}].")
    counts = np.zeros((n_states, n_actions, n_states))
    np.add.at(counts, (states, actions, next_states), 1.0)
    counts += prior
    totals = counts.sum(-1, keepdims=True)
    transitions = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / n_states)
    model_rewards = np.asarray(reference.rewards, dtype=np.float64)
    if rewards is not None:
        rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
        sums = np.zeros((n_states, n_actions))
        visits = np.zeros((n_states, n_actions))
        np.add.at(sums, (states, actions), rewards)
        np.add.at(visits, (states, actions), 1.0)
        model_rewards = np.where(visits > 0, sums / np.maximum(visits, 1.0), model_rewards)
    return reference.replace(transitions=transitions, rewards=model_rewards)


def learned_model(mdp: TabularMDP, key: jax.Array, per_pair: int, prior: float = 1.0) -> TabularMDP:
    """The model a learner would have after `per_pair` samples of every (s, a), rewards known."""
    states, actions, next_states, _ = sample_transitions(mdp, key, per_pair)
    return fit_tabular_model(mdp, states, actions, next_states, prior=prior)


def mixture_model(
    mdp: TabularMDP,
    eps: float,
    perturbation: Literal["random", "adversarial"] | np.ndarray = "random",
    key: jax.Array | None = None,
    logits: jax.Array | None = None,
) -> TabularMDP:
    """p_hat = (1 - eps) p + eps q: model error as a dial.

    q = "random": every row a random distribution (Dirichlet(1), from `key`); "adversarial": all mass on the
    state of lowest value V^{pi, p} for the policy given by `logits`, the direction that hurts most; or an array
    [S, A, S] of your own. Rewards and the start distribution stay exact, so only the dynamics are wrong.
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1] (the mixture weight of the wrong dynamics); got {eps}.")
    shape = mdp.transitions.shape
    if isinstance(perturbation, str) and perturbation == "random":
        if key is None:
            raise ValueError("perturbation='random' needs key=jax.random.key(seed).")
        q = np.asarray(jax.random.dirichlet(key, jnp.ones(shape[-1]), shape[:2]), dtype=np.float64)
    elif isinstance(perturbation, str) and perturbation == "adversarial":
        if logits is None:
            raise ValueError("perturbation='adversarial' needs logits=... (the policy whose value it attacks).")
        values = evaluate_tabular(mdp, jax.nn.softmax(jnp.asarray(logits), -1)).values
        q = np.zeros(shape)
        q[:, :, int(jnp.argmin(values))] = 1.0
    elif isinstance(perturbation, str):
        raise ValueError(f"unknown perturbation {perturbation!r}; choose 'random', 'adversarial' or pass an array.")
    else:
        q = np.asarray(perturbation, dtype=np.float64)
        if q.shape != shape:
            raise ValueError(f"a perturbation array must have the transitions' shape {shape}; got {q.shape}.")
    q = q / q.sum(-1, keepdims=True)
    return mdp.replace(transitions=(1.0 - eps) * np.asarray(mdp.transitions, np.float64) + eps * q)


def total_variation(p: TabularMDP, q: TabularMDP) -> float:
    """Mean over (s, a) of the total-variation distance between the two transition rows."""
    return float(0.5 * np.abs(np.asarray(p.transitions) - np.asarray(q.transitions)).sum(-1).mean())
