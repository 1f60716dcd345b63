"""Named lab scenarios: an environment, the policy at which gradients are measured, and a default grid."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from mbpg import envs
from mbpg.lab.gradient_aware import two_area_gridworld


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
    model_class: object | None = None
    """Model class that gamps / gamps-ml fit inside each draw (None: full tabular)."""


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
        # GAMPS's claim: with the same misspecified class (one displacement distribution per action for the whole
        # grid) and the same trajectories, gradient-aware weights give a better gradient than plain ML. mvg-dp's
        # model is the full tabular class learned from n samples of every (s, a): the correct-class reference.
        Scenario("gridworld-two-area", "5x5 two-area gridworld (GAMPS), gamma 0.9: the upper 3 rows move the "
                 "opposite way. gamps / gamps-ml fit a shared-displacement model (misspecified) from each draw's "
                 "trajectories; mvg-dp's full tabular model is learned from n samples per (s, a).",
                 lambda: two_area_gridworld()[0], _random_logits, ("gamps", "gamps-ml", "mvg-dp", "gpomdp"),
                 "learned", (1, 10, 100), (5, 10, 20), n_estimates=100, model_class=two_area_gridworld()[1]),
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
