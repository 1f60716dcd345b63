"""GAMPS: gradient-aware weights, weighted maximum-likelihood fits, the loop and the two-area gridworld."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos.gamps import GAMPSConfig, fit_model, model_value_gradient, train_tabular
from mbpg.envs import gridworld
from mbpg.gradients import sample_trajectories
from mbpg.lab.exact import exact_gradient, exact_return
from mbpg.gradients import EstimatorOptions
from mbpg.gradients.fitted_model import fit_from_trajectories, transition_weights
from mbpg.lab import sample_gradients
from mbpg.lab.gradient_aware import (
    INTENDED,
    OPPOSITE,
    expected_counts,
    gradient_error_study,
    population_gradient,
    random_logits,
    summarise_errors,
    two_area_gridworld,
)
from mbpg.models import fit_tabular_model
from mbpg.models.gradient_aware import (
    DISPLACEMENTS,
    DisplacementModel,
    fit_linear_gaussian,
    fit_weighted_tabular,
    gamps_weights,
    prefix_log_ratios,
    score_norms,
    weighted_least_squares,
    trajectory_counts,
    weighted_counts,
)
from mbpg.policies import SoftmaxPolicy
from tests.conftest import assert_unbiased

# ----- weights -------------------------------------------------------------------------------------------------


def test_weights_on_a_hand_computed_trajectory():
    norms = jnp.array([[1.0, 2.0, 3.0]])
    # gamma^t * cumulative score norm: [1 * 1, 0.5 * 3, 0.25 * 6]
    np.testing.assert_allclose(gamps_weights(norms, 0.5, ratio="none"), [[1.0, 1.5, 1.5]], rtol=1e-6)
    # prefix ratios 2, 2 * 0.5 = 1, 1 * 8 = 8: raw, and clipped at 4
    log_ratios = jnp.log(jnp.array([[2.0, 1.0, 8.0]]))
    np.testing.assert_allclose(gamps_weights(norms, 0.5, log_ratios, ratio="none"), [[2.0, 1.5, 12.0]], rtol=1e-5)
    np.testing.assert_allclose(gamps_weights(norms, 0.5, log_ratios, ratio="clip", clip=4.0), [[2.0, 1.5, 6.0]],
                               rtol=1e-5)
    # self-normalised: each step's ratios divided by their mean over trajectories
    two = jnp.array([[1.0, 1.0], [1.0, 1.0]])
    ratios = jnp.log(jnp.array([[1.0, 3.0], [3.0, 1.0]]))
    np.testing.assert_allclose(gamps_weights(two, 1.0, ratios, ratio="self-normalised"),
                               [[0.5, 3.0], [1.5, 1.0]], rtol=1e-5)
    # a mask stops the weights (and the score sum) after the episode ended
    np.testing.assert_allclose(gamps_weights(norms, 1.0, ratio="none", mask=jnp.array([[1.0, 1.0, 0.0]])),
                               [[1.0, 3.0, 0.0]], rtol=1e-6)


def test_ended_steps_and_overflowing_ratios_leave_the_weights_finite():
    """A padded step's ratio (here e^100, inf in float32) once made that step NaN (inf * 0), and, self-normalised,
    every running trajectory's weight at that step; a live log-ratio above 88 made self-normalised weights NaN."""
    norms = jnp.ones((2, 3))
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    log_ratios = jnp.array([[0.0, 0.5, 100.0], [0.0, -0.5, 0.2]])
    for ratio in ("none", "clip", "self-normalised"):
        weights = np.asarray(gamps_weights(norms, 1.0, log_ratios, ratio=ratio, mask=mask))
        assert np.isfinite(weights).all(), ratio
        assert weights[0, 2] == 0.0, ratio
    # self-normalised at step 2, where only trajectory 1 runs: its ratio over the mean of the running ones is 1
    weights = gamps_weights(norms, 1.0, log_ratios, ratio="self-normalised", mask=mask)
    np.testing.assert_allclose(weights[1, 2], 3.0, rtol=1e-6)
    # two live ratios e^89 and e^88: self-normalised they are 2e/(e+1) and 2/(e+1), whatever their size
    big = gamps_weights(jnp.ones((2, 1)), 1.0, jnp.array([[89.0], [88.0]]), ratio="self-normalised")
    np.testing.assert_allclose(big[:, 0], [2 * np.e / (np.e + 1), 2 / (np.e + 1)], rtol=1e-5)


def test_score_norms_and_prefix_ratios_match_the_softmax_formulas():
    policy = SoftmaxPolicy()
    logits = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    states, actions = jnp.array([[0, 1, 1]]), jnp.array([[1, 0, 1]])
    probs = jax.nn.softmax(logits, -1)
    # grad of log pi(a|s) w.r.t. the logits is e_a - pi(.|s) in row s, zero elsewhere
    expected = [np.linalg.norm(np.eye(2)[a] - probs[s]) for s, a in zip([0, 1, 1], [1, 0, 1])]
    np.testing.assert_allclose(score_norms(policy, logits, states, actions)[0], expected, rtol=1e-5)
    behaviour = jnp.log(jnp.full((1, 3), 0.5))
    log_pi = [float(jnp.log(probs[s, a])) for s, a in zip([0, 1, 1], [1, 0, 1])]
    np.testing.assert_allclose(prefix_log_ratios(policy, logits, states, actions, behaviour)[0],
                               np.cumsum(np.array(log_pi) - np.log(0.5)), rtol=1e-5)


def test_bad_weight_inputs_are_named():
    with pytest.raises(ValueError, match=r"shape \[N, H\]"):
        gamps_weights(jnp.ones(3), 0.9)
    with pytest.raises(ValueError, match="ratio must be"):
        gamps_weights(jnp.ones((1, 3)), 0.9, ratio="bogus")
    with pytest.raises(ValueError, match="clip must be > 0"):
        gamps_weights(jnp.ones((1, 3)), 0.9, jnp.zeros((1, 3)), clip=0.0)


# ----- weighted maximum likelihood ---------------------------------------------------------------------------------


def _samples(env, n=40, horizon=25, seed=0):
    logits = jnp.asarray(random_logits(env, seed=3), jnp.float32)
    batch = sample_trajectories(env, SoftmaxPolicy(), logits, jax.random.key(seed), n, horizon)
    return logits, batch


def test_displacement_fit_with_unit_weights_is_the_maximum_likelihood_fit():
    env, model_class = two_area_gridworld()
    _, batch = _samples(env)
    q = model_class.fit(env, batch.states, batch.actions, batch.next_states)
    ones = model_class.fit(env, batch.states, batch.actions, batch.next_states, np.ones(batch.states.size))
    np.testing.assert_array_equal(q, ones)
    # Optimality (KKT) of the concave log-likelihood on the simplex: d loglik / d q[a, k] equals the action's total
    # count wherever q[a, k] > 0, and is at most that where q[a, k] = 0.
    counts = weighted_counts(env, batch.states, batch.actions, batch.next_states)
    counts[list(model_class.fixed)] = 0
    indicator = model_class.indicator()
    probs = np.einsum("ak,skt->sat", q, indicator)
    derivative = np.einsum("sat,skt->ak", np.where(counts > 0, counts / np.where(probs > 0, probs, 1), 0), indicator)
    totals = counts.sum((0, 2))[:, None]
    positive = q > 1e-6
    np.testing.assert_allclose(derivative[positive], np.broadcast_to(totals, q.shape)[positive], rtol=1e-4)
    assert (derivative[~positive] <= np.broadcast_to(totals, q.shape)[~positive] * (1 + 1e-4)).all()
    # and no random point of the simplex does better
    ll = model_class.log_likelihood(q, counts)
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = rng.dirichlet(np.ones(len(DISPLACEMENTS)), size=4)
        assert model_class.log_likelihood(0.9 * q + 0.1 * other, counts) <= ll + 1e-9


def test_weighted_fit_recovers_the_true_model_when_the_class_contains_it():
    env = gridworld(4, 4, slip=0.2, gamma=0.9)  # uniform slip: exactly one displacement distribution per action
    model_class = DisplacementModel(4, 4, fixed=(15,))
    truth = 0.8 * np.eye(5)[:4] + 0.2 * np.concatenate([np.full((4, 4), 0.25), np.zeros((4, 1))], 1)
    # Exact expected counts under any positive weighting of the pairs: the fit is exact.
    pair_weights = np.random.default_rng(1).uniform(0.1, 5.0, (16, 4, 1))
    q = model_class.fit_counts(np.asarray(env.transitions) * pair_weights)
    np.testing.assert_allclose(q, truth, atol=1e-6)
    np.testing.assert_allclose(model_class.to_mdp(q, env).transitions, env.transitions, atol=1e-6)
    # From sampled data with GAMPS weights: close to the truth.
    logits, batch = _samples(env)
    weights = gamps_weights(score_norms(SoftmaxPolicy(), logits, batch.states, batch.actions), env.gamma,
                            ratio="none")
    q = model_class.fit(env, batch.states, batch.actions, batch.next_states, np.asarray(weights))
    np.testing.assert_allclose(q, truth, atol=0.1)


def test_weighting_decides_which_area_a_misspecified_model_fits():
    env, model_class = two_area_gridworld()
    upper = (np.arange(25) // 5 < 3)[:, None, None]
    transitions = np.asarray(env.transitions)
    np.testing.assert_allclose(model_class.fit_counts(transitions * upper), OPPOSITE, atol=1e-6)
    np.testing.assert_allclose(model_class.fit_counts(transitions * ~upper), INTENDED, atol=1e-6)


def test_full_tabular_weighted_fit_with_unit_weights_is_the_count_model():
    env = gridworld(3, 3, slip=0.3, gamma=0.9)
    _, batch = _samples(env, n=10, horizon=20)
    ours = fit_weighted_tabular(env, batch.states, batch.actions, batch.next_states)
    theirs = fit_tabular_model(env, batch.states, batch.actions, batch.next_states, prior=0.0)
    np.testing.assert_allclose(ours.transitions, theirs.transitions, atol=1e-12)


def test_displacement_fit_rejects_what_it_cannot_explain():
    env, model_class = two_area_gridworld()
    with pytest.raises(ValueError, match="not one displacement away"):
        DisplacementModel(5, 5).fit(env, [24, 0], [0, 0], [20, 5])  # the goal's reset jump, goal not fixed
    with pytest.raises(ValueError, match="finite and >= 0"):
        model_class.fit(env, [0], [0], [0], [-1.0])
    with pytest.raises(ValueError, match="states but the grid"):
        DisplacementModel(3, 3).fit(env, [0], [0], [0])


def test_linear_gaussian_fit_unit_weights_is_least_squares_and_recovers_a_linear_system():
    rng = np.random.default_rng(0)
    A, B, c = np.array([[0.9, 0.1], [0.0, 0.8]]), np.array([[0.0], [0.5]]), np.array([0.2, -0.1])
    states, actions = rng.normal(size=(500, 2)), rng.normal(size=(500, 1))
    next_states = states @ A.T + actions @ B.T + c + 0.01 * rng.normal(size=(500, 2))
    model = fit_linear_gaussian(states, actions, next_states)
    inputs = np.concatenate([states, actions, np.ones((500, 1))], 1)
    solution, *_ = np.linalg.lstsq(inputs, next_states, rcond=None)
    np.testing.assert_allclose(np.concatenate([model.A, model.B, model.c[:, None]], 1), solution.T, atol=1e-6)
    np.testing.assert_allclose(model.A, A, atol=0.01)
    np.testing.assert_allclose(model.c, c, atol=0.01)
    np.testing.assert_allclose(np.diag(model.noise_cov), 1e-4, rtol=0.2)
    # zero weight on half the data = fitting the other half
    weights = np.r_[np.ones(250), np.zeros(250)]
    half = fit_linear_gaussian(states[:250], actions[:250], next_states[:250])
    weighted = fit_linear_gaussian(states, actions, next_states, weights)
    np.testing.assert_allclose(weighted.A, half.A, atol=1e-6)
    with pytest.raises(ValueError, match="all weights are zero"):
        fit_linear_gaussian(states, actions, next_states, np.zeros(500))
    # weighted ML does not see the weights' overall scale: the ridge (relative to the mean weight) does not either
    for scale in (1e-11, 1e6):
        scaled = fit_linear_gaussian(states, actions, next_states, scale * weights)
        np.testing.assert_allclose(scaled.A, weighted.A, atol=1e-9)
        np.testing.assert_allclose(scaled.noise_cov, weighted.noise_cov, rtol=1e-6)
    # a 1-D array is N scalar states or one N-dimensional transition: refused, with the fix
    with pytest.raises(ValueError, match=r"pass x\[:, None\]"):
        fit_linear_gaussian(states[:, 0], actions[:, 0], next_states[:, 0])


def test_zero_weight_rows_drop_out_of_the_weighted_fit_even_when_not_finite():
    inputs = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [jnp.inf, 1.0]])
    targets = jnp.array([[1.0], [2.0], [3.0], [jnp.nan]])
    weights = jnp.array([1.0, 1.0, 1.0, 0.0])
    solution, cov = weighted_least_squares(inputs, targets, weights)
    clean_solution, clean_cov = weighted_least_squares(inputs[:3], targets[:3], weights[:3])
    np.testing.assert_allclose(solution, clean_solution, rtol=1e-5)
    np.testing.assert_allclose(cov, clean_cov, rtol=1e-5)


# ----- the claim, the loop, the lab -------------------------------------------------------------------------------


def test_gradient_aware_model_gives_a_more_accurate_population_gradient_on_the_two_area_gridworld():
    """The paper's claim at the population level: many trajectories, so the error left is the model class's."""
    env, model_class = two_area_gridworld()
    logits = random_logits(env)
    batch = sample_trajectories(env, SoftmaxPolicy(), jnp.asarray(logits, jnp.float32), jax.random.key(0), 400, 66)
    log_probs = jnp.zeros(batch.rewards.shape)  # on-policy: ratios are not used for the current batch's fit
    truth = exact_gradient(env, logits)
    errors = {}
    for name in ("ml", "gamps"):
        model, _ = fit_model(env, model_class, jnp.asarray(logits, jnp.float32), [(batch, log_probs)], name,
                             ratio="none")
        errors[name] = np.linalg.norm(exact_gradient(env, logits, "mvg", model) - truth)
    assert errors["gamps"] < 0.8 * errors["ml"], errors


def test_gamps_loop_is_seeded_and_improves_the_return():
    env, model_class = two_area_gridworld()
    config = GAMPSConfig(iterations=12, n_trajectories=10, learning_rate=5.0)
    first, history = train_tabular(env, model_class, config, jax.random.key(0))
    again, _ = train_tabular(env, model_class, config, jax.random.key(0))
    np.testing.assert_array_equal(first, again)
    assert len(history["logits"]) == 13 and len(history["gradient"]) == 12
    assert exact_return(env, first) > exact_return(env, np.zeros((25, 4))) + 0.05
    with pytest.raises(ValueError, match="gradient must be"):
        GAMPSConfig(gradient="mle")
    with pytest.raises(ValueError, match="learning_rate"):
        GAMPSConfig(learning_rate=0.0)


def test_model_value_gradient_with_the_true_model_matches_the_exact_gradient_on_average():
    env = gridworld(3, 3, slip=0.2, gamma=0.7)
    logits = random_logits(env)
    batch = sample_trajectories(env, SoftmaxPolicy(), jnp.asarray(logits, jnp.float32), jax.random.key(1), 2000, 20)
    estimate = np.asarray(model_value_gradient(env, env, jnp.asarray(logits, jnp.float32), batch))
    truth = exact_gradient(env, logits)
    assert np.linalg.norm(estimate - truth) < 0.25 * np.linalg.norm(truth)


def test_gradient_error_study_rows_are_paired_and_summarised():
    env, model_class = two_area_gridworld()
    rows = gradient_error_study(env, model_class, random_logits(env), [4], n_seeds=3)
    assert len(rows) == 3 and all(np.isfinite([r.error_ml, r.error_gamps, r.error_true_model]).all() for r in rows)
    summary = summarise_errors(rows)[0]
    assert summary["seeds"] == 3
    assert summary["paired_difference"] == pytest.approx(np.mean([r.error_ml - r.error_gamps for r in rows]))
    with pytest.raises(ValueError, match="upper_rows"):
        two_area_gridworld(upper_rows=5)


# ----- the estimator entry: the model is fitted inside each draw ---------------------------------------------------


def _draws(env, logits, estimator, model_class, n_trajectories, n_estimates, horizon, seed=0):
    return sample_gradients(env, logits, estimator, n_trajectories=n_trajectories, horizon=horizon,
                            n_estimates=n_estimates, seed=seed, options=EstimatorOptions(model_class=model_class))


def test_expected_counts_match_monte_carlo_weighted_counts():
    """The exact population counts (the recursion behind `population_gradient`) against sampled trajectories."""
    env = gridworld(3, 3, slip=0.3, gamma=0.8)
    logits = random_logits(env)
    batch = sample_trajectories(env, SoftmaxPolicy(), jnp.asarray(logits, jnp.float32), jax.random.key(4), 3000, 12)
    for weighting in ("gamps", "ml"):
        weights = transition_weights(batch, SoftmaxPolicy(), jnp.asarray(logits, jnp.float32), env.gamma, weighting)
        per_trajectory = jax.vmap(lambda s, a, t, w: trajectory_counts(9, 4, s, a, t, w))(
            batch.states, batch.actions, batch.next_states, weights)
        per_trajectory = np.asarray(per_trajectory, np.float64)
        assert_unbiased(per_trajectory, expected_counts(env, logits, 12, weighting))


def test_gamps_estimator_is_unbiased_when_the_class_contains_the_truth():
    env = gridworld(4, 4, slip=0.2, gamma=0.7)  # uniform slip: one displacement distribution per action is exact
    model_class = DisplacementModel(4, 4, fixed=(15,))
    logits = random_logits(env)
    truth = exact_gradient(env, logits)
    np.testing.assert_allclose(population_gradient(env, model_class, logits, 26), truth, atol=1e-7)
    draws = _draws(env, logits, "gamps", model_class, n_trajectories=8, n_estimates=400, horizon=26)
    assert_unbiased(draws, truth)


def test_gamps_estimator_beats_its_ml_twin_on_the_two_area_gridworld():
    env, model_class = two_area_gridworld()
    logits = random_logits(env)
    truth = exact_gradient(env, logits)
    # Population (N -> infinity): the misspecified class leaves a bias either way, GAMPS's is smaller.
    bias = {w: np.linalg.norm(population_gradient(env, model_class, logits, 66, w) - truth) for w in ("gamps", "ml")}
    assert bias["gamps"] < 0.75 * bias["ml"], bias
    # Sampled, paired (same seed = same trajectories): GAMPS's error is below ML's in mean and in most draws.
    errors = {}
    for name in ("gamps", "gamps-ml"):
        draws = _draws(env, logits, name, model_class, n_trajectories=10, n_estimates=40, horizon=66)
        errors[name] = np.linalg.norm((draws - truth).reshape(len(draws), -1), axis=1)
    difference = errors["gamps-ml"] - errors["gamps"]
    assert difference.mean() > 4 * difference.std(ddof=1) / np.sqrt(len(difference)), difference.mean()
    assert (difference > 0).mean() > 0.8


def test_jitted_displacement_fit_matches_the_host_fit():
    env, model_class = two_area_gridworld()
    _, batch = _samples(env)
    counts = weighted_counts(env, batch.states, batch.actions, batch.next_states)
    host = model_class.fit_counts(counts)
    jitted = jax.jit(model_class.fit_counts_jax)(jnp.asarray(counts, jnp.float32))
    np.testing.assert_allclose(jitted, host, atol=1e-4)
    fitted = fit_from_trajectories(batch, env, SoftmaxPolicy(), jnp.zeros((25, 4)), model_class, "ml")
    np.testing.assert_allclose(fitted.transitions, model_class.to_mdp(host, env).transitions, atol=1e-4)
