"""Update rules shared by several algorithms: the natural-gradient trust-region step (TRPO, ME-TRPO, SLBO) and
the clipped surrogate (PPO)."""

from mbpg.optim.clipping import ppo_clip_loss
from mbpg.optim.trust_region import conjugate_gradient, fisher_vector_product, trust_region_step

__all__ = ["conjugate_gradient", "fisher_vector_product", "trust_region_step", "ppo_clip_loss"]
