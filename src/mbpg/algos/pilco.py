"""PILCO (Deisenroth & Rasmussen, ICML 2011): a fully model-based policy gradient (FMG) through a GP's belief.

Where it sits in the table of DESIGN.md: d and Q both come from the learned model, and the gradient is the
pathwise one, taken analytically. PILCO does not sample: it pushes a Gaussian *belief* over the state through
the policy and the GP dynamics by exact moment matching, sums the expected saturating cost of each predicted
belief, and differentiates that number with respect to the policy parameters (here by autodiff through the
H-step propagation, where the paper wrote the derivatives by hand). Because the GP's uncertainty enters every
step, a policy that relies on the model where it has no data is predicted to be expensive: that is what makes
PILCO data-efficient.

One step of the propagation, x_t ~ N(m, S) -> x_{t+1} ~ N(m', S'):
    1. augment with (sin, cos) of each angle (exact moments; the joint is then called Gaussian),
    2. u = u_max sin(pi~(x)) for an RBF network or linear map pi~ (exact moments of pi~ and of the squash),
    3. delta ~ GP([non-angle dims, sin, cos, u]) by moment matching (mean, covariance, input-output covariance),
    4. m' = m + mu_delta, S' = S + S_delta + cov[x, delta] + cov[x, delta]^T.
Cross-covariances are carried as C = Sigma_in^{-1} cov[in, out] for every map, so that cov[y, out] =
cov[y, in] C for anything y that is jointly Gaussian with the map's input (PILCO's convention).

Loop: one episode with uniformly random actions, then `n_iterations` times {fit the GPs to all transitions,
optimise the policy with L-BFGS on the predicted total cost, run one real episode with it}.

Units on CartPoleSwingUp-v0: the policy outputs the env's action in [-1, 1] (u_max = 1, i.e. PILCO's 10 N since
the env scales by force_mag = 10 N), and the cost 1 - exp(-d^2 / (2 * 0.25^2)) of the tip distance d is exactly
one minus the env's reward, so the real cost of an episode is read off its rewards.

Not a `train/loop.py` agent: the loop alternates host-side L-BFGS (scipy) with jitted propagation, GP refits whose
data grow every episode, and real episodes; it does not fit into fixed-size jitted chunks. `train_pilco(config,
key)` is the function-style trainer; `pilco_start` / `pilco_iteration` are its steps over a `PilcoState`, which
`mbpg train pilco` (`mbpg.train.pilco`) checkpoints after every episode.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from mbpg.keys import side_key
from mbpg.models.gp import GP, fit_gp, moment_match, require_x64, se_expansion_moments, se_kernel

# ----------------------------------------------------------------------------------------------------------------
# Exact moments of sin/cos of Gaussian variables.


def trig_moments(mean: jax.Array, cov: jax.Array):
    """Moments of [sin z, cos z] for z ~ N(mean, cov) (k entries each), exactly.

    Uses E[cos a] = exp(-var a / 2) cos(E a) and E[sin a] = exp(-var a / 2) sin(E a) for the Gaussian scalars
    a = z_i +- z_j, and the product-to-sum identities. The input-output covariance comes from Stein's lemma,
    cov[z, g(z)] = cov E[grad g], so cov^{-1} cov[z, (sin z, cos z)] = [diag(E cos z), -diag(E sin z)].
    Returns the mean [2k], the covariance [2k, 2k] and C [k, 2k].
    """
    v = jnp.diag(cov)
    plus_var = v[:, None] + v[None, :] + 2 * cov
    minus_var = v[:, None] + v[None, :] - 2 * cov
    plus_mean = mean[:, None] + mean[None, :]
    minus_mean = mean[:, None] - mean[None, :]
    cos_plus = jnp.exp(-0.5 * plus_var) * jnp.cos(plus_mean)
    cos_minus = jnp.exp(-0.5 * minus_var) * jnp.cos(minus_mean)
    sin_plus = jnp.exp(-0.5 * plus_var) * jnp.sin(plus_mean)
    sin_minus = jnp.exp(-0.5 * minus_var) * jnp.sin(minus_mean)
    e_sin = jnp.exp(-0.5 * v) * jnp.sin(mean)
    e_cos = jnp.exp(-0.5 * v) * jnp.cos(mean)
    ss = 0.5 * (cos_minus - cos_plus) - jnp.outer(e_sin, e_sin)
    cc = 0.5 * (cos_minus + cos_plus) - jnp.outer(e_cos, e_cos)
    sc = 0.5 * (sin_plus + sin_minus) - jnp.outer(e_sin, e_cos)   # cov[sin z_i, cos z_j]
    out_mean = jnp.concatenate([e_sin, e_cos])
    out_cov = jnp.block([[ss, sc], [sc.T, cc]])
    c = jnp.concatenate([jnp.diag(e_cos), -jnp.diag(e_sin)], axis=1)
    return out_mean, 0.5 * (out_cov + out_cov.T), c


def squash_sin(mean: jax.Array, cov: jax.Array, u_max: float):
    """Moments of u = u_max sin(z), z ~ N(mean, cov): mean [k], covariance [k, k], C = cov^{-1} cov[z, u] [k, k]."""
    k = mean.shape[0]
    m, s, c = trig_moments(mean, cov)
    return u_max * m[:k], u_max**2 * s[:k, :k], u_max * c[:, :k]


def append_output(mean, cov, in_idx, out_mean, out_cov, c):
    """Joint belief of [y, g(y[in_idx])] from the belief of y and g's moments (C = Sigma_in^{-1} cov[in, out])."""
    cross = cov[:, in_idx] @ c
    new_mean = jnp.concatenate([mean, out_mean])
    new_cov = jnp.block([[cov, cross], [cross.T, out_cov]])
    return new_mean, 0.5 * (new_cov + new_cov.T)


def augment_trig(mean, cov, angle_dims: tuple[int, ...]):
    """Belief of [x, sin x[angle_dims], cos x[angle_dims]] from the belief of x (Gaussian approximation)."""
    idx = jnp.asarray(angle_dims)
    m, s, c = trig_moments(mean[idx], cov[jnp.ix_(idx, idx)])
    return append_output(mean, cov, idx, m, s, c)


def augment_trig_point(x, angle_dims: tuple[int, ...]):
    """The deterministic counterpart of `augment_trig` for states x [..., D]."""
    idx = list(angle_dims)
    return jnp.concatenate([x, jnp.sin(x[..., idx]), jnp.cos(x[..., idx])], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Saturating cost.


def saturating_cost_moments(mean, cov, target, weight):
    """Mean and variance of c(z) = 1 - exp(-1/2 (z - target)^T W (z - target)) for z ~ N(mean, cov), exactly.

    E[exp(-1/2 d^T W d)] = |I + S W|^{-1/2} exp(-1/2 delta^T W (I + S W)^{-1} delta), delta = mean - target; the
    second moment is the same expression with 2W. W is positive semi-definite (it may be rank deficient, as for
    the cart-pole's tip distance, which ignores the velocities).
    """
    eye = jnp.eye(mean.shape[0], dtype=cov.dtype)
    delta = mean - target

    def expected_exp(w):
        a = eye + cov @ w
        return jnp.exp(-0.5 * delta @ w @ jnp.linalg.solve(a, delta)) / jnp.sqrt(jnp.linalg.det(a))

    e1, e2 = expected_exp(weight), expected_exp(2 * weight)
    return 1 - e1, jnp.maximum(e2 - e1**2, 0.0)


def saturating_cost(z, target, weight):
    """c(z) at deterministic points z [..., n]."""
    d = z - target
    return 1 - jnp.exp(-0.5 * jnp.einsum("...i,ij,...j->...", d, weight, d))


# ----------------------------------------------------------------------------------------------------------------
# Policies: a deterministic pre-squash map pi~ with exact moments, squashed by u_max sin.


class RBFPolicy(eqx.Module):
    """pi~(x) = sum_i w_i exp(-1/2 (x - c_i)^T Lambda^{-1} (x - c_i)): PILCO's nonlinear controller.

    Parametrised as PILCO does (its `congp`): by a pseudo training set of inputs c_i and targets t_i, with weights
    w = (K + 0.01^2 I)^{-1} t for the unit-amplitude SE kernel matrix K of the centres. Why not the weights
    directly: centres drawn from the narrow start distribution make K nearly singular, so small targets give large
    opposing weights, i.e. a policy that starts near zero but with sizeable slopes, which is what gives the
    optimiser a gradient while the saturating cost is still flat; and L-BFGS works in the better-scaled target
    space. A sum of Gaussian bumps is a GP posterior mean in disguise, so its moments under a Gaussian input are
    the GP's closed forms (`se_expansion_moments`, without the posterior-variance term).
    """

    centers: jax.Array           # [n, D]
    targets: jax.Array           # [n, U]
    log_lengthscales: jax.Array  # [D]
    noise_std: float = eqx.field(static=True, default=0.01)

    def weights(self):
        k = se_kernel(self.centers, self.centers, self.log_lengthscales, jnp.zeros((), self.centers.dtype))
        return jnp.linalg.solve(k + self.noise_std**2 * jnp.eye(k.shape[0], dtype=k.dtype), self.targets)

    def __call__(self, x):
        sq = jnp.sum(((x[..., None, :] - self.centers) / jnp.exp(self.log_lengthscales)) ** 2, -1)
        return jnp.exp(-0.5 * sq) @ self.weights()

    def moments(self, mean, cov):
        u = self.targets.shape[1]
        log_ls = jnp.broadcast_to(self.log_lengthscales, (u, self.centers.shape[1]))
        return se_expansion_moments(self.centers, self.weights().T, log_ls, jnp.zeros(u, cov.dtype), mean, cov)


class LinearPolicy(eqx.Module):
    """pi~(x) = W x + b: moments are exact and trivial (mean W m + b, covariance W S W^T, C = W^T)."""

    weight: jax.Array  # [U, D]
    bias: jax.Array    # [U]

    def __call__(self, x):
        return x @ self.weight.T + self.bias

    def moments(self, mean, cov):
        return self.weight @ mean + self.bias, self.weight @ cov @ self.weight.T, self.weight.T


def policy_moments(policy, mean, cov, u_max: float):
    """Moments of u = u_max sin(pi~(x)) at x ~ N(mean, cov), chaining the two input-output covariances."""
    m, s, c = policy.moments(mean, cov)
    mu, su, cu = squash_sin(m, s, u_max)
    return mu, su, c @ cu


def policy_action(policy, x, u_max: float):
    return u_max * jnp.sin(policy(x))


# ----------------------------------------------------------------------------------------------------------------
# The task: which dimensions are angles, what the policy and the GP see, and the cost.


@dataclasses.dataclass(frozen=True)
class PilcoTask:
    """Index bookkeeping for one environment, on the augmented state [x (D), sin angles, cos angles, u].

    `policy_inputs` and `model_inputs` index that augmented vector (the action u is appended after the trig
    features, so model inputs may include it); `cost_dims` index [x, sin, cos] and the cost is
    1 - exp(-1/2 (z - cost_target)^T cost_weight (z - cost_target)) of z = aug[cost_dims].
    """

    state_dim: int
    action_dim: int
    angle_dims: tuple[int, ...]
    policy_inputs: tuple[int, ...]
    model_inputs: tuple[int, ...]
    cost_dims: tuple[int, ...]
    cost_target: tuple[float, ...]
    cost_weight: tuple[tuple[float, ...], ...]
    start_mean: tuple[float, ...]
    start_std: float
    u_max: float

    @property
    def aug_dim(self) -> int:
        return self.state_dim + 2 * len(self.angle_dims)


def cartpole_task(env) -> PilcoTask:
    """CartPoleSwingUp-v0: state [x, x_dot, theta, theta_dot], angle theta (0 upright).

    Augmented [x, x_dot, theta, theta_dot, sin, cos, u]; policy and GP see [x, x_dot, theta_dot, sin, cos] (+ u
    for the GP), as in PILCO. The tip distance d^2 = (x + l sin)^2 + (l cos - l)^2 is quadratic in (x, sin, cos):
    d = A (z - [0, 0, 1]) with A = [[1, l, 0], [0, 0, l]], so W = A^T A / width^2.
    """
    length, width = env.pole_length, env.reward_width
    a = np.array([[1.0, length, 0.0], [0.0, 0.0, length]])
    weight = a.T @ a / width**2
    return PilcoTask(state_dim=4, action_dim=1, angle_dims=(2,), policy_inputs=(0, 1, 3, 4, 5),
                     model_inputs=(0, 1, 3, 4, 5, 6), cost_dims=(0, 4, 5), cost_target=(0.0, 0.0, 1.0),
                     cost_weight=tuple(map(tuple, weight)), start_mean=(0.0, 0.0, math.pi, 0.0),
                     start_std=env.reset_noise, u_max=1.0)


def _cost_moments(task: PilcoTask, mean, cov):
    aug_m, aug_s = augment_trig(mean, cov, task.angle_dims)
    idx = jnp.asarray(task.cost_dims)
    return saturating_cost_moments(aug_m[idx], aug_s[jnp.ix_(idx, idx)], jnp.asarray(task.cost_target, mean.dtype),
                                   jnp.asarray(task.cost_weight, mean.dtype))


def state_cost(task: PilcoTask, states):
    """The cost of deterministic states [..., D] (for real trajectories)."""
    aug = augment_trig_point(states, task.angle_dims)
    return saturating_cost(aug[..., list(task.cost_dims)], jnp.asarray(task.cost_target, states.dtype),
                           jnp.asarray(task.cost_weight, states.dtype))


def propagate_step(task: PilcoTask, gp: GP, policy, mean, cov):
    """x_t ~ N(mean, cov) -> x_{t+1} ~ N(mean', cov') through trig augmentation, the squashed policy and the GP."""
    d = task.state_dim
    aug_m, aug_s = augment_trig(mean, cov, task.angle_dims)
    p_idx = jnp.asarray(task.policy_inputs)
    um, us, uc = policy_moments(policy, aug_m[p_idx], aug_s[jnp.ix_(p_idx, p_idx)], task.u_max)
    full_m, full_s = append_output(aug_m, aug_s, p_idx, um, us, uc)
    g_idx = jnp.asarray(task.model_inputs)
    dm, ds, dc = moment_match(gp, full_m[g_idx], full_s[jnp.ix_(g_idx, g_idx)])
    cross = (full_s[:, g_idx] @ dc)[:d]                     # cov[x_t, delta]
    new_cov = cov + ds + cross + cross.T
    return mean + dm, 0.5 * (new_cov + new_cov.T)


def predict_trajectory(task: PilcoTask, gp: GP, policy, mean0, cov0, horizon: int):
    """Beliefs x_1..x_H and the mean and variance of the cost of each: (means [H, D], covs [H, D, D],
    cost_mean [H], cost_var [H]). The step is rematerialised in the backward pass: storing every step's
    N x N kernel-integral matrices for H = 40 steps would take gigabytes."""

    @jax.checkpoint
    def body(carry, _):
        m, s = propagate_step(task, gp, policy, *carry)
        cm, cv = _cost_moments(task, m, s)
        return (m, s), (m, s, cm, cv)

    _, (ms, ss, cms, cvs) = jax.lax.scan(body, (mean0, cov0), None, length=horizon)
    return ms, ss, cms, cvs


def start_belief(task: PilcoTask, dtype=jnp.float64):
    mean = jnp.asarray(task.start_mean, dtype)
    return mean, task.start_std**2 * jnp.eye(task.state_dim, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Policy optimisation and the loop.


@dataclasses.dataclass
class PILCOConfig:
    """PILCO on CartPoleSwingUp-v0; defaults are the paper's cart-pole settings unless noted."""

    env_id: str = "CartPoleSwingUp-v0"
    """Environment (CartPoleSwingUp-v0 is the one with a task definition here)."""
    n_iterations: int = 14
    """Policy-learning episodes after the random one (14 + 1 = 15 episodes of 4 s = 60 s of interaction)."""
    horizon: int = 40
    """Planning horizon H in steps (4 s at dt 0.1); also the length of every real episode."""
    policy: str = "rbf"
    """'rbf' (PILCO's nonlinear controller) or 'linear'."""
    n_basis: int = 10
    """RBF basis functions."""
    policy_maxiter: int = 150
    """L-BFGS iterations per policy optimisation (PILCO: 150 line searches); at most twice as many evaluations."""
    gp_maxiter: int = 150
    """L-BFGS iterations per GP hyperparameter refit (warm-started from the previous fit)."""
    pad_multiple: int = 80
    """GP training sets are padded to a multiple of this many points, so the planner compiles once per bucket."""
    policy_restarts: int = 1
    """Fresh random policies (PILCO's initialisation) also optimised every episode besides the current one; the
    lowest predicted cost wins. The planned cost has local optima (policies that never swing the pole up: a
    stiff minimum where the best step gains less than the cost's rounding noise), and from the current policy
    alone 2 of 5 seeds stayed in one for 10+ episodes. 0: optimise the current policy only."""
    stop_on_success: bool = False
    """Stop the loop after the first successful episode (see `is_success`); saves time in benchmarks."""


def init_policy(task: PilcoTask, config: PILCOConfig, key):
    """PILCO's initialisation: RBF centres drawn from the start distribution, targets 0.1 N(0, 1), lengthscales 1
    (0.7 for sin/cos); a linear policy starts at small random gains."""
    if config.policy not in ("rbf", "linear"):
        raise ValueError(f"policy must be 'rbf' or 'linear'; got {config.policy!r}.")
    n_in = len(task.policy_inputs)
    mean0, cov0 = start_belief(task)
    aug_m, aug_s = augment_trig(mean0, cov0, task.angle_dims)
    idx = jnp.asarray(task.policy_inputs)
    k_c, k_w = jax.random.split(key)
    if config.policy == "rbf":
        centers = jax.random.multivariate_normal(k_c, aug_m[idx], aug_s[jnp.ix_(idx, idx)] + 1e-9 * jnp.eye(n_in),
                                                 (config.n_basis,))
        targets = 0.1 * jax.random.normal(k_w, (config.n_basis, task.action_dim), jnp.float64)
        trig = set(range(task.state_dim, task.aug_dim))
        log_ls = jnp.log(jnp.array([0.7 if i in trig else 1.0 for i in task.policy_inputs], jnp.float64))
        return RBFPolicy(centers, targets, log_ls)
    return LinearPolicy(0.1 * jax.random.normal(k_w, (task.action_dim, n_in), jnp.float64),
                        jnp.zeros(task.action_dim, jnp.float64))


def _planned_cost(params, static, task, gp, horizon):
    policy = eqx.combine(params, static)
    mean0, cov0 = start_belief(task, gp.inputs.dtype)
    _, _, cost_mean, _ = predict_trajectory(task, gp, policy, mean0, cov0, horizon)
    return jnp.sum(cost_mean)


@eqx.filter_jit
def _planned_cost_and_grad(params, static, task, gp, horizon):
    return jax.value_and_grad(_planned_cost)(params, static, task, gp, horizon)


def optimize_policy(task: PilcoTask, gp: GP, policy, horizon: int, maxiter: int):
    """Minimise the predicted total cost sum_t E[c(x_t)] over the policy parameters with L-BFGS-B.

    The gradient is autodiff through the whole H-step moment-matching propagation (compiled once per padded GP
    data size).
    Returns (policy, predicted total cost before, after).
    """
    params, static = eqx.partition(policy, eqx.is_array)
    flat0, unravel = jax.flatten_util.ravel_pytree(params)
    best = {"f": np.inf, "x": np.asarray(flat0)}

    def f(flat):
        value, grad = _planned_cost_and_grad(unravel(jnp.asarray(flat)), static, task, gp, horizon)
        value = float(value)
        grad = np.asarray(jax.flatten_util.ravel_pytree(grad)[0], np.float64)
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            return 1e10, np.zeros_like(flat)
        if value < best["f"]:
            best["f"], best["x"] = value, flat.copy()
        return value, grad

    before, _ = f(np.asarray(flat0, np.float64))
    # Tolerances off: far from the goal the saturating cost is flat (gradients ~1e-5), and scipy's default
    # gtol would stop at once; like PILCO we run a fixed budget of iterations (and at most 2 evaluations per
    # iteration on average, which bounds the work when line searches struggle).
    scipy.optimize.minimize(f, np.asarray(flat0, np.float64), jac=True, method="L-BFGS-B",
                            options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 0.0, "gtol": 0.0})
    return eqx.combine(unravel(jnp.asarray(best["x"])), static), before, best["f"]


def rollout(env, task: PilcoTask, policy, key, horizon: int, random_actions: bool = False):
    """One real episode: states [H + 1, D], actions [H, U]. Random episodes draw actions uniformly in the box."""
    k_reset, k_act = jax.random.split(key)
    x0 = env.reset(k_reset)
    act_keys = jax.random.split(k_act, horizon)

    def body(x, k):
        if random_actions:
            u = jax.random.uniform(k, (task.action_dim,), x.dtype, -task.u_max, task.u_max)
        else:
            aug = augment_trig_point(x, task.angle_dims)
            u = policy_action(policy, aug[jnp.asarray(task.policy_inputs)], task.u_max)
        nxt, _ = env.step(x, u, side_key(k, "env step"))  # k alone drew the random action
        return nxt, (nxt, u)

    _, (xs, us) = jax.lax.scan(body, x0, act_keys)
    return jnp.concatenate([x0[None], xs]), us


def transitions(task: PilcoTask, states, actions):
    """GP training pairs from one episode: inputs aug[model_inputs] of (x_t, u_t), targets x_{t+1} - x_t."""
    aug = augment_trig_point(states[:-1], task.angle_dims)
    full = jnp.concatenate([aug, actions], axis=-1)
    return full[:, list(task.model_inputs)], states[1:] - states[:-1]


def is_success(env, states, last_seconds: float = 1.0, max_tip_distance: float = 0.15) -> bool:
    """Swing-up and balance criterion used by the benchmark (our choice; the paper's exact one was not at hand):
    over the last `last_seconds` of the episode, every state has the pole tip within `max_tip_distance` m of the
    upright tip above the track's centre. With the 0.6 m pole, 0.15 m means e.g. |theta| < 14 deg with the cart
    centred, or the cart within 0.15 m with the pole exactly upright."""
    n_last = max(1, int(round(last_seconds / env.dt)))
    x, theta = states[-n_last:, 0], states[-n_last:, 2]
    l = env.pole_length
    d = np.sqrt((x + l * np.sin(theta)) ** 2 + (l * np.cos(theta) - l) ** 2)
    return bool(np.all(d < max_tip_distance))


@dataclasses.dataclass
class PilcoEpisode:
    """What one iteration measured: the real episode run with the optimised policy and what the model predicted."""

    episode: int                  # 1 = the random episode
    real_cost: np.ndarray         # [H] cost of x_1..x_H on the real system
    predicted_mean: np.ndarray    # [H] predicted E[c(x_t)] (NaN for the random episode)
    predicted_std: np.ndarray     # [H]
    states: np.ndarray            # [H + 1, D]
    success: bool
    seconds: float


class PilcoState(eqx.Module):
    """Everything the next iteration needs, as arrays, so that a run can be checkpointed after any episode and
    resumed to the same numbers: the policy, all transitions so far, the last GP fit's hyperparameters (the warm
    start of the next fit; NaN before the first fit) and the key."""

    policy: RBFPolicy | LinearPolicy
    inputs: jax.Array            # [N, model inputs]
    targets: jax.Array           # [N, D]
    log_lengthscales: jax.Array  # [D, model inputs]
    log_signal_std: jax.Array    # [D]
    log_noise_std: jax.Array     # [D]
    key: jax.Array


def _checked_env(config: PILCOConfig):
    if config.horizon < 1 or config.n_iterations < 0 or config.n_basis < 1 or config.pad_multiple < 1 or \
            config.policy_restarts < 0:
        raise ValueError("horizon, n_basis and pad_multiple must be >= 1, n_iterations and policy_restarts >= 0; "
                         f"got {config.horizon}, {config.n_basis}, {config.pad_multiple}, {config.n_iterations}, "
                         f"{config.policy_restarts}.")
    from mbpg.envs import make

    env = make(config.env_id)
    if type(env).__name__ != "CartPoleSwingUp":
        raise ValueError(f"PILCO has a task definition for CartPoleSwingUp-v0 only; got {config.env_id!r}.")
    return env


_rollout = jax.jit(rollout, static_argnums=(0, 1, 4, 5))


def pilco_start(config: PILCOConfig, key: jax.Array) -> tuple[PilcoState, PilcoEpisode]:
    """The initial policy and the random episode. Call under `jax.enable_x64(True)`."""
    require_x64("pilco_start")
    env = _checked_env(config)
    task = cartpole_task(env)
    k_policy, k_random, key = jax.random.split(key, 3)
    policy = init_policy(task, config, k_policy)
    start = time.perf_counter()
    states, actions = _rollout(env, task, policy, k_random, config.horizon, True)
    inputs, targets = transitions(task, states, actions)
    cost = np.asarray(state_cost(task, states[1:]))
    nan = np.full(config.horizon, np.nan)
    states = np.asarray(states)
    episode = PilcoEpisode(1, cost, nan, nan, states, is_success(env, states), time.perf_counter() - start)
    e, d = targets.shape[1], inputs.shape[1]
    hyper = (jnp.full((e, d), jnp.nan), jnp.full(e, jnp.nan), jnp.full(e, jnp.nan))
    return PilcoState(policy, jnp.asarray(inputs), jnp.asarray(targets), *hyper, key), episode


def pilco_iteration(config: PILCOConfig, state: PilcoState) -> tuple[PilcoState, PilcoEpisode, GP]:
    """Fit the GPs to every transition so far, optimise the policy on the predicted cost, run one real episode.
    Returns the new state, what the episode measured, and the GP it planned with. Call under x64."""
    require_x64("pilco_iteration")
    env = _checked_env(config)
    task = cartpole_task(env)
    start = time.perf_counter()
    inputs, targets = np.asarray(state.inputs), np.asarray(state.targets)
    size = config.pad_multiple * math.ceil(len(inputs) / config.pad_multiple)
    warm = state if bool(jnp.all(jnp.isfinite(state.log_signal_std))) else None
    gp = fit_gp(inputs, targets, pad_to=size, init=warm, maxiter=config.gp_maxiter)
    # The restarts' keys come from a side stream: fold_in(state.key, 1) is split(state.key)[1], the episode's key
    # below, which once drew restart 0's RBF centres from the bits of the episode's start state.
    restarts = side_key(state.key, "policy restarts")
    starts = [state.policy] + [init_policy(task, config, jax.random.fold_in(restarts, r))
                               for r in range(config.policy_restarts)]
    searches = [optimize_policy(task, gp, p, config.horizon, config.policy_maxiter) for p in starts]
    policy = min(searches, key=lambda search: search[2])[0]
    mean0, cov0 = start_belief(task)
    _, _, cm, cv = eqx.filter_jit(predict_trajectory)(task, gp, policy, mean0, cov0, config.horizon)
    key, k_ep = jax.random.split(state.key)
    states, actions = _rollout(env, task, policy, k_ep, config.horizon, False)
    new_in, new_t = transitions(task, states, actions)
    states = np.asarray(states)
    episode_index = len(inputs) // config.horizon + 1
    episode = PilcoEpisode(episode_index, np.asarray(state_cost(task, states[1:])), np.asarray(cm),
                           np.sqrt(np.asarray(cv)), states, is_success(env, states), time.perf_counter() - start)
    new_state = PilcoState(policy, jnp.concatenate([state.inputs, new_in]), jnp.concatenate([state.targets, new_t]),
                           gp.log_lengthscales, gp.log_signal_std, gp.log_noise_std, key)
    return new_state, episode, gp


def train_pilco(config: PILCOConfig, key: jax.Array, progress: Callable[[PilcoEpisode], None] | None = None):
    """Run PILCO; returns (policy, gp, list of PilcoEpisode). Same key -> same numbers."""
    _checked_env(config)
    history = []
    gp = None
    with jax.enable_x64(True):
        state, episode = pilco_start(config, key)
        history.append(episode)
        if progress:
            progress(episode)
        for _ in range(config.n_iterations):
            state, episode, gp = pilco_iteration(config, state)
            history.append(episode)
            if progress:
                progress(episode)
            if config.stop_on_success and episode.success:
                break
    return state.policy, gp, history
