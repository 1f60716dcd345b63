"""One name space for environments: our JAX ports where they exist, Gymnasium for everything else.

Experiments name environments by their Gymnasium ids; `make` picks the JAX port when there is one (so the
same config runs jitted and vmapped) and falls back to a host-side `GymnasiumEnv` otherwise.
"""

from __future__ import annotations

import difflib
import functools

import gymnasium

from mbpg.envs.classic_control import CartPole, CartPoleSwingUp, MountainCarContinuous, Pendulum
from mbpg.envs.families import gridworld
from mbpg.envs.gym_adapter import GymnasiumEnv
from mbpg.envs.minigolf import Minigolf

JAX_PORTS = {
    "Pendulum-v1": Pendulum,
    "CartPole-v1": CartPole,
    "MountainCarContinuous-v0": MountainCarContinuous,
    "CartPoleSwingUp-v0": CartPoleSwingUp,
    "Minigolf-v0": Minigolf,
    # The lab's default gridworld as a training env (tabular agents such as mbpg-tabular).
    "Gridworld4x4-v0": functools.partial(gridworld, 4, 4, slip=0.1, gamma=0.8),
}
BACKENDS = ("jax", "gymnasium")


def make(env_id: str, backend: str | None = None, **kwargs):
    """The environment called `env_id`; keyword arguments go to the port's constructor or `gymnasium.make`.

    backend=None takes the JAX port when one exists and Gymnasium otherwise; "jax" insists on the port,
    "gymnasium" on Gymnasium's own implementation (e.g. to compare against the port).
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS} or None (port if there is one); got {backend!r}.")
    known_to_gymnasium = env_id in gymnasium.registry or ":" in env_id  # "module:Id" imports a plugin's ids
    if env_id in JAX_PORTS and backend != "gymnasium":
        if kwargs.get("max_episode_steps", 0) is None:  # as gymnasium.make: None keeps the registered limit
            kwargs.pop("max_episode_steps")
        return JAX_PORTS[env_id](**kwargs)
    if backend == "jax":
        if env_id in JAX_PORTS or known_to_gymnasium:
            raise ValueError(
                f"there is no JAX port of {env_id!r}; ports exist for {sorted(JAX_PORTS)}. "
                "Use backend='gymnasium' (or None) to run Gymnasium's implementation on the host."
            )
    elif known_to_gymnasium:
        return GymnasiumEnv(env_id, **kwargs)
    elif env_id in JAX_PORTS:  # backend == "gymnasium" for a port-only id
        raise ValueError(f"{env_id!r} exists only as a JAX port (Gymnasium has no such id); use backend='jax'.")
    raise ValueError(_unknown_message(env_id))


def _unknown_message(env_id: str) -> str:
    candidates = sorted(set(JAX_PORTS) | set(gymnasium.registry))
    matches = difflib.get_close_matches(env_id, candidates, n=3, cutoff=0.6)
    if matches:
        return f"unknown env {env_id!r}; did you mean {', '.join(matches)}?"
    return (
        f"unknown env {env_id!r}; no close match among {len(candidates)} ids. JAX ports: {sorted(JAX_PORTS)}; "
        "Gymnasium ids: list(gymnasium.registry)."
    )
