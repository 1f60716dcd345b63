"""Generalised advantage estimation (Schulman et al. 2016) with Gymnasium's terminated/truncated semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards, values, next_values, terminated, done, gamma: float, lam: float):
    """GAE(gamma, lambda) advantages and the lambda-returns (advantages + values) over a time-major batch [T, ...].

    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
    A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}

    Two flags because an episode can end in two ways. A true terminal (`terminated`) has value zero, so nothing
    is bootstrapped. A time-limit cut (`truncated`, so `done` but not `terminated`) still has a future: delta
    bootstraps from `next_values`, which must then hold V of the real final observation, not of the reset state
    that an auto-resetting environment returns. In both cases the recursion stops: A_{t+1} belongs to the next
    episode. The last step of the batch is never followed by anything, so a rollout cut mid-episode bootstraps
    from its own next_values there, as it should.

    lam = 1 gives Monte-Carlo returns (bootstrapped at truncations and at the batch end), lam = 0 one-step TD.
    """
    rewards = jnp.asarray(rewards)
    dtype = rewards.dtype if jnp.issubdtype(rewards.dtype, jnp.floating) else jnp.float32
    arrays = {
        "rewards": rewards,
        "values": jnp.asarray(values),
        "next_values": jnp.asarray(next_values),
        "terminated": jnp.asarray(terminated),
        "done": jnp.asarray(done),
    }
    for name, array in arrays.items():
        if array.shape != rewards.shape:
            raise ValueError(
                f"gae: {name} has shape {array.shape} but rewards have {rewards.shape}; pass every input time-major "
                "with the same shape [T, ...] (squeeze a trailing value-head axis of size 1)."
            )
    if rewards.ndim == 0:
        raise ValueError("gae needs a time axis: pass arrays of shape [T, ...].")
    rewards, values, next_values = (arrays[k].astype(dtype) for k in ("rewards", "values", "next_values"))
    terminated = arrays["terminated"].astype(bool)
    # A terminal step ends its episode whatever `done` says (the recursion once ran on into the next episode).
    not_done = 1.0 - (arrays["done"].astype(bool) | terminated).astype(dtype)

    # where, not a product: a non-finite value of a terminal observation must not reach the sum (0 * inf = nan).
    deltas = rewards + gamma * jnp.where(terminated, 0.0, next_values) - values
    decay = gamma * lam * not_done

    def backward(next_advantage, step):
        delta, decay_t = step
        advantage = delta + decay_t * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (deltas, decay), reverse=True)
    return advantages, advantages + values
