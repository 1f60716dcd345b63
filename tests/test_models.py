import jax
import numpy as np
import pytest

from mbpg.envs import double_integrator, garnet, random_lqr
from mbpg.models import (
    fit_linear_model,
    fit_tabular_model,
    learned_model,
    mixture_model,
    perturbed_lqr,
    relative_dynamics_error,
    sample_linear_transitions,
    total_variation,
)
from mbpg.values import evaluate_tabular


@pytest.fixture(scope="module")
def mdp():
    return garnet(6, 2, 3, gamma=0.8, seed=2)


def test_maximum_likelihood_counts_on_a_handmade_dataset(mdp):
    model = fit_tabular_model(mdp, states=[0, 0, 0, 1], actions=[1, 1, 1, 0], next_states=[2, 2, 5, 0],
                              rewards=[1.0, 2.0, 3.0, -1.0], prior=0.0)
    t, r = np.asarray(model.transitions), np.asarray(model.rewards)
    assert np.allclose(t[0, 1], [0, 0, 2 / 3, 0, 0, 1 / 3])
    assert np.allclose(t[1, 0], [1, 0, 0, 0, 0, 0])
    assert np.allclose(t[3, 0], 1 / 6)  # never seen: uniform
    assert r[0, 1] == 2.0 and r[1, 0] == -1.0 and r[3, 0] == np.asarray(mdp.rewards)[3, 0]


def test_dirichlet_prior_smooths_counts(mdp):
    model = fit_tabular_model(mdp, [0], [0], [3], prior=1.0)
    assert np.allclose(np.asarray(model.transitions)[0, 0], np.array([1, 1, 1, 2, 1, 1]) / 7)


def test_learned_model_converges_to_the_truth(mdp):
    errors = [total_variation(mdp, learned_model(mdp, jax.random.key(0), n)) for n in (2, 20, 2000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03


def test_fit_rejects_out_of_range_and_ragged_data(mdp):
    with pytest.raises(ValueError, match=r"next_states must be integers in \[0, 6\)"):
        fit_tabular_model(mdp, [0], [0], [6])
    with pytest.raises(ValueError, match="same length"):
        fit_tabular_model(mdp, [0, 1], [0], [1])
    with pytest.raises(ValueError, match="prior must be >= 0"):
        fit_tabular_model(mdp, [0], [0], [1], prior=-1)


def test_mixture_error_is_linear_in_eps(mdp):
    key = jax.random.key(1)
    assert total_variation(mdp, mixture_model(mdp, 0.0, key=key)) == 0
    full = total_variation(mdp, mixture_model(mdp, 1.0, key=key))
    assert np.isclose(total_variation(mdp, mixture_model(mdp, 0.25, key=key)), 0.25 * full)
    with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
        mixture_model(mdp, 1.5, key=key)
    with pytest.raises(ValueError, match="needs key="):
        mixture_model(mdp, 0.5)


def test_adversarial_mixture_moves_mass_to_the_worst_state(mdp):
    logits = np.zeros((6, 2))
    worst = int(np.argmin(evaluate_tabular(mdp, jax.nn.softmax(logits, -1)).values))
    model = mixture_model(mdp, 1.0, "adversarial", logits=logits)
    assert np.allclose(np.asarray(model.transitions)[:, :, worst], 1.0)
    with pytest.raises(ValueError, match="needs logits="):
        mixture_model(mdp, 0.5, "adversarial")


def test_least_squares_recovers_a_linear_system():
    lqr = random_lqr(3, 2, seed=0).replace(noise_cov=np.zeros((3, 3)))
    model = fit_linear_model(lqr, *sample_linear_transitions(lqr, jax.random.key(0), 20))
    assert relative_dynamics_error(lqr, model) < 1e-5
    noisy = double_integrator(noise=0.01)
    model = fit_linear_model(noisy, *sample_linear_transitions(noisy, jax.random.key(1), 5000))
    assert relative_dynamics_error(noisy, model) < 0.02
    assert np.allclose(np.asarray(model.noise_cov), 0.01 * np.eye(2), atol=0.002)
    with pytest.raises(ValueError, match="at least n \\+ m = 3 transitions"):
        fit_linear_model(noisy, np.zeros((2, 2)), np.zeros((2, 1)), np.zeros((2, 2)))


def test_perturbation_dial_sets_the_relative_error():
    lqr = random_lqr(3, 2, seed=0)
    for eps in (0.0, 0.1, 0.3):
        model = perturbed_lqr(lqr, eps, jax.random.key(2))
        for name in ("A", "B"):  # each matrix is off by exactly eps, relative to its own norm
            true, off = np.asarray(getattr(lqr, name)), np.asarray(getattr(model, name))
            assert np.isclose(np.linalg.norm(off - true) / np.linalg.norm(true), eps), name
