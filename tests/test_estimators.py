"""Statistical tests of the sampled estimators against their exact population gradients (fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.envs import TabularMDP, double_integrator, garnet, gridworld
from mbpg.gradients import ESTIMATORS, EstimatorOptions, draw_gradient, get_estimator, model_noise, sample_trajectories
from mbpg.gradients.estimators import check_baseline
from mbpg.lab import exact_gradient, sample_gradients
from mbpg.models import mixture_model, perturbed_lqr
from mbpg.policies import policy_for
from mbpg.values import default_td_iterations, evaluate_tabular, td_critic_on_model
from tests.conftest import assert_unbiased

HORIZON = 26  # 0.7^26 < 1e-4: truncation is far below the standard errors below


@pytest.fixture(scope="module")
def problem():
    mdp = garnet(5, 3, 3, gamma=0.7, seed=11)
    logits = np.random.default_rng(5).normal(size=(5, 3))
    model = mixture_model(mdp, 0.6, key=jax.random.key(3))
    return mdp, logits, model


def draws(problem, estimator, n_estimates=4000, n_trajectories=2, seed=0, **options):
    mdp, logits, model = problem
    return sample_gradients(mdp, logits, estimator, model=model, n_trajectories=n_trajectories, horizon=HORIZON,
                            n_estimates=n_estimates, seed=seed, options=EstimatorOptions(**options))


def test_the_estimator_table_is_the_seed_table():
    assert {name: e.gradient_type for name, e in ESTIMATORS.items()} == {
        "reinforce": "MFG", "gpomdp": "MFG", "fmg": "FMG", "mvg-mc": "MVG", "mvg-dp": "MVG", "mvg-td": "MVG",
        "svg": "MVG", "uim": "MVG", "gamps": "MVG", "gamps-ml": "MVG"}
    assert get_estimator("fmg").d_source == "model" and get_estimator("mvg-dp").d_source == "real"


@pytest.mark.parametrize("estimator", ["reinforce", "gpomdp"])
def test_model_free_estimators_are_unbiased_for_the_true_gradient(problem, estimator):
    mdp, logits, _ = problem
    assert_unbiased(draws(problem, estimator), exact_gradient(mdp, logits))


@pytest.mark.parametrize("estimator, kind", [("fmg", "fmg"), ("mvg-dp", "mvg")])
def test_model_based_estimators_are_unbiased_for_their_population_gradient(problem, estimator, kind):
    mdp, logits, model = problem
    sample = draws(problem, estimator)
    to_population = assert_unbiased(sample, exact_gradient(mdp, logits, kind, model))
    # ...and, with this wrong model, measurably biased for the truth: the test would notice a mix-up. The sum of
    # squared z-scores of 15 unbiased entries exceeds 42 with probability 1e-4 (chi-square, 15 dof, an upper bound
    # here since the softmax rows' constraint removes degrees of freedom).
    standard_error = sample.std(0) / np.sqrt(len(sample))
    to_truth = np.abs(sample.mean(0) - exact_gradient(mdp, logits)) / standard_error
    assert (to_truth**2).sum() > 42 and (to_truth**2).sum() > 2 * (to_population**2).sum()


def test_mvg_mc_is_unbiased_for_the_mvg_gradient(problem):
    mdp, logits, model = problem
    assert_unbiased(draws(problem, "mvg-mc", n_estimates=1000, n_rollouts=2), exact_gradient(mdp, logits, "mvg", model))


def test_mvg_td_approaches_the_mvg_gradient_when_real_states_cover_the_mdp(problem):
    mdp, logits, model = problem
    sample = draws(problem, "mvg-td", n_estimates=1000, n_trajectories=8)
    assert_unbiased(sample, exact_gradient(mdp, logits, "mvg", model))


def test_td_critic_contracts_every_pair_as_default_td_iterations_promises():
    """A deterministic model with every state a start state: the critic's fixed point is Q^{pi, p_hat} exactly,
    so after default_td_iterations sweeps its error must be at most 1e-3 of the initial one (|Q|, from Q = 0),
    also at the actions pi rarely picks (branching a ~ pi left 76% of the error there)."""
    rng = np.random.default_rng(0)
    n_states, n_actions, gamma, step = 4, 3, 0.9, 0.5
    transitions = np.zeros((n_states, n_actions, n_states))
    transitions[np.arange(n_states)[:, None], np.arange(n_actions), rng.integers(n_states, size=(n_states,
                                                                                                n_actions))] = 1.0
    mdp = TabularMDP(transitions, rng.uniform(0.5, 1.0, (n_states, n_actions)), np.full(n_states, 0.25), gamma)
    probs = jnp.asarray(np.tile([0.90, 0.08, 0.02], (n_states, 1)), jnp.float32)
    truth = np.asarray(evaluate_tabular(mdp, probs).action_values)
    q = td_critic_on_model(mdp, probs, jnp.arange(n_states), jax.random.key(0),
                           default_td_iterations(gamma, step), step)
    assert np.abs(np.asarray(q) - truth).max() <= 1.2e-3 * np.abs(truth).max()


@pytest.mark.parametrize("name", ["mvg-td", "gamps", "gamps-ml"])
def test_baselines_are_refused_where_q_hat_is_fitted_from_the_batch(name):
    """Their Q_hat depends on every trajectory, so a leave-one-out baseline would bias them; the estimators with a
    given model or real returns keep it."""
    for baseline in ("constant", "state-value"):
        with pytest.raises(ValueError, match=f"would bias {name!r}"):
            check_baseline(get_estimator(name), baseline)
    check_baseline(get_estimator(name), "none")
    for fine in ("gpomdp", "reinforce", "mvg-mc", "mvg-dp", "fmg"):
        check_baseline(get_estimator(fine), "constant")


@pytest.mark.parametrize("baseline", ["constant", "state-value"])
def test_leave_one_out_baselines_keep_gpomdp_unbiased_and_cut_variance(problem, baseline):
    mdp, logits, _ = problem
    plain = draws(problem, "gpomdp", n_trajectories=4, seed=1)
    with_baseline = draws(problem, "gpomdp", n_trajectories=4, seed=1, baseline=baseline)
    assert_unbiased(with_baseline, exact_gradient(mdp, logits))
    assert with_baseline.var(0).sum() < 0.8 * plain.var(0).sum()


def test_draws_are_deterministic_per_seed_and_independent_within_a_call(problem):
    first = draws(problem, "gpomdp", n_estimates=50, seed=3)
    again = draws(problem, "gpomdp", n_estimates=50, seed=3)
    other = draws(problem, "gpomdp", n_estimates=50, seed=4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({d.tobytes() for d in first}) == 50


def test_vmapped_draws_equal_a_python_loop_over_the_same_keys(problem):
    mdp, logits, model = problem
    vmapped = sample_gradients(mdp, logits, "mvg-dp", model=model, n_trajectories=2, horizon=HORIZON,
                               n_estimates=3, seed=9)
    one = jax.jit(lambda key: draw_gradient(get_estimator("mvg-dp"), mdp, model, policy_for(mdp),
                                            jnp.asarray(logits), key, 2, HORIZON))
    looped = np.stack([one(k) for k in jax.random.split(jax.random.key(9), 3)])
    np.testing.assert_allclose(vmapped, looped, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def lqr_problem():
    lqr = double_integrator(gamma=0.8)
    gain = 0.5 * lqr.optimal_gain()
    return lqr, gain, perturbed_lqr(lqr, 0.1, jax.random.key(4))


def test_svg_and_mvg_dp_are_nan_where_the_gain_is_unstable_on_the_model(lqr_problem):
    """V_hat (svg's bootstrap) and Q_hat (mvg-dp) do not exist there; an unstable evaluation's value matrix is
    finite nonsense, which both once used."""
    lqr, gain, _ = lqr_problem
    model = lqr.replace(A=2.0 * np.asarray(lqr.A))
    for name in ("svg", "mvg-dp"):
        out = sample_gradients(lqr, gain, name, model=model, n_trajectories=2, horizon=10, n_estimates=2)
        assert np.isnan(out).all(), name
        assert np.isfinite(sample_gradients(lqr, gain, name, model=lqr, n_trajectories=2, horizon=10,
                                            n_estimates=2)).all(), name


def test_svg_is_unbiased_with_an_exact_model_and_has_far_lower_variance(lqr_problem):
    lqr, gain, _ = lqr_problem
    svg = sample_gradients(lqr, gain, "svg", model=lqr, n_trajectories=1, horizon=40, n_estimates=4000, seed=0)
    assert_unbiased(svg, exact_gradient(lqr, gain))
    score = sample_gradients(lqr, gain, "gpomdp", n_trajectories=1, horizon=40, n_estimates=4000, seed=0)
    assert svg.var(0).sum() < 0.01 * score.var(0).sum()


@pytest.mark.parametrize("estimator, kind", [("gpomdp", "mfg"), ("mvg-dp", "mvg"), ("fmg", "fmg")])
def test_lqr_score_estimators_are_unbiased(lqr_problem, estimator, kind):
    lqr, gain, model = lqr_problem
    sample = sample_gradients(lqr, gain, estimator, model=model, n_trajectories=1, horizon=40, n_estimates=20_000,
                              seed=1)
    assert_unbiased(sample, exact_gradient(lqr, gain, kind, model))


def test_inferred_noise_reproduces_real_transitions_through_a_wrong_model(lqr_problem):
    lqr, gain, model = lqr_problem
    policy = policy_for(lqr)
    paths = sample_trajectories(lqr, policy, jnp.asarray(gain), jax.random.key(2), 3, 10)
    noise = model_noise(model, paths)
    resimulated_next = jnp.einsum("ij,nhj->nhi", model.A, paths.states) + jnp.einsum(
        "ij,nhj->nhi", model.B, paths.actions) + noise
    np.testing.assert_allclose(resimulated_next, paths.next_states, atol=1e-5)
    action_noise = jax.vmap(jax.vmap(lambda s, a: policy.infer_noise(jnp.asarray(gain), s, a)))(
        paths.states, paths.actions)
    actions = jax.vmap(jax.vmap(lambda s, e: policy.reparameterised(jnp.asarray(gain), s, e)))(
        paths.states, action_noise)
    np.testing.assert_allclose(actions, paths.actions, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda m, l, p: sample_gradients(m, l, "reinforcee"), "unknown estimator 'reinforcee'; choose one of reinforce"),
    (lambda m, l, p: sample_gradients(m, l, "fmg"), "needs model="),
    (lambda m, l, p: sample_gradients(m, l, "svg", model=m), "needs a LQR environment"),
    (lambda m, l, p: sample_gradients(double_integrator(), np.zeros((1, 2)), "mvg-td", model=double_integrator()),
     "needs a TabularMDP environment"),
    (lambda m, l, p: sample_gradients(m, l, "gpomdp", n_trajectories=0), "n_trajectories must be a positive"),
    (lambda m, l, p: sample_gradients(m, l, "gpomdp", n_trajectories=1, options=EstimatorOptions(
        baseline="constant")), "needs n_trajectories >= 2"),
    (lambda m, l, p: sample_gradients(m, l, "mvg-dp", model=double_integrator()), "model must be the same kind"),
    (lambda m, l, p: sample_gradients(double_integrator(), np.zeros((1, 2)), "fmg"),
     "e.g. perturbed_lqr or learned_linear_model"),
    (lambda m, l, p: sample_gradients(m, l, "mvg-td", model=p, n_trajectories=4, options=EstimatorOptions(
        baseline="constant")), "baseline='constant' would bias 'mvg-td'"),
    (lambda m, l, p: sample_gradients(m, l, "auto:gpomdp+mvg-td", model=p, n_trajectories=4, options=EstimatorOptions(
        baseline="state-value")), "baseline='state-value' would bias 'mvg-td'"),
    (lambda m, l, p: EstimatorOptions(td_step_size=0.0), "td_step_size must lie in"),
    (lambda m, l, p: EstimatorOptions(n_rollouts=0), "n_rollouts must be a positive integer"),
    (lambda m, l, p: sample_gradients(m, l[:2], "gpomdp"), "params must be softmax logits"),
])
def test_sampling_rejects_bad_requests(problem, call, message):
    mdp, logits, model = problem
    with pytest.raises(ValueError, match=message):
        call(mdp, logits, model)


def test_a_larger_gridworld_runs_every_tabular_estimator():
    grid = gridworld(3, 3, gamma=0.8)
    model = mixture_model(grid, 0.1, key=jax.random.key(0))
    logits = np.zeros((9, 4))
    for name, estimator in ESTIMATORS.items():
        if isinstance(grid, estimator.envs):
            out = sample_gradients(grid, logits, name, model=model, n_trajectories=2, horizon=10, n_estimates=2)
            assert out.shape == (2, 9, 4) and np.isfinite(out).all()
