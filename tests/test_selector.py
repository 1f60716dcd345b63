"""The adaptive gradient selector: its MSE estimate is unbiased, its QP is exact, and on a real problem it trusts a
good model and distrusts a bad one (fixed seeds; the lab programs compile once per N)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.envs import gridworld
from mbpg.gradients import draw_gradient, get_estimator
from mbpg.lab import exact_gradient, sample_gradients
from mbpg.lab.selector import AutoEstimator, estimated_mse, lab_estimator, select_gradient, simplex_qp
from mbpg.models import mixture_model
from mbpg.keys import side_key
from mbpg.policies import policy_for


def synthetic(key, n_replicates, n, p=6, bias1=0.3, bias2=0.6, share=0.8):
    """Contributions [R, 3, N, P]: candidate 0 unbiased (truth 0, noise e0), candidate 1 biased and correlated
    with it (share * e0 + e1), candidate 2 biased and independent (e2). Noise scales 1, 0.5, 0.7."""
    k0, k1, k2 = jax.random.split(key, 3)
    e0 = jax.random.normal(k0, (n_replicates, n, p))
    e1 = 0.5 * jax.random.normal(k1, (n_replicates, n, p))
    e2 = 0.7 * jax.random.normal(k2, (n_replicates, n, p))
    b1, b2 = bias1 * jnp.ones(p) / np.sqrt(p), bias2 * jnp.eye(p)[0]
    return jnp.stack([e0, b1 + share * e0 + e1, b2 + e2], axis=1), (b1, b2)


def test_the_mse_estimate_of_a_fixed_mix_is_unbiased():
    n, p, share = 4, 6, 0.8
    flat, (b1, b2) = synthetic(jax.random.key(0), 10_000, n, p, share=share)
    independent = (False, False, True)
    for weights in ([1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]):
        w = jnp.asarray(weights)
        estimates = np.asarray(jax.vmap(lambda f: estimated_mse(f, w, independent))(flat))
        # Exact MSE of the mix: bias ||w1 b1 + w2 b2||^2; per-dimension variance of one contribution
        # (w0 + w1 share)^2 + (0.5 w1)^2 + (0.7 w2)^2, times P dimensions, divided by N.
        bias = np.asarray(w[1] * b1 + w[2] * b2)
        variance = p * ((w[0] + w[1] * share) ** 2 + (0.5 * w[1]) ** 2 + (0.7 * w[2]) ** 2) / n
        truth = float(bias @ bias + variance)
        standard_error = estimates.std() / np.sqrt(len(estimates))
        assert abs(estimates.mean() - truth) < 4.5 * standard_error, (weights, estimates.mean(), truth)
        assert standard_error < 0.05 * truth  # the test can tell a wrong estimator from a right one


def test_selection_diagnostics_estimate_bias_and_variance_without_bias():
    n, p = 4, 6
    flat, (b1, b2) = synthetic(jax.random.key(1), 10_000, n, p)
    selections = jax.vmap(lambda f: select_gradient(f, (False, False, True))[1])(flat)
    bias2 = np.asarray(selections.bias2)
    for k, b in ((1, b1), (2, b2)):
        se = bias2[:, k].std() / np.sqrt(len(bias2))
        assert abs(bias2[:, k].mean() - float(b @ b)) < 4.5 * se
    expected_variance = np.array([1.0, 0.8**2 + 0.25, 0.49]) * p / n
    np.testing.assert_allclose(np.asarray(selections.variance).mean(0), expected_variance, rtol=0.02)
    assert np.all(bias2[:, 0] == 0)
    np.testing.assert_allclose(np.asarray(selections.weights).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("k", [3, 4])
def test_simplex_qp_matches_a_brute_force_grid(k):
    rng = np.random.default_rng(k)
    step = 0.02 if k == 3 else 0.05
    ticks = np.round(np.arange(0, 1 + 1e-9, step) / step).astype(int)
    total = round(1 / step)
    grid = np.array([c + (total - sum(c),) for c in itertools.product(ticks, repeat=k - 1) if sum(c) <= total])
    grid = grid * step
    instances = []
    for _ in range(30):
        factor = rng.normal(size=(k, rng.integers(1, k + 1)))  # PSD, often singular (rank-deficient Gram)
        instances.append((factor @ factor.T, rng.normal(size=k)))
    quadratic = np.stack([q for q, _ in instances])
    linear = np.stack([c for _, c in instances])
    with jax.enable_x64(True):
        solved = np.asarray(jax.jit(jax.vmap(simplex_qp))(quadratic, linear))
    for (q, c), w in zip(instances, solved):
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
        objective = np.einsum("gi,ij,gj->g", grid, q, grid) + 2 * grid @ c
        value = w @ q @ w + 2 * c @ w
        assert value <= objective.min() + 1e-9  # never worse than any grid point...
        assert value >= objective.min() - 10 * step * (np.abs(q).max() + np.abs(c).max())  # ...and close to it


def test_simplex_qp_mixes_small_candidates_beside_a_huge_one():
    """MFG, a mildly biased MVG and a far-off FMG (scales 1e-4 and 100): the optimum mixes the first two half and
    half (closed form), in float32 too; judging the small face against the constraint's 1s once skipped it."""
    differences = np.stack([np.zeros(2), [1e-2, 0.0], [0.0, 10.0]])
    quadratic, linear = differences @ differences.T, np.array([1e-4, 0.5e-4, 0.0])
    np.testing.assert_allclose(simplex_qp(jnp.asarray(quadratic, jnp.float32), jnp.asarray(linear, jnp.float32)),
                               [0.5, 0.5, 0.0], atol=1e-4)


def test_a_candidate_whose_moments_overflow_gets_weight_0_and_the_rest_are_mixed_as_without_it():
    """An FMG on a model where the policy diverges can reach contributions of 1e28: squared in float32 they
    overflow, which once made every weight NaN. The others must be mixed exactly as if it were absent."""
    flat = jax.random.normal(jax.random.key(4), (3, 8, 5)) + jnp.array([0.0, 0.3, 0.0])[:, None, None]
    flat = flat.at[2].multiply(1e28)
    gradient, selection = select_gradient(flat, (False, False, True))
    alone, alone_selection = select_gradient(flat[:2], (False, False))
    assert selection.weights[2] == 0 and np.isfinite(gradient).all()
    np.testing.assert_allclose(selection.weights[:2], alone_selection.weights, rtol=1e-5)
    np.testing.assert_allclose(gradient, alone, rtol=1e-5, atol=1e-6)
    assert not np.isfinite(select_gradient(flat[::-1], (False, True, False))[1].weights).any()  # no usable MFG


def test_select_gradient_takes_pytrees_and_composes_with_jit_and_vmap():
    flat, _ = synthetic(jax.random.key(2), 3, n=8)
    tree = {"a": flat[..., :2], "b": flat[..., 2:].reshape(3, 3, 8, 2, 2)}
    plain = [select_gradient(jax.tree.map(lambda x: x[i], tree)) for i in range(3)]
    batched_gradient, batched = jax.jit(jax.vmap(select_gradient))(tree)
    for i, (gradient, selection) in enumerate(plain):
        np.testing.assert_allclose(batched.weights[i], selection.weights, atol=1e-5)
        np.testing.assert_allclose(batched_gradient["b"][i], gradient["b"], atol=1e-5)
        mixed = np.tensordot(np.asarray(selection.weights), np.asarray(flat[i].mean(1)), 1)
        np.testing.assert_allclose(np.concatenate([gradient["a"], gradient["b"].reshape(-1)]), mixed, atol=1e-5)


def test_cross_fitted_weights_of_each_half_come_from_the_other_half():
    from mbpg.gradients.selector import cross_fitted_unit_weights, select_gradient_cross_fitted

    flat, _ = synthetic(jax.random.key(4), 1, n=9)
    flat = flat[0]  # [3, 9, P]: halves of 4 and 5 trajectories
    gradient, selection = select_gradient_cross_fitted(flat, (False, False, True))
    w_first = select_gradient(flat[:, :4], (False, False, True))[1].weights
    w_second = select_gradient(flat[:, 4:], (False, False, True))[1].weights
    expected = 0.5 * (w_second @ flat[:, :4].mean(1) + w_first @ flat[:, 4:].mean(1))
    np.testing.assert_allclose(gradient, expected, atol=1e-6)
    np.testing.assert_allclose(selection.weights, 0.5 * (w_first + w_second), atol=1e-6)
    np.testing.assert_allclose(selection.mixed_mse, estimated_mse(flat, selection.weights, (False, False, True)),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="N >= 4"):
        select_gradient_cross_fitted(flat[:, :3])
    assert lab_estimator("auto-cf").cross_fit and lab_estimator("auto-is").cross_fit is False
    # The same mix as one weight per candidate and trajectory (what a surrogate-based step uses), odd N included.
    unit_weights, unit_selection = cross_fitted_unit_weights(flat, (False, False, True))
    assert unit_weights.shape == (3, 9)
    np.testing.assert_allclose(jnp.einsum("kn,knp->p", unit_weights, flat) / 9, expected, atol=1e-6)
    np.testing.assert_allclose(unit_selection.weights, selection.weights, atol=1e-7)


def test_auto_in_training_cross_fits_from_the_threshold_on():
    """Plain auto as one estimate: in-sample weights. As a training step (`for_training`, and the agents'
    `select_gradient_auto`): in-sample below CROSS_FIT_MIN_UNITS units, cross-fitted from it on, the same in the
    per-unit form a surrogate step uses; auto-cf and auto-is force one or the other."""
    from mbpg.gradients.selector import (CROSS_FIT_MIN_UNITS, select_gradient_auto, select_gradient_cross_fitted,
                                         unit_weights)
    from mbpg.lab.selector import for_training

    assert lab_estimator("auto").cross_fit is False and lab_estimator("auto:gpomdp+fmg").cross_fit is False
    assert for_training(lab_estimator("auto")).cross_fit is None
    assert for_training(lab_estimator("auto:gpomdp+fmg")).cross_fit is None
    assert for_training(lab_estimator("auto-is")).cross_fit is False
    assert for_training(lab_estimator("auto-cf")).cross_fit

    independent = (False, False, True)
    flat = synthetic(jax.random.key(5), 1, n=CROSS_FIT_MIN_UNITS)[0][0]
    for n, cross_fitted in ((CROSS_FIT_MIN_UNITS - 1, False), (CROSS_FIT_MIN_UNITS, True)):
        part = flat[:, :n]
        expected = (select_gradient_cross_fitted if cross_fitted else select_gradient)(part, independent)[0]
        np.testing.assert_allclose(select_gradient_auto(part, independent)[0], expected, atol=1e-6)
        np.testing.assert_allclose(for_training(lab_estimator("auto")).select(part)[0], expected, atol=1e-6)
        weights, _ = unit_weights(part, independent)
        np.testing.assert_allclose(jnp.einsum("kn,knp->p", weights, part) / n, expected, atol=1e-6)
    # at the threshold, forcing in-sample weights changes the mix (the two are not the same estimator); below
    # it, forcing cross-fitting is a clear error (halves of fewer than 2 units)
    assert not np.allclose(select_gradient_auto(part, independent, cross_fit=False)[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs N >= 4"):
        select_gradient_auto(flat[:, :CROSS_FIT_MIN_UNITS - 1], independent, cross_fit=True)


def test_selector_rejects_bad_input():
    flat, _ = synthetic(jax.random.key(3), 1, n=2)
    with pytest.raises(ValueError, match="needs N >= 2"):
        select_gradient(flat[0, :, :1])
    with pytest.raises(ValueError, match="cannot be independent of itself"):
        select_gradient(flat[0], (True, False, False))
    with pytest.raises(ValueError, match="must be model-free"):
        lab_estimator("auto:mvg-dp+gpomdp")
    with pytest.raises(ValueError, match="score-function estimators"):
        AutoEstimator(("gpomdp", "svg"))
    with pytest.raises(ValueError, match="unknown estimator 'mvg'"):
        lab_estimator("auto:gpomdp+mvg")


# --- On a real problem --------------------------------------------------------------------------------------------

HORIZON, N = 20, 64  # gamma 0.7: 0.7^20 < 1e-3


@pytest.fixture(scope="module")
def problem():
    env = gridworld(3, 3, slip=0.1, gamma=0.7)
    logits = np.random.default_rng(0).normal(size=(9, 4))
    auto = AutoEstimator()
    policy = policy_for(env)
    draws = jax.jit(lambda model, keys: jax.vmap(
        lambda key: auto.draw_all(env, model, policy, jnp.asarray(logits, jnp.float32), key, N, HORIZON))(keys))
    return env, logits, auto, draws


def test_each_candidate_inside_a_draw_is_that_estimator_s_own_draw(problem):
    env, logits, auto, draws = problem
    model = mixture_model(env, 0.3, key=jax.random.key(1))
    key = jax.random.key(5)
    estimates, _, _ = draws(model, key[None])
    for index, name in enumerate(auto.candidates):
        own_key = key if get_estimator(name).d_source == "real" else side_key(key, "model trajectories")
        own = draw_gradient(get_estimator(name), env, model, policy_for(env), jnp.asarray(logits, jnp.float32),
                            own_key, N, HORIZON)
        np.testing.assert_allclose(estimates[0, index], own, rtol=1e-4, atol=1e-7)


def test_with_an_exact_model_the_bias_estimate_is_zero_and_the_lower_variance_candidate_gets_weight(problem):
    env, logits, auto, draws = problem
    estimates, mixed, selection = draws(env, jax.random.split(jax.random.key(0), 200))
    bias2 = np.asarray(selection.bias2)
    assert_zero_mean = np.abs(bias2.mean(0)) < 4.5 * bias2.std(0) / np.sqrt(len(bias2)) + 1e-12
    assert assert_zero_mean.all(), bias2.mean(0)
    truth = exact_gradient(env, logits)
    mse = ((np.asarray(estimates) - truth) ** 2).reshape(200, 3, -1).sum(-1).mean(0)
    weights = np.asarray(selection.weights).mean(0)
    assert mse[1] < 0.7 * mse[0]  # mvg-dp (exact Q) has the lower variance...
    assert weights[1] > weights[0] and weights[0] < 0.25  # ...and the selector leans on it rather than on MFG
    auto_mse = ((np.asarray(mixed) - truth) ** 2).reshape(200, -1).sum(-1).mean()
    assert auto_mse < mse.min()


def test_with_a_badly_wrong_model_and_many_trajectories_it_trusts_mfg(problem):
    env, logits, auto, draws = problem
    model = mixture_model(env, 1.0, key=jax.random.key(0))  # p_hat = a random q: the model knows nothing
    truth = exact_gradient(env, logits)
    estimates, mixed, selection = draws(model, jax.random.split(jax.random.key(1), 100))
    # The model-based gradients' squared bias is many times MFG's variance at this N: MFG is the right choice.
    mfg_variance = np.asarray(estimates[:, 0]).var(0).sum()
    for kind in ("mvg", "fmg"):
        assert np.sum((exact_gradient(env, logits, kind, model) - truth) ** 2) > 8 * mfg_variance
    # The two-candidate optimum puts 1 - Var/||g_k - g_0||^2 on MFG (docs/selector.md): about 0.94 here, -> 1 as N
    # grows. The mix is then no worse than MFG alone.
    weights = np.asarray(selection.weights)
    assert weights[:, 0].mean() > 0.9 and np.median(weights[:, 0]) > 0.93, weights.mean(0)
    mfg_mse = ((np.asarray(estimates[:, 0]) - truth) ** 2).reshape(100, -1).sum(-1).mean()
    auto_mse = ((np.asarray(mixed) - truth) ** 2).reshape(100, -1).sum(-1).mean()
    assert auto_mse < 1.05 * mfg_mse


def test_auto_is_a_lab_estimator(problem):
    env, logits, _, _ = problem
    model = mixture_model(env, 0.1, key=jax.random.key(2))
    first = sample_gradients(env, logits, "auto", model=model, n_trajectories=2, horizon=8, n_estimates=3, seed=4)
    again = sample_gradients(env, logits, "auto", model=model, n_trajectories=2, horizon=8, n_estimates=3, seed=4)
    assert first.shape == (3, 9, 4) and np.isfinite(first).all() and np.array_equal(first, again)
    with pytest.raises(ValueError, match="needs n_trajectories >= 2"):
        sample_gradients(env, logits, "auto", model=model, n_trajectories=1)
    with pytest.raises(ValueError, match="needs model="):
        sample_gradients(env, logits, "auto")
