"""Policies: stateless descriptors with `sample`, `log_prob` (and a reparameterised sample where one exists).

Parameters live outside the policy object so that gradients, vmaps over seeds and checkpoints all act on one
plain pytree.
"""

from mbpg.envs import LQR, TabularMDP
from mbpg.policies.linear_gaussian import LinearGaussianPolicy
from mbpg.policies.softmax import SoftmaxPolicy


def policy_for(env):
    """The policy class an environment's exact oracles are defined for."""
    if isinstance(env, TabularMDP):
        return SoftmaxPolicy()
    if isinstance(env, LQR):
        return LinearGaussianPolicy(env.policy_std)
    raise TypeError(f"no default policy class for {type(env).__name__}; pass a policy explicitly.")


__all__ = ["SoftmaxPolicy", "LinearGaussianPolicy", "policy_for"]

from mbpg.policies.mlp import MLP, CategoricalMLPPolicy, GaussianMLPPolicy, GaussianParams, TanhGaussianMLPPolicy

__all__ += ["MLP", "CategoricalMLPPolicy", "GaussianMLPPolicy", "GaussianParams", "TanhGaussianMLPPolicy"]
