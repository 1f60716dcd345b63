"""Learned dynamics p_hat. Each model is an environment of the same kind as the real one."""

from mbpg.models.linear import (
    fit_linear_model,
    learned_linear_model,
    perturbed_lqr,
    relative_dynamics_error,
    sample_linear_transitions,
)
from mbpg.models.tabular import fit_tabular_model, learned_model, mixture_model, sample_transitions, total_variation

__all__ = [
    "fit_tabular_model", "learned_model", "mixture_model", "sample_transitions", "total_variation",
    "fit_linear_model", "learned_linear_model", "perturbed_lqr", "relative_dynamics_error",
    "sample_linear_transitions",
]

from mbpg.models.ensemble import (
    MBPO_WEIGHT_DECAY,
    EnsembleConfig,
    FitReport,
    GaussianEnsemble,
    ModelDivergenceError,
    ModelEnv,
    init_ensemble,
)
from mbpg.models.ensemble import fit as fit_ensemble
from mbpg.models.ensemble import predict as predict_ensemble
from mbpg.models.ensemble import predict_all as predict_ensemble_all

__all__ += [
    "EnsembleConfig", "GaussianEnsemble", "FitReport", "ModelDivergenceError", "ModelEnv", "MBPO_WEIGHT_DECAY",
    "init_ensemble", "fit_ensemble", "predict_ensemble", "predict_ensemble_all",
]
