"""Gaussian-process regression with a squared-exponential ARD kernel, and exact moment matching at Gaussian inputs.

Why a GP (PILCO, Deisenroth & Rasmussen 2011): with a handful of episodes of data, a model that says *how much
it does not know* lets the planner avoid trusting it where it has seen nothing. The SE kernel has a second,
decisive property: the GP posterior mean is a sum of Gaussian bumps, so its mean, covariance and input-output
covariance under a Gaussian input have closed forms. That is what lets PILCO propagate a whole state
*distribution* through the model analytically and differentiate the result.

One independent GP per output dimension a, kernel
    k_a(x, x') = alpha_a^2 exp(-1/2 (x - x')^T Lambda_a^{-1} (x - x')),   Lambda_a = diag(ell_a^2),
observation noise sigma_a^2, posterior weights beta_a = (K_a + sigma_a^2 I)^{-1} y_a. Hyperparameters are fitted by
maximising the log marginal likelihood (the evidence), with a mild curb on extreme lengthscales and
signal-to-noise ratios (PILCO does the same: noise-free simulators otherwise drive the noise to zero and the
kernel matrix to singularity).

Moment matching at x ~ N(m, S) (Deisenroth's thesis, Sec. 2.3; all exact for the GP, the only approximation in
PILCO is to call the result Gaussian):
    mean_a      = beta_a^T q_a,
                  q_ai = alpha_a^2 |S Lambda_a^{-1} + I|^{-1/2} exp(-1/2 nu_i^T (S + Lambda_a)^{-1} nu_i),
                  nu_i = x_i - m;
    S^{-1} cov[x, f_a] = sum_i beta_ai q_ai (S + Lambda_a)^{-1} nu_i;
    E[f_a f_b]  = beta_a^T Q_ab beta_b (+ alpha_a^2 - tr((K_a + sigma_a^2 I)^{-1} Q_aa) when a = b, the expected
                  posterior variance), Q_ab,ij = k_a(x_i, m) k_b(x_j, m) |R|^{-1/2} exp(1/2 z_ij^T R^{-1} S z_ij),
                  R = S (Lambda_a^{-1} + Lambda_b^{-1}) + I, z_ij = Lambda_a^{-1} nu_i + Lambda_b^{-1} nu_j.
The predictive variance is that of the latent function (no observation noise), as in PILCO.

Fixed-size data: `fit_gp(..., pad_to=n)` pads the training set with masked rows whose weights and inverse-kernel
entries are exactly zero, so every dataset of up to n points has the same shapes and a jitted planner compiles
once per size bucket instead of once per episode.

Numerics: kernel solves need float64. Callers run fitting and prediction under `jax.enable_x64(True)`; `fit_gp`
enables it itself for the optimisation.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

# Curbs on the hyperparameters (a penalty that is ~0 inside the range and a steep wall outside it):
# lengthscales up to MAX_LENGTHSCALE_RATIO times the input's standard deviation, signal-to-noise up to MAX_SNR.
MAX_LENGTHSCALE_RATIO = 100.0
MAX_SNR = 500.0
_CURB_POWER = 30
_JITTER = 1e-8


class GP(eqx.Module):
    """E independent GPs sharing one set of N training inputs; padded rows have mask False.

    `beta` [E, N] and `k_inv` [E, N, N] (the inverse of K_a + sigma_a^2 I, zero on padded rows) are cached at
    construction by `gp_posterior`, because every prediction needs them and they depend only on the data and
    the hyperparameters.
    """

    inputs: jax.Array            # [N, D]
    targets: jax.Array           # [N, E]
    mask: jax.Array              # [N] bool
    log_lengthscales: jax.Array  # [E, D]
    log_signal_std: jax.Array    # [E]
    log_noise_std: jax.Array     # [E]
    beta: jax.Array              # [E, N]
    k_inv: jax.Array             # [E, N, N]

    @property
    def input_dim(self) -> int:
        return self.inputs.shape[1]

    @property
    def output_dim(self) -> int:
        return self.targets.shape[1]


def se_kernel(x1: jax.Array, x2: jax.Array, log_lengthscales: jax.Array, log_signal_std: jax.Array) -> jax.Array:
    """alpha^2 exp(-1/2 ||(x1_i - x2_j) / ell||^2) for x1 [N, D], x2 [M, D] -> [N, M]."""
    a = x1 / jnp.exp(log_lengthscales)
    b = x2 / jnp.exp(log_lengthscales)
    sq = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return jnp.exp(2 * log_signal_std - 0.5 * jnp.maximum(sq, 0.0))


def _masked_gram(inputs, mask, log_ls, log_sf, log_sn):
    """K + sigma^2 I on valid rows, the identity on padded rows (so they decouple and solve to zero)."""
    outer = mask[:, None] & mask[None, :]
    gram = jnp.where(outer, se_kernel(inputs, inputs, log_ls, log_sf), 0.0)
    diag = jnp.where(mask, jnp.exp(2 * log_sn) + _JITTER * jnp.exp(2 * log_sf), 1.0)
    return gram + jnp.diag(diag)


def log_marginal_likelihood(inputs, targets, mask, log_ls, log_sf, log_sn) -> jax.Array:
    """log p(y | X, hyperparameters) of one output's GP: -1/2 y^T K^-1 y - 1/2 log|K| - n/2 log 2 pi."""
    y = jnp.where(mask, targets, 0.0)
    chol = jnp.linalg.cholesky(_masked_gram(inputs, mask, log_ls, log_sf, log_sn))
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    n = jnp.sum(mask)
    return -0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n * math.log(2 * math.pi)


def _curb(log_ls, log_sf, log_sn, log_input_std):
    """PILCO-style soft walls: ~0 while ell <= 100 std(x) and alpha/sigma <= 500, steep beyond."""
    ls_term = jnp.sum(((log_ls - log_input_std) / math.log(MAX_LENGTHSCALE_RATIO)) ** _CURB_POWER)
    snr_term = ((log_sf - log_sn) / math.log(MAX_SNR)) ** _CURB_POWER
    return ls_term + snr_term


def gp_posterior(inputs, targets, mask, log_lengthscales, log_signal_std, log_noise_std) -> GP:
    """Build a GP (cache beta and the inverse kernel matrix) from data and hyperparameters."""

    def one(y, log_ls, log_sf, log_sn):
        gram = _masked_gram(inputs, mask, log_ls, log_sf, log_sn)
        chol = jnp.linalg.cholesky(gram)
        eye = jnp.eye(inputs.shape[0], dtype=inputs.dtype)
        k_inv = jax.scipy.linalg.cho_solve((chol, True), eye)
        k_inv = jnp.where(mask[:, None] & mask[None, :], 0.5 * (k_inv + k_inv.T), 0.0)
        return k_inv @ jnp.where(mask, y, 0.0), k_inv

    beta, k_inv = jax.vmap(one, in_axes=(1, 0, 0, 0))(targets, log_lengthscales, log_signal_std, log_noise_std)
    return GP(inputs, targets, mask, log_lengthscales, log_signal_std, log_noise_std, beta, k_inv)


def _check_data(inputs, targets):
    inputs, targets = np.asarray(inputs, np.float64), np.asarray(targets, np.float64)
    if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"expected inputs [N, D] and targets [N, E] with the same N; got {inputs.shape} and "
                         f"{targets.shape}.")
    if inputs.shape[0] < 2:
        raise ValueError(f"a GP needs at least 2 training points to fit hyperparameters; got {inputs.shape[0]}.")
    if not (np.all(np.isfinite(inputs)) and np.all(np.isfinite(targets))):
        raise ValueError("GP training data contain NaN or inf; drop those transitions before fitting.")
    return inputs, targets


def fit_gp(inputs, targets, *, pad_to: int | None = None, init: GP | None = None, maxiter: int = 200) -> GP:
    """Fit the hyperparameters of E independent GPs by evidence maximisation (L-BFGS-B on the exact gradient).

    inputs [N, D], targets [N, E]. Without `init`, lengthscales start at the inputs' standard deviations, signal
    std at the targets' and noise std at a tenth of that (PILCO's initialisation); with `init` (a previous fit of
    the same dimensions, or anything with its three log_* hyperparameter arrays), they start from its values,
    which makes refits after each episode cheap. `pad_to`
    pads the data with masked rows to that many points (see the module docstring). Deterministic: no randomness.
    Returns the GP in float64.
    """
    inputs, targets = _check_data(inputs, targets)
    n, d = inputs.shape
    e = targets.shape[1]
    size = n if pad_to is None else int(pad_to)
    if size < n:
        raise ValueError(f"pad_to={pad_to} is smaller than the {n} training points; pass pad_to >= {n} or None.")
    x = np.zeros((size, d)); x[:n] = inputs
    y = np.zeros((size, e)); y[:n] = targets
    mask = np.arange(size) < n
    input_std = np.maximum(inputs.std(0), 1e-6)
    target_std = np.maximum(targets.std(0), 1e-6)
    if init is None:
        theta0 = np.concatenate([np.tile(np.log(input_std), (e, 1)), np.log(target_std)[:, None],
                                 np.log(target_std / 10)[:, None]], axis=1)
    else:
        init_e, init_d = np.shape(init.log_lengthscales)
        if init_d != d or init_e != e:
            raise ValueError(f"init GP has {init_d} inputs and {init_e} outputs; the data have "
                             f"{d} and {e}. Pass init=None to start from scratch.")
        theta0 = np.concatenate([np.asarray(init.log_lengthscales), np.asarray(init.log_signal_std)[:, None],
                                 np.asarray(init.log_noise_std)[:, None]], axis=1)

    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in (x, y, mask, np.log(input_std)))
        theta = _lbfgs(_neg_evidence, theta0.astype(np.float64), args, maxiter)
        return gp_posterior(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(theta[:, :d]),
                            jnp.asarray(theta[:, d]), jnp.asarray(theta[:, d + 1]))


@jax.jit
def _neg_evidence(theta, x, y, mask, log_input_std):
    """Sum over outputs of -log p(y_a | X) plus the curbs, normalised by N (scale-free for L-BFGS tolerances)."""
    d = x.shape[1]

    def one(th, ya):
        log_ls, log_sf, log_sn = th[:d], th[d], th[d + 1]
        return -log_marginal_likelihood(x, ya, mask, log_ls, log_sf, log_sn) + _curb(log_ls, log_sf, log_sn,
                                                                                       log_input_std)

    return jnp.sum(jax.vmap(one, in_axes=(0, 1))(theta, y)) / jnp.sum(mask)


_neg_evidence_and_grad = jax.jit(jax.value_and_grad(_neg_evidence.__wrapped__))


def _lbfgs(fun, theta0, args, maxiter):
    """scipy L-BFGS-B on a jitted value-and-grad; keeps the best finite point seen (Cholesky can fail far out)."""
    shape = theta0.shape
    best = {"f": np.inf, "x": theta0.ravel().copy()}

    def f(flat):
        value, grad = _neg_evidence_and_grad(jnp.asarray(flat.reshape(shape)), *args)
        value, grad = float(value), np.asarray(grad, np.float64).ravel()
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            return 1e10, np.zeros_like(flat)
        if value < best["f"]:
            best["f"], best["x"] = value, flat.copy()
        return value, grad

    scipy.optimize.minimize(f, theta0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    if not np.isfinite(best["f"]):
        raise ValueError("GP evidence was NaN/inf at every point tried; check the data scale (standardise inputs "
                         "and targets) or pass a different init.")
    return best["x"].reshape(shape)


# ----------------------------------------------------------------------------------------------------------------
# Predictions.


def require_x64(who: str) -> None:
    """The GP's kernel algebra is run in float64 (fit_gp returns float64 arrays); outside `jax.enable_x64` JAX
    silently computes it in float32, which gave variances of 1.5 where float64 gives 2e-7."""
    if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError(f"{who} needs float64: call it inside `with jax.enable_x64(True):` (float32 rounding "
                         "breaks the GP's kernel algebra).")


def predict(gp: GP, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean [..., E] and latent variance [..., E] at deterministic inputs x [..., D]."""
    require_x64("gp.predict")
    flat = jnp.reshape(x, (-1, gp.input_dim))

    def one(log_ls, log_sf, beta, k_inv):
        k = jnp.where(gp.mask[None, :], se_kernel(flat, gp.inputs, log_ls, log_sf), 0.0)  # [M, N]
        var = jnp.exp(2 * log_sf) - jnp.sum((k @ k_inv) * k, 1)
        return k @ beta, jnp.maximum(var, 0.0)

    mean, var = jax.vmap(one, out_axes=1)(gp.log_lengthscales, gp.log_signal_std, gp.beta, gp.k_inv)
    shape = jnp.shape(x)[:-1] + (gp.output_dim,)
    return mean.reshape(shape), var.reshape(shape)


def se_expansion_moments(centers, beta, log_lengthscales, log_signal_std, mean, cov, k_inv=None):
    """Moments of f_a(x) = sum_i beta_ai k_a(x, c_i) (SE kernels) at x ~ N(mean, cov), exactly.

    Shared by the GP (centres = training inputs, beta = posterior weights, k_inv given: the expected posterior
    variance is added on the diagonal) and PILCO's RBF policy (centres and weights are parameters, k_inv None: a
    deterministic function). centers [N, D], beta [E, N], log_lengthscales [E, D], log_signal_std [E].
    Returns the mean [E], the covariance [E, E] and C = cov^{-1} cov[x, f] [D, E] (the input-output covariance
    premultiplied by cov^{-1}, which is how it chains through later maps).
    """
    d = centers.shape[1]
    eye = jnp.eye(d, dtype=cov.dtype)
    nu = centers - mean                                     # [N, D]
    inv_lam = jnp.exp(-2 * log_lengthscales)                # [E, D]

    def first_moments(beta_a, inv_lam_a, log_sf_a):
        # (S + Lambda)^{-1} nu_i written as Lambda^{-1/2} (Lambda^{-1/2} S Lambda^{-1/2} + I)^{-1} Lambda^{-1/2} nu_i,
        # which stays well conditioned when S is nearly singular.
        scale = jnp.sqrt(inv_lam_a)
        b = scale[:, None] * cov * scale[None, :] + eye
        scaled = nu * scale                                  # [N, D]
        t = jnp.linalg.solve(b, scaled.T).T                 # [N, D]
        q = jnp.exp(2 * log_sf_a - 0.5 * jnp.sum(scaled * t, 1)) / jnp.sqrt(jnp.linalg.det(b))
        weighted = beta_a * q
        return jnp.sum(weighted), (t * scale).T @ weighted

    m, c = jax.vmap(first_moments, out_axes=(0, 1))(beta, inv_lam, log_signal_std)
    # log k_a(c_i, mean) and zeta_ai = Lambda_a^{-1} nu_i for the second moments.
    log_k = 2 * log_signal_std[:, None] - 0.5 * jnp.sum(nu[None] ** 2 * inv_lam[:, None, :], 2)   # [E, N]
    zeta = nu[None] * inv_lam[:, None, :]                                                          # [E, N, D]

    def second_moment(a, b, with_variance):
        r = cov * (inv_lam[a] + inv_lam[b])[None, :] + eye
        m_ab = jnp.linalg.solve(r, cov)
        m_ab = 0.5 * (m_ab + m_ab.T)                        # R^{-1} S is symmetric
        za, zb = zeta[a], zeta[b]
        za_m = za @ m_ab
        quad_a = 0.5 * jnp.sum(za_m * za, 1)
        quad_b = 0.5 * jnp.sum((zb @ m_ab) * zb, 1)
        log_q = (log_k[a] + quad_a)[:, None] + (log_k[b] + quad_b)[None, :] + za_m @ zb.T
        q = jnp.exp(log_q) / jnp.sqrt(jnp.linalg.det(r))
        second = beta[a] @ q @ beta[b]
        if with_variance:
            second = second + jnp.exp(2 * log_signal_std[a]) - jnp.sum(k_inv[a] * q)
        return second

    # Q_ba = Q_ab^T, so only the E (E + 1) / 2 pairs a <= b are computed: the N x N work is most of the cost. The
    # expected posterior variance (an extra N x N product) enters the E diagonal pairs only.
    e = beta.shape[0]
    diag_idx = jnp.arange(e)
    rows, cols = np.triu_indices(e, 1)
    diag = jax.vmap(lambda a: second_moment(a, a, k_inv is not None))(diag_idx)
    upper = jax.vmap(lambda a, b: second_moment(a, b, False))(jnp.asarray(rows), jnp.asarray(cols))
    second = jnp.diag(diag).at[rows, cols].set(upper).at[cols, rows].set(upper)
    return m, second - jnp.outer(m, m), c


def moment_match(gp: GP, mean: jax.Array, cov: jax.Array):
    """Predictive mean [E], covariance [E, E] and cov^{-1} cov[x, f] [D, E] of the GP at x ~ N(mean, cov).
    `cov` must be symmetric positive semi-definite; that is not checked (the values may be traced), and an
    indefinite one gives negative predicted variances."""
    require_x64("gp.moment_match")
    if mean.shape != (gp.input_dim,) or cov.shape != (gp.input_dim, gp.input_dim):
        raise ValueError(f"moment_match expects mean [{gp.input_dim}] and cov [{gp.input_dim}, {gp.input_dim}]; "
                         f"got {mean.shape} and {cov.shape}.")
    return se_expansion_moments(gp.inputs, gp.beta, gp.log_lengthscales, gp.log_signal_std, mean, cov, gp.k_inv)
