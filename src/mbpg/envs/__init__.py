"""Functional JAX environments: `reset(key) -> state` and `step(state, action, key) -> (next_state, reward)`."""

from mbpg.envs.families import chain, garnet, gridworld
from mbpg.envs.lqr import LQR, double_integrator, random_lqr
from mbpg.envs.tabular import TabularMDP

__all__ = ["TabularMDP", "LQR", "gridworld", "chain", "garnet", "double_integrator", "random_lqr"]

from mbpg.envs.classic_control import CartPole, CartPoleSwingUp, MountainCarContinuous, Pendulum
from mbpg.envs.gym_adapter import FunctionalGymnasiumEnv, GymnasiumEnv, as_gymnasium
from mbpg.envs.registry import make

__all__ += ["Pendulum", "CartPole", "CartPoleSwingUp", "MountainCarContinuous", "GymnasiumEnv",
            "FunctionalGymnasiumEnv", "as_gymnasium", "make"]
