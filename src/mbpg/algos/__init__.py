"""One file per algorithm; each is a Config dataclass plus an agent class with init / train_chunk / act.

The registry maps CLI names to (Config, Agent, gradient type).
"""

from __future__ import annotations

import difflib


def _registry():
    from mbpg.algos.mbpg_tabular import MBPG, MBPGConfig
    from mbpg.algos.mbpo import MBPO, MBPOConfig
    from mbpg.algos.metrpo import METRPO, METRPOConfig
    from mbpg.algos.pois import APOIS, PPOIS, APOISConfig, POISConfig
    from mbpg.algos.ppo import PPO, PPOConfig
    from mbpg.algos.reinforce import Reinforce, ReinforceConfig
    from mbpg.algos.sac import SAC, SACConfig
    from mbpg.algos.slbo import SLBO, SLBOConfig
    from mbpg.algos.svg import SVG0, SVG1, SVG0Config, SVG1Config, SVGInf, SVGInfConfig
    from mbpg.algos.trpo import TRPO, TRPOConfig

    return {
        "reinforce": (ReinforceConfig, Reinforce, "MFG"),
        "ppo": (PPOConfig, PPO, "MFG"),
        "trpo": (TRPOConfig, TRPO, "MFG"),
        "sac": (SACConfig, SAC, "MFG"),
        "mbpo": (MBPOConfig, MBPO, "MVG"),
        "metrpo": (METRPOConfig, METRPO, "FMG"),
        "slbo": (SLBOConfig, SLBO, "FMG"),
        "mbpg-tabular": (MBPGConfig, MBPG, "FMG"),
        "svg0": (SVG0Config, SVG0, "MFG"),
        "svg1": (SVG1Config, SVG1, "MVG"),
        "svginf": (SVGInfConfig, SVGInf, "MVG"),
        "apois": (APOISConfig, APOIS, "MFG"),
        "ppois": (POISConfig, PPOIS, "MFG"),
    }


ALGORITHMS = ("reinforce", "ppo", "trpo", "sac", "apois", "ppois", "svg0", "svg1", "svginf", "mbpo", "metrpo",
              "slbo", "mbpg-tabular")


def get_algorithm(name: str):
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(registry)}.{hint}")
    return registry[name]


# Options that may be 0 or must lie in [0, 1]; every other int must be >= 1 and every float > 0.
MAY_BE_ZERO = {"learning_starts", "entropy_coef", "gae_lambda", "damping",
               "real_ratio", "k_first_epoch", "model_weight_decay"}
MAY_BE_ZERO |= {"imagined_horizon", "ou_theta", "ou_sigma"}  # metrpo, slbo: 0 = the task's length / no noise
MAY_BE_ZERO |= {"prune_threshold", "unknown_reward"}  # mbpg-tabular: 0 = no pruning / pessimism
UNIT_INTERVAL = {"real_ratio", "gamma", "gae_lambda", "tau", "backtrack_ratio", "delta",
                 "validation_fraction", "improvement_threshold", "ou_theta"}


def check_config(config) -> None:
    """Reject nonsense numbers before any compilation, naming the option."""
    import dataclasses
    import math

    for field in dataclasses.fields(config):
        value, option = getattr(config, field.name), "--" + field.name.replace("_", "-")
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            low_ok = v >= 0 if field.name in MAY_BE_ZERO else v > 0
            if not (math.isfinite(v) and low_ok) or (field.name in UNIT_INTERVAL and v > 1):
                bound = "in [0, 1]" if field.name in UNIT_INTERVAL else (
                    ">= 0" if field.name in MAY_BE_ZERO else "> 0")
                raise ValueError(f"{option} must be finite and {bound}; got {value}.")


def make_agent(name: str, config, env):
    _, agent_class, _ = get_algorithm(name)
    check_config(config)
    return agent_class(config, env)
