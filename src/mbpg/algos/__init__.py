"""One file per algorithm; each is a Config dataclass plus an agent class with init / train_chunk / act.

The registry maps CLI names to (Config, Agent, gradient type).
"""

from __future__ import annotations

import difflib


# name -> (module, Config class, Agent class, gradient type). Modules are imported on first use, so that the CLI
# starts without importing every algorithm.
_TABLE = {
    "reinforce": ("reinforce", "ReinforceConfig", "Reinforce", "MFG"),
    "ppo": ("ppo", "PPOConfig", "PPO", "MFG"),
    "trpo": ("trpo", "TRPOConfig", "TRPO", "MFG"),
    "sac": ("sac", "SACConfig", "SAC", "MFG"),
    "mbpo": ("mbpo", "MBPOConfig", "MBPO", "MVG"),
    "metrpo": ("metrpo", "METRPOConfig", "METRPO", "FMG"),
    "slbo": ("slbo", "SLBOConfig", "SLBO", "FMG"),
    "mbpg-tabular": ("mbpg_tabular", "MBPGConfig", "MBPG", "FMG"),
    "svg0": ("svg", "SVG0Config", "SVG0", "MFG"),
    "svg1": ("svg", "SVG1Config", "SVG1", "MVG"),
    "svginf": ("svg", "SVGInfConfig", "SVGInf", "MVG"),
    "apois": ("pois", "APOISConfig", "APOIS", "MFG"),
    "ppois": ("pois", "POISConfig", "PPOIS", "MFG"),
}

ALGORITHMS = tuple(_TABLE)


def _registry():
    import importlib

    registry = {}
    for name, (module_name, config_name, agent_name, gradient_type) in _TABLE.items():
        module = importlib.import_module(f"mbpg.algos.{module_name}")
        registry[name] = (getattr(module, config_name), getattr(module, agent_name), gradient_type)
    return registry


# Algorithms of this package that are not agents with train_chunk (their loops are not chunks of env steps), and
# where a user who types their name into `mbpg train`, `compare` or `sweep` finds them instead.
ELSEWHERE = {
    "gamps": "GAMPS runs its own loop over batches of real episodes: mbpg.algos.gamps.train_tabular (tabular "
             "models), mbpg.algos.gamps_continuous.make_train (Minigolf-v0), benchmarks/bench_gamps.py and "
             "bench_gamps_minigolf.py; `mbpg lab gridworld-two-area` measures its gradient (gamps, gamps-ml)",
    "uim": "UIM runs one real episode per iteration with a line search on the real system: mbpg.algos.uim.train "
           "and benchmarks/bench_uim.py; `mbpg lab train --env lqr --gradient uim` ascends with its gradient",
}
ELSEWHERE["gamps-ml"] = ELSEWHERE["gamps"]


def get_algorithm(name: str, also: tuple[str, ...] = ()):
    """(Config, Agent, gradient type) of a registered algorithm. `also`: names the caller handles itself (for
    `mbpg train`: pilco), listed among the choices when `name` is unknown."""
    registry = _registry()
    if name in ELSEWHERE:
        raise ValueError(f"{name} is not trained by this command: {ELSEWHERE[name]}.")
    if name not in registry:
        choices = [*registry, *also]
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(choices)}.{hint}")
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
