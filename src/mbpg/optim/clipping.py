"""PPO's clipped surrogate (Schulman et al. 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ppo_clip_loss(log_prob_new, log_prob_old, advantages, clip: float = 0.2):
    """-mean(min(r A, clip(r, 1 - clip, 1 + clip) A)) with r = exp(log_prob_new - log_prob_old).

    The minimum makes the objective a pessimistic bound: once a sample's ratio has moved past 1 +- clip in the
    direction its advantage favours, its gradient is exactly zero, so several epochs on one batch cannot push
    the policy arbitrarily far from the one that collected it. Moves that make things worse stay unclipped.

    `log_prob_old` and `advantages` are data: gradients are stopped through them. Advantage normalisation is
    the caller's choice. Returns (loss, info) with info["clip_fraction"] = mean(|r - 1| > clip) (the usual
    diagnostic) and info["approx_kl"] = mean((r - 1) - log r), the non-negative, unbiased estimator of
    KL(pi_old || pi_new) on samples from pi_old (Schulman's "k3").
    """
    if isinstance(clip, (int, float)) and not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}; PPO uses 0.2.")
    log_prob_new = jnp.asarray(log_prob_new)
    log_prob_old = jax.lax.stop_gradient(jnp.asarray(log_prob_old))
    advantages = jax.lax.stop_gradient(jnp.asarray(advantages))
    if not log_prob_new.shape == log_prob_old.shape == advantages.shape:
        raise ValueError(
            f"ppo_clip_loss: shapes differ (new {log_prob_new.shape}, old {log_prob_old.shape}, advantages "
            f"{advantages.shape}); pass one entry per sample for all three."
        )
    log_ratio = log_prob_new - log_prob_old
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    ratio_data = jax.lax.stop_gradient(ratio)
    info = {
        "clip_fraction": jnp.mean((jnp.abs(ratio_data - 1.0) > clip).astype(ratio.dtype)),
        "approx_kl": jnp.mean((ratio_data - 1.0) - jax.lax.stop_gradient(log_ratio)),
    }
    return loss, info
