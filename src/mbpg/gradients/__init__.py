"""The policy gradient as (source of d) x (source of Q) x (form); see `ESTIMATORS` for the named cells."""

from mbpg.gradients.estimators import (
    ESTIMATORS,
    Baseline,
    Estimator,
    EstimatorOptions,
    check_estimator_inputs,
    draw_gradient,
    get_estimator,
)
from mbpg.gradients.forms import model_noise, score_function_gradient, value_gradient
from mbpg.gradients.trajectories import Trajectory, rollout_return, sample_trajectories, sample_trajectory

__all__ = [
    "ESTIMATORS", "Baseline", "Estimator", "EstimatorOptions", "check_estimator_inputs", "draw_gradient", "get_estimator",
    "score_function_gradient", "value_gradient", "model_noise", "Trajectory", "sample_trajectory",
    "sample_trajectories", "rollout_return",
]
