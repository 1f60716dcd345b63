"""Named lab scenarios: an environment, the policy at which gradients are measured, and a default grid."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from mbpg import envs


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    make_env: Callable[[], object]
    make_params: Callable[[object], np.ndarray]
    estimators: tuple[str, ...]
    error_kind: str
    model_errors: tuple[float, ...]
    sample_sizes: tuple[int, ...]
    n_estimates: int = 200


def _random_logits(env, scale: float = 1.0, seed: int = 7) -> np.ndarray:
    """A fixed, non-uniform softmax policy: gradients at the uniform policy are atypically symmetric."""
    return scale * np.asarray(jax.random.normal(jax.random.key(seed), (env.n_states, env.n_actions)), np.float64)


def _half_optimal_gain(env) -> np.ndarray:
    """Half the optimal gain: stabilising but clearly improvable, so the gradient is large and informative."""
    return 0.5 * env.optimal_gain()


TABULAR_ESTIMATORS = ("reinforce", "gpomdp", "fmg", "mvg-mc", "mvg-dp", "mvg-td")
LQR_ESTIMATORS = ("reinforce", "gpomdp", "fmg", "mvg-mc", "mvg-dp", "svg")
DIAL = (0.0, 0.05, 0.1, 0.2, 0.4)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("gridworld", "4x4 gridworld, slip 0.1, gamma 0.8; model p_hat = (1-eps) p + eps q, q random.",
                 lambda: envs.gridworld(4, 4, slip=0.1, gamma=0.8), _random_logits, TABULAR_ESTIMATORS, "dial",
                 DIAL, (1, 4, 16)),
        Scenario("gridworld-learned", "4x4 gridworld, slip 0.1, gamma 0.8; model learned from n samples per (s, a).",
                 lambda: envs.gridworld(4, 4, slip=0.1, gamma=0.8), _random_logits, TABULAR_ESTIMATORS, "learned",
                 (1, 3, 10, 30, 100), (1, 4, 16)),
        Scenario("gridworld-adversarial", "4x4 gridworld, gamma 0.8; q sends all mass to the policy's worst state.",
                 lambda: envs.gridworld(4, 4, slip=0.1, gamma=0.8), _random_logits, TABULAR_ESTIMATORS,
                 "adversarial", DIAL, (1, 4, 16)),
        Scenario("chain", "8-state chain, slip 0.2, gamma 0.8; random-mixture model error.",
                 lambda: envs.chain(8, slip=0.2, gamma=0.8), _random_logits, TABULAR_ESTIMATORS, "dial", DIAL,
                 (1, 4, 16)),
        Scenario("garnet", "Garnet(20 states, 4 actions, branching 3), gamma 0.8; random-mixture model error.",
                 lambda: envs.garnet(20, 4, 3, gamma=0.8, seed=0), _random_logits, TABULAR_ESTIMATORS, "dial",
                 DIAL, (1, 4, 16)),
        # Past about 0.15 a random perturbation of the double integrator makes this gain unstable *on the model*
        # (J_hat = -inf), where FMG and MVG are undefined: the dial stops before that.
        Scenario("lqr", "Double integrator, gamma 0.8, policy std 0.3, gain = half the optimal; (A, B) off by "
                 "relative error eps.", lambda: envs.double_integrator(gamma=0.8), _half_optimal_gain,
                 LQR_ESTIMATORS, "dial", (0.0, 0.02, 0.05, 0.1), (1, 4, 16)),
        Scenario("lqr-learned", "Double integrator, gamma 0.8; (A, B) by least squares from n transitions.",
                 lambda: envs.double_integrator(gamma=0.8), _half_optimal_gain, LQR_ESTIMATORS, "learned",
                 (5, 10, 30, 100, 1000), (1, 4, 16)),
    )
}
DEFAULT_SCENARIO = "gridworld"


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, SCENARIOS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown lab scenario {name!r}; choose one of {', '.join(SCENARIOS)}.{hint}") from None
