"""The exact-gradient lab: oracles, sampled estimators, and their measured quality."""

from mbpg.lab.exact import UnstableGainWarning, exact_gradient, exact_return, optimal_return
from mbpg.lab.quality import QualityRow, estimator_quality, make_model, summarise_draws
from mbpg.lab.sampling import sample_gradients
from mbpg.lab.scenarios import SCENARIOS, get_scenario

__all__ = [
    "exact_return", "exact_gradient", "optimal_return", "UnstableGainWarning", "sample_gradients", "estimator_quality",
    "QualityRow", "make_model", "summarise_draws", "SCENARIOS", "get_scenario",
]
