"""One file per algorithm; each is a Config dataclass plus an agent class with init / train_chunk / act.

The registry maps CLI names to (Config, Agent, gradient type).
"""

from __future__ import annotations

import difflib


def _registry():
    from mbpg.algos.ppo import PPO, PPOConfig
    from mbpg.algos.reinforce import Reinforce, ReinforceConfig
    from mbpg.algos.sac import SAC, SACConfig
    from mbpg.algos.trpo import TRPO, TRPOConfig

    return {
        "reinforce": (ReinforceConfig, Reinforce, "MFG"),
        "ppo": (PPOConfig, PPO, "MFG"),
        "trpo": (TRPOConfig, TRPO, "MFG"),
        "sac": (SACConfig, SAC, "MFG"),
    }


ALGORITHMS = ("reinforce", "ppo", "trpo", "sac")


def get_algorithm(name: str):
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(registry)}.{hint}")
    return registry[name]


def make_agent(name: str, config, env):
    _, agent_class, _ = get_algorithm(name)
    return agent_class(config, env)
