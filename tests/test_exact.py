import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbpg.envs import TabularMDP, double_integrator, garnet, gridworld, random_lqr
from mbpg.gradients import sample_trajectories
from mbpg.lab import UnstableGainWarning, exact_gradient, exact_return
from mbpg.models import mixture_model, perturbed_lqr
from mbpg.policies import policy_for
from mbpg.values import discounted_return, evaluate_tabular
from tests.conftest import random_mdp_arrays


def central_differences(function, params, step=1e-6):
    params = np.asarray(params, np.float64)
    gradient = np.zeros_like(params)
    for index in np.ndindex(params.shape):
        up, down = params.copy(), params.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (function(up) - function(down)) / (2 * step)
    return gradient


@settings(max_examples=25, deadline=None)
@given(
    n_states=st.integers(1, 6),
    n_actions=st.integers(1, 4),
    gamma=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_mfg_gradient_equals_autodiff_and_finite_differences(n_states, n_actions, gamma, seed):
    mdp = TabularMDP(*random_mdp_arrays(seed, n_states, n_actions), gamma)
    logits = np.random.default_rng(seed + 1).normal(size=(n_states, n_actions))
    gradient = exact_gradient(mdp, logits)
    assert gradient.dtype == np.float64 and gradient.shape == logits.shape
    with jax.enable_x64(True):
        autodiff = np.asarray(jax.grad(lambda l: exact_return(mdp, l))(jnp.asarray(logits)))
    np.testing.assert_allclose(gradient, autodiff, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(gradient, central_differences(lambda l: exact_return(mdp, l), logits),
                               rtol=1e-5, atol=1e-7)
    # Softmax is invariant to adding a constant to a state's logits: each row of the gradient sums to zero.
    np.testing.assert_allclose(gradient.sum(-1), 0.0, atol=1e-10)


def test_occupancy_and_return_conventions():
    mdp = garnet(10, 3, 3, gamma=0.9, seed=3)
    probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(size=(10, 3))), -1)
    with jax.enable_x64(True):
        evaluation = evaluate_tabular(mdp, jnp.asarray(probs, jnp.float64))
        assert np.isclose(float(evaluation.occupancy.sum()), 1 / (1 - 0.9))
        # J = sum_s d(s) r_pi(s): the occupancy and the value function tell the same story.
        r_pi = (np.asarray(probs, np.float64) * np.asarray(mdp.rewards)).sum(-1)
        assert np.isclose(float(evaluation.occupancy @ r_pi), float(evaluation.expected_return))


def test_exact_return_matches_monte_carlo_rollouts():
    """The oracle is checked against simulation, not only against itself."""
    mdp = garnet(6, 2, 3, gamma=0.7, seed=5)
    logits = np.random.default_rng(1).normal(size=(6, 2))
    paths = sample_trajectories(mdp, policy_for(mdp), jnp.asarray(logits), jax.random.key(0), 20_000, 40)
    returns = np.asarray(discounted_return(paths.rewards, 0.7))
    assert abs(returns.mean() - exact_return(mdp, logits)) < 4.5 * returns.std() / np.sqrt(len(returns))

    lqr = double_integrator(gamma=0.8)
    gain = 0.5 * lqr.optimal_gain()
    paths = sample_trajectories(lqr, policy_for(lqr), jnp.asarray(gain), jax.random.key(1), 20_000, 60)
    returns = np.asarray(discounted_return(paths.rewards, 0.8))
    assert abs(returns.mean() - exact_return(lqr, gain)) < 4.5 * returns.std() / np.sqrt(len(returns))


@pytest.mark.parametrize("kind", ["fmg", "mvg"])
def test_all_kinds_coincide_when_the_model_is_exact(kind):
    mdp = garnet(8, 3, 2, gamma=0.85, seed=2)
    logits = np.random.default_rng(2).normal(size=(8, 3))
    np.testing.assert_allclose(exact_gradient(mdp, logits, kind, model=mdp), exact_gradient(mdp, logits),
                               rtol=1e-12, atol=1e-14)
    lqr = random_lqr(3, 2, seed=1)
    gain = 0.7 * lqr.optimal_gain()
    np.testing.assert_allclose(exact_gradient(lqr, gain, kind, model=lqr), exact_gradient(lqr, gain),
                               rtol=1e-10)


def test_fmg_is_the_true_gradient_of_the_model():
    mdp = garnet(8, 3, 3, gamma=0.8, seed=4)
    model = mixture_model(mdp, 0.3, key=jax.random.key(0))
    logits = np.random.default_rng(3).normal(size=(8, 3))
    fmg = exact_gradient(mdp, logits, "fmg", model)
    np.testing.assert_allclose(fmg, exact_gradient(model, logits), rtol=1e-12)
    assert np.linalg.norm(fmg - exact_gradient(mdp, logits)) > 1e-3  # the model is wrong, and it shows
    lqr = random_lqr(2, 1, seed=2)
    lqr_model = perturbed_lqr(lqr, 0.2, jax.random.key(1))
    gain = 0.5 * lqr.optimal_gain()
    np.testing.assert_allclose(exact_gradient(lqr, gain, "fmg", lqr_model), exact_gradient(lqr_model, gain),
                               rtol=1e-10)


def test_mvg_is_the_gradient_with_real_occupancy_and_model_values_held_fixed():
    """An independent autodiff route: d/dtheta sum_s d_p(s) sum_a pi(a|s) Q_hat(s,a) with d_p and Q_hat frozen."""
    mdp = garnet(7, 3, 3, gamma=0.8, seed=6)
    model = mixture_model(mdp, 0.4, key=jax.random.key(2))
    logits = np.random.default_rng(4).normal(size=(7, 3))
    with jax.enable_x64(True):
        probs = jax.nn.softmax(jnp.asarray(logits), -1)
        occupancy = evaluate_tabular(mdp, probs).occupancy
        q_model = evaluate_tabular(model, probs).action_values
        surrogate = lambda l: occupancy @ (jax.nn.softmax(l, -1) * q_model).sum(-1)
        expected = np.asarray(jax.grad(surrogate)(jnp.asarray(logits)))
    np.testing.assert_allclose(exact_gradient(mdp, logits, "mvg", model), expected, rtol=1e-10, atol=1e-13)


def test_lqr_gradient_matches_finite_differences_and_autodiff():
    lqr = random_lqr(3, 2, seed=3)
    gain = 0.6 * lqr.optimal_gain()
    gradient = exact_gradient(lqr, gain)
    np.testing.assert_allclose(gradient, central_differences(lambda k: exact_return(lqr, k), gain), rtol=1e-5)
    with jax.enable_x64(True):
        autodiff = np.asarray(jax.grad(lambda k: exact_return(lqr, k))(jnp.asarray(gain)))
    np.testing.assert_allclose(gradient, autodiff, rtol=1e-8)
    # At the optimal gain the gradient vanishes.
    assert np.abs(exact_gradient(lqr, lqr.optimal_gain())).max() < 1e-6


def test_unstable_gain_gives_minus_infinity_and_a_warning_not_nan():
    lqr = double_integrator()
    with pytest.warns(UnstableGainWarning, match="unstable"):
        assert exact_return(lqr, np.array([[50.0, 0.0]])) == -np.inf
    with pytest.warns(UnstableGainWarning):
        assert np.isnan(exact_gradient(lqr, np.array([[50.0, 0.0]]))).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(exact_return(lqr, lqr.optimal_gain()))


@pytest.mark.parametrize("call, message", [
    (lambda m, l: exact_gradient(m, l, "mvg"), "needs model="),
    (lambda m, l: exact_gradient(m, l, "best"), "unknown gradient kind 'best'"),
    (lambda m, l: exact_return(m, l[:, :1]), r"params must be softmax logits \[S, A\] = \(4, 2\)"),
    (lambda m, l: exact_return(m, l * np.nan), "NaN"),
    (lambda m, l: exact_gradient(m, l, "fmg", double_integrator()), "model must be a TabularMDP"),
    (lambda m, l: exact_return(double_integrator(), np.zeros((2, 1))), r"the gain K \[action_dim, state_dim\]"),
])
def test_oracles_reject_bad_input(call, message):
    mdp = TabularMDP(*random_mdp_arrays(0, 4, 2), 0.9)
    with pytest.raises(ValueError, match=message):
        call(mdp, np.zeros((4, 2)))


def test_rows_within_the_tolerance_are_renormalised_so_the_oracle_and_the_simulator_agree():
    """Rows scaled by 1 - 9e-6 passed validation and were kept: step() samples the normalised row, but the exact
    oracle solved the unnormalised one (J 8% off at gamma 0.9999)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(3, 2))
    mdp = TabularMDP(p * (1 - 9e-6), np.ones((3, 2)), np.array([1.0, 0.0, 0.0]) * (1 - 9e-6), gamma=0.9999)
    assert float(exact_return(mdp, jnp.zeros((3, 2)))) == pytest.approx(1e4, rel=1e-9)
    exact = TabularMDP(p, np.ones((3, 2)), np.array([1.0, 0.0, 0.0]), gamma=0.9)
    assert exact.transitions is not None and np.array_equal(np.asarray(exact.transitions), p)  # kept as given


def test_a_model_must_share_the_objective_of_the_env():
    env = garnet(4, 2, branching=2, gamma=0.9, seed=0)
    model = TabularMDP(env.transitions, env.rewards, env.initial, gamma=0.5)
    with pytest.raises(ValueError, match="model's gamma"):
        exact_gradient(env, jnp.zeros((4, 2)), kind="mvg", model=model)
    lqr = double_integrator()
    other = type(lqr)(lqr.A, lqr.B, lqr.state_cost, lqr.action_cost, noise_cov=lqr.noise_cov, gamma=lqr.gamma,
                      policy_std=2 * lqr.policy_std)
    with pytest.raises(ValueError, match="policy_std"):
        exact_gradient(lqr, jnp.zeros((1, 2)), kind="fmg", model=other)
    with pytest.raises(ValueError, match="> 0 and finite"):
        type(lqr)(lqr.A, lqr.B, lqr.state_cost, lqr.action_cost, policy_std=float("inf"))
    with pytest.raises(ValueError, match="pair of integers"):
        gridworld(3, 3, goal=(1.5, 1))
