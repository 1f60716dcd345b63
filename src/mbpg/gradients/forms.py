"""The two estimator forms of the policy gradient theorem.

score:    grad J = E_{(s,a)~d}[ grad log pi(a|s) Q(s,a) ]
pathwise: grad J = E_{s~d}[ grad_theta Q(s, a_theta(s, noise)) ], here by backpropagating through a model along
          real trajectories whose noise has been inferred (SVG).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpg.gradients.trajectories import Trajectory
from mbpg.values import evaluate_lqr


def score_function_gradient(policy, params, trajectories: Trajectory, weights, signal):
    """1/N sum_i sum_t weights[t] signal[i, t] grad log pi(a_it | s_it), as the gradient of one surrogate.

    One backward pass over the surrogate costs O(N H) memory, unlike materialising a score per step.
    """
    shape = trajectories.rewards.shape
    if jnp.shape(signal) != shape or jnp.shape(weights) not in ((shape[1],), shape):
        # A signal [N] with N == H broadcast along time and gave a wrong gradient without a word.
        raise ValueError(f"score_function_gradient needs signal of shape {shape} (trajectories x steps) and weights "
                         f"of shape ({shape[1]},) or {shape}; got {jnp.shape(signal)} and {jnp.shape(weights)}.")
    signal = jax.lax.stop_gradient(weights * signal)
    n = shape[0]

    def surrogate(params):
        log_probs = jax.vmap(jax.vmap(lambda s, a: policy.log_prob(params, s, a)))(
            trajectories.states, trajectories.actions
        )
        return jnp.sum(signal * log_probs) / n

    return jax.grad(surrogate)(params)


def model_noise(model, trajectories: Trajectory) -> jax.Array:
    """The model noise that makes p_hat reproduce each real transition: w_t = s_{t+1} - A_hat s_t - B_hat a_t."""
    predicted = jnp.einsum("ij,nhj->nhi", model.A, trajectories.states) + jnp.einsum(
        "ij,nhj->nhi", model.B, trajectories.actions
    )
    return trajectories.next_states - predicted


def value_gradient(model, policy, gain, trajectories: Trajectory, bootstrap: bool = True):
    """SVG(inf) on a linear model: re-simulate each real trajectory through p_hat with inferred noise and
    differentiate its return with respect to the gain.

    At the current gain the re-simulated path equals the real one exactly; the gradient then says how the real
    return would change through the model's dynamics. With `bootstrap`, the tail beyond the horizon is the
    model's value V_hat(s_H), so the only truncation is the model's own; where the gain is unstable on the model
    that value is -inf and the gradient NaN (the value matrix of an unstable evaluation is finite nonsense).
    """
    policy_noise = jax.vmap(jax.vmap(lambda s, a: policy.infer_noise(gain, s, a)))(
        trajectories.states, trajectories.actions
    )
    dynamics_noise = model_noise(model, trajectories)

    def episode_return(gain, start, policy_noise, dynamics_noise):
        def step(carry, noises):
            state, total, discount = carry
            e, w = noises
            action = policy.reparameterised(gain, state, e)
            total = total + discount * model.reward(state, action)
            next_state = model.A @ state + model.B @ action + w
            return (next_state, total, discount * model.gamma), None

        carry0 = (start, jnp.zeros((), start.dtype), jnp.ones((), start.dtype))
        (final_state, total, discount), _ = jax.lax.scan(step, carry0, (policy_noise, dynamics_noise))
        if bootstrap:
            evaluation = evaluate_lqr(model, gain)
            total = total - discount * (final_state @ evaluation.value_matrix @ final_state + evaluation.value_offset)
        return total

    def mean_return(gain):
        returns = jax.vmap(lambda s, e, w: episode_return(gain, s, e, w))(
            trajectories.states[:, 0], policy_noise, dynamics_noise
        )
        return returns.mean()

    gradient = jax.grad(mean_return)(gain)
    return jnp.where(evaluate_lqr(model, gain).stable, gradient, jnp.nan) if bootstrap else gradient
