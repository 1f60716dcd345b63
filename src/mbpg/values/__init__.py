"""Sources of value: Monte-Carlo returns, exact policy evaluation, and critics trained by TD."""

from mbpg.values.exact import (
    LQREvaluation,
    TabularEvaluation,
    evaluate_lqr,
    evaluate_tabular,
    exact_action_value_fn,
    lqr_action_value,
)
from mbpg.values.returns import discount_weights, discounted_return, effective_horizon, reward_to_go
from mbpg.values.td import default_td_iterations, td_critic_on_model

__all__ = [
    "TabularEvaluation", "LQREvaluation", "evaluate_tabular", "evaluate_lqr", "lqr_action_value",
    "exact_action_value_fn", "effective_horizon", "discount_weights", "discounted_return", "reward_to_go", "default_td_iterations",
    "td_critic_on_model",
]

from mbpg.values.advantages import gae
from mbpg.values.critics import TwinQNetwork, ValueNetwork, soft_update

__all__ += ["gae", "ValueNetwork", "TwinQNetwork", "soft_update"]
