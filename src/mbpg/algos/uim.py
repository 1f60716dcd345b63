"""UIM: policy search with an inaccurate model, grounded by real trials (Abbeel, Quigley & Ng, ICML 2006).

Gradient type **MVG**: the states come from a real trajectory, the value (and its gradient) from the model.

One iteration:
  1. Run the policy once on the real system: s_0, a_0, s_1, ..., s_H.
  2. Correct the approximate model f_hat with a time-indexed bias so that it reproduces that trajectory exactly,
         f_t(s, a) = f_hat(s, a) + b_t,   b_t = s_{t+1} - f_hat(s_t, a_t).
     The corrected model agrees with reality *along the trajectory*, so its return at the current parameters is
     the real return, and only the model's derivatives (how states respond to a change of policy) are borrowed
     from f_hat. That is why a crude model suffices: its derivatives, not its predictions, have to be roughly
     right.
  3. Find an improvement direction d in the corrected model by autodiff through it along the real trajectory
     (the policy's exploration noise e_t behind the real actions, recorded when the trial ran, is replayed; with a
     Gaussian policy it equals what SVG infers from the actions): either its
     gradient, or (default) damped Newton steps that maximise the corrected model's return inside a trust region
     (one trajectory excites some directions of theta only weakly; see `_newton_direction`).
  4. Line search on the real system: try theta + alpha d with alpha = 1, shrink, shrink^2, ...; accept the first
     trial whose real return beats the current one (and whose costs do not grow at the end of the episode: a
     truncated return hides a slowly destabilising policy, see `costs_diverge`). Every trial is a real episode
     and is counted; an accepted trial's episode becomes the next iteration's trajectory, so acceptance costs no
     extra episode. When `max_shrinks` trials in a row fail, or the model's direction vanishes, UIM stops: no
     trial is wasted.

The paper's analysis assumes deterministic real dynamics. A simulated LQR has noise (start state, process noise,
exploration), so by default every real trial replays the same random numbers (`common_random_numbers`, the
PEGASUS device): a real trial is then a deterministic function of the policy, and "the real return improved"
means what it says rather than "this episode was luckier". With `common_random_numbers=False` each trial draws
fresh noise, which is honest for a physical system but makes the acceptance test compare noisy returns.

What one trial cannot tell: a trial starts from one state, so UIM optimises the return *of that trial*. When the
target is an expectation over start states (LQR's J), a step can raise the trial's return and still lower J; the
benchmark measures how often that happens. The trust region limits it, nothing in UIM removes it.

The initial parameters are the caller's; the paper starts from the policy that is optimal in the approximate
model (`certainty_equivalent_gain` for LQR), which is also the baseline a reader compares UIM with.

"Off by 30%": benchmarks/bench_uim.py measures four definitions of a 30%-wrong LQR model, each over 20 draws:
  * random:     ||A_hat - A||_F = 0.3 ||A||_F and ||B_hat - B||_F = 0.3 ||B||_F, each error in a uniformly random
                direction (`mbpg.models.perturbed_lqr(env, 0.3, key)`).
  * increment:  ||A_hat - A||_F = 0.3 ||A - I||_F and ||B_hat - B||_F = 0.3 ||B||_F, random directions: the
                model's predicted state *change* x' - x is off by 30%. For a discretised physical system
                (A = I + dt A_c) this is the natural scale; 'random' is then a several-fold error on A - I.
  * entrywise:  every entry of A - I and of B times 1 + 0.3 or 1 - 0.3, the sign random per entry: each
                coefficient off by exactly 30%.
  * structured: B_hat = 0.7 B (actuators 30% weaker than modelled) and A's off-diagonal entries times 1.3.
UIM needs the model's *derivatives* to be roughly right (the paper's condition): where a draw makes the corrected
model's gradient point away from the real one, no line search can help, and the benchmark counts it as a failure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs import LQR
from mbpg.gradients.trajectories import Trajectory
from mbpg.policies import policy_for
from mbpg.values import discounted_return, effective_horizon


@dataclasses.dataclass(frozen=True)
class UIMConfig:
    """Settings of one UIM run. Hashable: each distinct setting compiles once."""

    max_episodes: int = 10
    """Budget of real episodes, the first (at the initial parameters) and every line-search trial included."""
    horizon: int | None = None
    """Length of a real episode (default: the smallest H with gamma^H <= 1e-3)."""
    direction: Literal["newton", "gradient"] = "newton"
    """newton: maximise the corrected model's return by eigenvalue-clipped Newton steps, d = argmax - theta.
    gradient: d = the corrected model's gradient, scaled to length `gradient_step` * max(1, ||theta||)."""
    newton_iterations: int = 20
    """Newton steps inside the corrected model (cheap: no real episode)."""
    curvature_floor: float = 1e-2
    """newton: the corrected Hessian's eigenvalues are clipped to >= this fraction of the largest one."""
    trust_radius: float = 0.5
    """newton: the proposed change of theta is at most this times max(1, ||theta||) long."""
    gradient_step: float = 0.5
    """direction='gradient': the first trial moves theta by this fraction of max(1, ||theta||)."""
    shrink: float = 0.5
    """Each rejected trial multiplies the step length alpha by this factor (in (0, 1))."""
    max_shrinks: int = 4
    """Stop after this many rejected trials in a row (the line search has failed: theta is locally best)."""
    tolerance: float = 1e-6
    """Stop when the direction is shorter than this times max(1, ||theta||)."""
    common_random_numbers: bool = True
    """Replay the same start state and noise in every real trial (the paper's deterministic-system setting)."""
    exploration: float = 0.0
    """Scale of the policy's exploration noise in real trials: 0 runs the mean policy (the paper's deterministic
    policies; the model, not exploration, supplies the gradient), 1 the environment's stochastic policy."""
    reject_diverging: bool = True
    """Reject a trial whose costs grow, window after window over the second half of the episode, faster than the
    discount shrinks them (`costs_diverge`): its return beyond the horizon is unbounded, however good the truncated
    return looks."""

    def __post_init__(self):
        for name in ("max_episodes", "newton_iterations", "max_shrinks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UIMConfig.{name} must be a positive integer; got {value!r}.")
        if self.horizon is not None and (not isinstance(self.horizon, int) or self.horizon < 1):
            raise ValueError(f"UIMConfig.horizon must be a positive integer or None; got {self.horizon!r}.")
        if self.direction not in ("newton", "gradient"):
            raise ValueError(f"UIMConfig.direction must be 'newton' or 'gradient'; got {self.direction!r}.")
        if not (0.0 < self.shrink < 1.0):
            raise ValueError(f"UIMConfig.shrink must lie in (0, 1) so that rejected steps get shorter; "
                             f"got {self.shrink}.")
        if not (math.isfinite(self.exploration) and self.exploration >= 0):
            raise ValueError(f"UIMConfig.exploration must be finite and >= 0; got {self.exploration}.")
        for name in ("gradient_step", "tolerance", "curvature_floor", "trust_radius"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"UIMConfig.{name} must be finite and > 0; got {value}.")


class Episode(NamedTuple):
    """One real episode: the parameters it ran, its discounted real return, and what UIM did with it."""

    index: int
    params: np.ndarray
    real_return: float
    accepted: bool
    step_length: float
    diverging: bool = False
    """Its costs grew at the end of the episode (`costs_diverge`): never accepted, whatever its return."""


class UIMResult(NamedTuple):
    params: np.ndarray
    """The last accepted parameters (never worse on the real trials than any earlier accepted ones)."""
    episodes: list[Episode]
    """Every real episode in order; len(episodes) is the honest count of real episodes used."""
    stop_reason: str


# --- the corrected model ------------------------------------------------------------------------------------

def linear_dynamics(model: LQR, state: jax.Array, action: jax.Array) -> jax.Array:
    """f_hat(s, a) = A_hat s + B_hat a: the mean prediction of a linear model."""
    return model.A @ state + model.B @ action


def time_indexed_correction(dynamics: Callable, model, trajectory: Trajectory) -> jax.Array:
    """b_t = s_{t+1} - f_hat(s_t, a_t) for every step of a real trajectory ([H, n], or [..., H, n] batched)."""
    predicted = jnp.vectorize(lambda s, a: dynamics(model, s, a), signature="(n),(m)->(n)")(
        trajectory.states, trajectory.actions)
    return trajectory.next_states - predicted


def corrected_rollout(dynamics: Callable, model, reward_fn: Callable, policy, params, trajectory: Trajectory,
                      noises: jax.Array, gamma: float):
    """Re-simulate a real trajectory through the corrected model f_t = f_hat + b_t under `params`.

    `noises` [H, m] are the policy's exploration noises e_t behind the real actions (a_t = reparameterised(theta,
    s_t, e_t)); they are replayed, as SVG does. Returns the discounted return and the re-simulated states; under
    the parameters that produced the trajectory both equal the real ones exactly.
    """
    biases = time_indexed_correction(dynamics, model, trajectory)

    def step(carry, inputs):
        state, total, discount = carry
        noise, bias = inputs
        action = policy.reparameterised(params, state, noise)
        total = total + discount * reward_fn(state, action)
        next_state = dynamics(model, state, action) + bias
        return (next_state, total, discount * gamma), state

    start = trajectory.states[0]
    carry0 = (start, jnp.zeros((), start.dtype), jnp.ones((), start.dtype))
    (_, total, _), states = jax.lax.scan(step, carry0, (noises, biases))
    return total, states


def corrected_return(dynamics, model, reward_fn, policy, params, trajectory, noises, gamma):
    """The corrected model's discounted return under `params`: the objective UIM differentiates."""
    return corrected_rollout(dynamics, model, reward_fn, policy, params, trajectory, noises, gamma)[0]


def corrected_gradient(dynamics, model, reward_fn, policy, params, trajectory, noises, gamma):
    """The UIM policy gradient: d/d theta of the corrected model's return, along the real trajectory."""
    return jax.grad(lambda p: corrected_return(dynamics, model, reward_fn, policy, p, trajectory, noises, gamma))(
        params)


def real_episode(env, policy, params, key: jax.Array, horizon: int, exploration: float = 1.0):
    """One real episode with a_t = reparameterised(params, s_t, exploration * e_t), e_t ~ N(0, I).

    Returns the trajectory and the noises actually applied (exploration * e_t), which the corrected model replays.
    With exploration = 0 the policy acts deterministically, as in the paper.
    """
    key_reset, key_steps = jax.random.split(key)
    action_dim = env.action_dim

    def step(state, key):
        key_action, key_env = jax.random.split(key)
        noise = exploration * jax.random.normal(key_action, (action_dim,), state.dtype)
        action = policy.reparameterised(params, state, noise)
        next_state, reward = env.step(state, action, key_env)
        return next_state, (Trajectory(state, action, reward, next_state), noise)

    _, (trajectory, noises) = jax.lax.scan(step, env.reset(key_reset), jax.random.split(key_steps, horizon))
    return trajectory, noises


def costs_diverge(rewards, gamma: float) -> bool:
    """Whether an episode's costs (negative rewards) grow, over its second half, faster than gamma^t discounts them.

    A truncated return cannot see a policy that destabilises the system slowly: on an LQR, a gain with
    sqrt(gamma) * rho(A + B K) slightly above 1 can start from a state that barely excites the unstable mode, and
    its first 66 discounted steps then cost less than a stable gain's although its true return is -inf. The second
    half of the episode is cut into four windows of w steps; such a policy's window costs grow by at least gamma^-w
    from each window to the next. A stable policy's costs decay or settle at a noise level, where one ratio of two
    noisy windows can still exceed gamma^-w by chance but three in a row rarely do: on a noisy AR(1) cost
    (gamma 0.9, 66 steps, stable rho from 0.9 to 1.03) comparing only the last two quarters flagged 2.6-11% of
    episodes, three consecutive ratios 0.0-1.5%, while still flagging 92-100% of those with rho >= 1.08 (and 52% at
    rho = 1.06, where gamma rho^2 = 1.01 barely diverges). Short episodes with gamma near 1 stay hard (20 steps at
    gamma 0.99: 5-12% of stable episodes flagged). Positive rewards are not checked: growing ones are good.
    """
    costs = np.maximum(-np.asarray(rewards, np.float64), 0.0)
    pieces = 4
    window = len(costs) // (2 * pieces)
    if window < 1:
        return False
    sums = costs[len(costs) - pieces * window:].reshape(pieces, window).sum(1)
    return bool(sums[-1] > 0 and np.all(sums[1:] >= sums[:-1] * gamma ** -window))


# --- the trainer --------------------------------------------------------------------------------------------

def certainty_equivalent_gain(model: LQR) -> np.ndarray:
    """The policy a model-based method without real trials would deploy: the gain optimal in the model."""
    return model.optimal_gain()


def check_model(env, model, dynamics: Callable) -> None:
    """Fail early, naming the problem, when the model cannot stand in for the environment."""
    if isinstance(env, LQR) and isinstance(model, LQR):
        if (model.state_dim, model.action_dim) != (env.state_dim, env.action_dim):
            raise ValueError(
                f"the model has state_dim {model.state_dim} and action_dim {model.action_dim} but the environment "
                f"has {env.state_dim} and {env.action_dim}; build the model from this environment, e.g. "
                "mbpg.models.perturbed_lqr(env, eps, key).")
    state = jax.ShapeDtypeStruct((env.state_dim,), jnp.float32)
    action = jax.ShapeDtypeStruct((env.action_dim,), jnp.float32)
    try:
        predicted = jax.eval_shape(lambda s, a: dynamics(model, s, a), state, action)
    except (TypeError, ValueError) as error:
        raise ValueError(f"dynamics(model, state[{env.state_dim}], action[{env.action_dim}]) fails: {error}. "
                         "The model must take the environment's state and action shapes.") from None
    if predicted.shape != (env.state_dim,):
        raise ValueError(f"dynamics(model, state, action) must predict a next state of shape ({env.state_dim},) "
                         f"like the environment; got {predicted.shape}.")


def _newton_direction(objective_grad_hess, params, config: UIMConfig) -> np.ndarray:
    """Ascend the corrected model's return from `params` by damped Newton steps; return the displacement.

    One real trajectory excites some directions of theta only weakly, so the corrected return is nearly flat
    there and a pure Newton step would move far along them on no evidence. Two guards: the Hessian's eigenvalues
    are clipped to at least `curvature_floor` times the largest (a step never trusts a direction more than that
    ratio), and the total displacement stays within `trust_radius` * max(1, ||theta||). A backtracking test in the
    model (free: no real episode) keeps every inner step improving the corrected return.
    """
    shape = params.shape
    origin = np.asarray(params, np.float64).reshape(-1)
    radius = config.trust_radius * max(1.0, np.linalg.norm(origin))
    theta = origin.copy()
    value, gradient, hessian = objective_grad_hess(theta.reshape(shape))
    for _ in range(config.newton_iterations):
        curvature, vectors = np.linalg.eigh(-0.5 * (hessian + hessian.T))
        floor = config.curvature_floor * max(np.abs(curvature).max(), 1e-300)
        step = vectors @ ((vectors.T @ gradient) / np.maximum(curvature, floor))
        for _ in range(30):
            candidate = theta + step
            displacement = np.linalg.norm(candidate - origin)
            if displacement > radius:
                candidate = origin + (candidate - origin) * (radius / displacement)
            new_value, new_gradient, new_hessian = objective_grad_hess(candidate.reshape(shape))
            if np.isfinite(new_value) and new_value >= value:
                break
            step = 0.5 * step
        else:
            break
        moved = np.linalg.norm(candidate - theta)
        theta, value, gradient, hessian = candidate, new_value, new_gradient, new_hessian
        if moved <= config.tolerance * max(1.0, np.linalg.norm(theta)):
            break
    return (theta - origin).reshape(shape)


@eqx.filter_jit
def _run_episode(env, policy, params, key, horizon: int, exploration: float):
    trajectory, noises = real_episode(env, policy, params, key, horizon, exploration)
    return trajectory, noises, discounted_return(trajectory.rewards, env.gamma)


@eqx.filter_jit
def _model_pieces(dynamics, model, env, reward_fn, policy, params, trajectory, noises):
    """Value, gradient and Hessian of the corrected return: one compiled program per (shapes, dynamics, policy),
    reused across models and environments of the same shapes."""
    reward = reward_fn or env.reward

    def objective(p):
        return corrected_return(dynamics, model, reward, policy, p, trajectory, noises, env.gamma)

    value, gradient = jax.value_and_grad(objective)(params)
    return value, gradient, jax.hessian(objective)(params)


def train(env, model, params, key: jax.Array, config: UIMConfig = UIMConfig(), *, dynamics: Callable = linear_dynamics,
          policy=None, reward_fn: Callable | None = None,
          progress_fn: Callable[[Episode], None] | None = None) -> UIMResult:
    """Run UIM on the real `env` with the approximate `model` from `params`, within `config.max_episodes`.

    env: a functional environment (reset(key), step(state, action, key), gamma, state_dim, action_dim).
    model, dynamics: the approximate model as a pytree and f_hat(model, state, action) -> next state
        (default: a linear model given as an LQR).
    reward_fn: r(state, action), differentiable (default: env.reward); the model uses the known reward.
    """
    check_model(env, model, dynamics)
    policy = policy or policy_for(env)
    horizon = config.horizon or effective_horizon(env.gamma)
    params = np.asarray(params, np.float64)
    expected = (env.action_dim, env.state_dim)
    if isinstance(env, LQR) and params.shape != expected:
        raise ValueError(f"params must be the gain K {expected} (action_dim x state_dim); got {params.shape}.")
    if not np.isfinite(params).all():
        raise ValueError("params contain NaN or inf; start from a finite policy, e.g. certainty_equivalent_gain.")

    episodes: list[Episode] = []

    def trial(p, accepted_if_better, step_length, best):
        episode_key = key if config.common_random_numbers else jax.random.fold_in(key, len(episodes))
        *trajectory, value = _run_episode(env, policy, jnp.asarray(p, jnp.result_type(float)), episode_key, horizon,
                                          config.exploration)
        value = float(value)
        diverging = config.reject_diverging and costs_diverge(trajectory[0].rewards, env.gamma)
        accepted = accepted_if_better and bool(np.isfinite(value)) and value > best and not diverging
        episode = Episode(len(episodes) + 1, np.array(p), value, accepted, step_length, diverging)
        episodes.append(episode)
        if progress_fn:
            progress_fn(episode)
        return trajectory, value, accepted

    trajectory, current, _ = trial(params, False, 0.0, -np.inf)
    if not np.isfinite(current):
        raise ValueError("the initial policy's real episode has a non-finite return (it diverges); start from a "
                         "stabilising policy.")
    stop_reason = "episode budget spent"
    while len(episodes) < config.max_episodes:
        def pieces(p):
            value, gradient, hessian = _model_pieces(dynamics, model, env, reward_fn, policy,
                                                     jnp.asarray(p, trajectory[1].dtype), *trajectory)
            return (float(value), np.asarray(gradient, np.float64).reshape(-1),
                    np.asarray(hessian, np.float64).reshape(params.size, params.size))

        if config.direction == "newton":
            direction = _newton_direction(pieces, params, config)
        else:
            gradient = pieces(params)[1].reshape(params.shape)
            norm = np.linalg.norm(gradient)
            direction = gradient * (config.gradient_step * max(1.0, np.linalg.norm(params)) / max(norm, 1e-300))
        if not np.isfinite(direction).all() or \
                np.linalg.norm(direction) <= config.tolerance * max(1.0, np.linalg.norm(params)):
            stop_reason = "the corrected model proposes no change (converged)"
            break
        alpha = 1.0
        for _ in range(config.max_shrinks):
            if len(episodes) >= config.max_episodes:
                break
            candidate_trajectory, value, accepted = trial(params + alpha * direction, True, alpha, current)
            if accepted:
                params, current, trajectory = params + alpha * direction, value, candidate_trajectory
                break
            alpha *= config.shrink
        else:  # all max_shrinks trials ran and failed (even if they also used up the budget): stop UIM
            stop_reason = f"line search failed {config.max_shrinks} times in a row (no real improvement found)"
            break
    return UIMResult(params, episodes, stop_reason)
