"""Functional JAX environments: `reset(key) -> state` and `step(state, action, key) -> (next_state, reward)`."""

from mbpg.envs.families import chain, garnet, gridworld
from mbpg.envs.lqr import LQR, double_integrator, random_lqr
from mbpg.envs.tabular import TabularMDP

__all__ = ["TabularMDP", "LQR", "gridworld", "chain", "garnet", "double_integrator", "random_lqr"]
