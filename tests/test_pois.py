"""POIS: the Renyi divergences against Monte-Carlo, the bound, the line search and offline ascent, the hyperpolicy's
natural gradient against the Hessian of the KL, and the episode batches the bound is built on."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import assert_unbiased
from mbpg.algos import get_algorithm, make_agent
from mbpg.algos.pois import Hyperpolicy, natural_gradient
from mbpg.envs import make
from mbpg.gradients.trajectories import collect_episodes
from mbpg.optim.pois import (
    ascend_bound,
    categorical_log_d2,
    gaussian_log_d2,
    parabolic_line_search,
    penalty_coefficient,
    surrogate_bound,
)


def gaussian_density(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("mean_p, std_p, mean_q, std_q", [(0.3, 0.8, 0.0, 1.0), (-0.5, 1.1, 0.2, 1.0),
                                                          (1.0, 0.5, 0.0, 0.6)])
def test_gaussian_d2_matches_monte_carlo(x64, mean_p, std_p, mean_q, std_q):
    # d2(P || Q) = E_Q[(p/q)^2]; these cases keep its fourth moment finite (4 std_q^2 > 3 std_p^2), so the sample
    # mean has a standard error.
    x = np.random.default_rng(0).normal(mean_q, std_q, size=400_000)
    ratios_squared = (gaussian_density(x, mean_p, std_p) / gaussian_density(x, mean_q, std_q)) ** 2
    exact = float(jnp.exp(gaussian_log_d2(jnp.array([mean_p]), jnp.array([std_p]), jnp.array([mean_q]),
                                          jnp.array([std_q]))))
    assert_unbiased(ratios_squared[:, None], np.array([exact]))
    # Independent dimensions multiply.
    both = gaussian_log_d2(jnp.array([mean_p, mean_q]), jnp.array([std_p, std_q]), jnp.array([mean_q, mean_q]),
                           jnp.array([std_q, std_q]))
    assert float(both) == pytest.approx(math.log(exact), rel=1e-9)


def test_gaussian_d2_is_infinite_not_nan_where_undefined():
    wide = gaussian_log_d2(jnp.array([0.0]), jnp.array([1.5]), jnp.array([0.0]), jnp.array([1.0]))
    assert jnp.isposinf(wide)  # 2 * 1^2 - 1.5^2 < 0: E_Q[(p/q)^2] diverges
    assert jnp.isposinf(gaussian_log_d2(jnp.array([0.0]), jnp.array([1.42]), jnp.array([0.0]),
                                        jnp.array([1.0])))
    same = gaussian_log_d2(jnp.array([0.2, -1.0]), jnp.array([0.7, 2.0]), jnp.array([0.2, -1.0]),
                           jnp.array([0.7, 2.0]))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    gradient = jax.grad(lambda s: gaussian_log_d2(jnp.zeros(1), s, jnp.zeros(1), jnp.ones(1)))(jnp.array([1.6]))
    assert not jnp.isnan(gradient).any()


def test_categorical_d2_is_the_sum_of_squared_ratios():
    p, q = jnp.array([0.2, 0.5, 0.3]), jnp.array([0.4, 0.4, 0.2])
    log_p, log_q = jnp.log(p), jnp.log(q)
    assert float(jnp.exp(categorical_log_d2(log_p, log_q))) == pytest.approx(float(jnp.sum(p**2 / q)), rel=1e-6)
    assert float(categorical_log_d2(log_q, log_q)) == pytest.approx(0.0, abs=1e-6)
    # a near-deterministic policy (logit gap 120): its small probability underflows to 0 in float32, which made
    # log d2 NaN even between a policy and itself
    logits = jnp.array([120.0, 0.0, 5.0])
    assert float(jax.nn.softmax(logits)[1]) == 0.0
    same = categorical_log_d2(jax.nn.log_softmax(logits), jax.nn.log_softmax(logits))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    moved = categorical_log_d2(jax.nn.log_softmax(logits + jnp.array([0.0, 2.0, 0.0])), jax.nn.log_softmax(logits))
    assert np.isfinite(float(moved)) and float(moved) >= 0.0


def test_bound_at_the_behaviour_parameters_is_mean_return_minus_the_sample_size_penalty():
    returns = jnp.array([1.0, 3.0, 2.0, 6.0])
    for self_normalised in (False, True):
        value = surrogate_bound(jnp.zeros(4), returns, jnp.zeros(()), 0.2, jnp.array(6.0), self_normalised)
        assert float(value) == pytest.approx(3.0 - 6.0 * 2.0 / 2.0, rel=1e-6)  # sqrt(0.8/0.2) = 2, sqrt(1/4)
    with pytest.raises(ValueError, match="delta must lie in"):
        penalty_coefficient(1.0)


def test_parabolic_line_search_lands_on_a_parabolas_vertex_and_never_returns_a_worse_point():
    def phi(alpha):
        return 1.0 + 2.0 * alpha - 0.5 * alpha**2  # vertex at alpha = 2

    alpha, value = parabolic_line_search(phi, jnp.array(1.0), jnp.array(2.0), jnp.array(0.3), 3)
    assert float(alpha) == pytest.approx(2.0, rel=1e-5) and float(value) == pytest.approx(3.0, rel=1e-6)
    # A direction that only gets worse: alpha = 0 is kept.
    alpha, value = parabolic_line_search(lambda a: 1.0 - a**2 - a, jnp.array(1.0), jnp.array(0.5), jnp.array(1.0), 5)
    assert float(value) <= 1.0 + 1e-7 and float(value) == pytest.approx(float(1.0 - alpha**2 - alpha), abs=1e-6)


def test_offline_ascent_reaches_the_maximum_of_a_concave_objective_with_and_without_preconditioning():
    target = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}

    def objective(params):
        return -jnp.sum((params["a"] - target["a"]) ** 2) - 4.0 * (params["b"] - target["b"]) ** 2

    start = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    for precondition in (None, lambda params, g: {"a": g["a"], "b": g["b"] / 4.0}):
        params, value, moved = ascend_bound(objective, start, 30, 8, 1e-9, precondition)
        assert float(value) == pytest.approx(0.0, abs=1e-5) and int(moved) >= 1
        np.testing.assert_allclose(params["a"], target["a"], atol=3e-3)


def test_hyperpolicy_natural_gradient_inverts_the_fisher_of_mean_and_log_std(x64):
    old = Hyperpolicy(jnp.array([0.3, -1.0]), jnp.log(jnp.array([0.5, 2.0])))

    def kl(flat):
        new = Hyperpolicy(flat[:2], flat[2:])
        var_old, var_new = jnp.exp(2 * old.log_std), jnp.exp(2 * new.log_std)
        return jnp.sum(new.log_std - old.log_std + (var_old + (old.mean - new.mean) ** 2) / (2 * var_new) - 0.5)

    fisher = jax.hessian(kl)(jnp.concatenate([old.mean, old.log_std]))  # the Fisher is the KL's Hessian there
    gradient = Hyperpolicy(jnp.array([1.0, 2.0]), jnp.array([-0.5, 3.0]))
    natural = natural_gradient(old, gradient)
    np.testing.assert_allclose(fisher @ jnp.concatenate([natural.mean, natural.log_std]),
                               jnp.concatenate([gradient.mean, gradient.log_std]), rtol=1e-10)


def test_collect_episodes_masks_after_termination_and_keeps_padding_finite():
    env = make("CartPole-v1")
    always_left = lambda params, obs, key: (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))  # noqa: E731
    episodes = collect_episodes(env, always_left, None, jax.random.key(0), 3, 500)
    lengths = episodes.alive.sum(-1)
    assert episodes.obs.shape == (3, 500, 4) and np.all((lengths > 5) & (lengths < 20))  # falls within steps
    alive = np.asarray(episodes.alive)
    assert np.all(alive[:, :-1] >= alive[:, 1:])  # once dead, dead for good
    assert np.all(np.isfinite(episodes.obs))
    np.testing.assert_array_equal(np.sum(episodes.rewards * episodes.alive, -1), lengths)


@pytest.mark.parametrize("algo, env_id", [("apois", "Pendulum-v1"), ("ppois", "Pendulum-v1")])
def test_pois_runs_on_continuous_actions(algo, env_id):
    config = get_algorithm(algo)[0](n_episodes=3, offline_iterations=2, line_search_iterations=2)
    agent = make_agent(algo, config, make(env_id))
    state, metrics = jax.jit(agent.train_chunk)(agent.init(jax.random.key(0)))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["real_env_steps"]) == 3 * 200
    action = agent.act(state, jnp.zeros(3), None)
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0


def test_pois_rejects_a_delta_outside_the_unit_interval():
    with pytest.raises(ValueError, match="--delta"):
        make_agent("ppois", get_algorithm("ppois")[0](delta=1.5), make("CartPole-v1"))


def test_apois_bound_stays_finite_for_a_near_deterministic_discrete_policy():
    """With its linear policy's weights scaled up (a near-deterministic policy, as a CartPole run reaching 500
    becomes), A-POIS's divergence was NaN at the behaviour parameters: the bound was NaN and no step was taken."""
    config = get_algorithm("apois")[0](n_episodes=3, offline_iterations=2, line_search_iterations=2)
    agent = make_agent("apois", config, make("CartPole-v1"))
    state = agent.init(jax.random.key(0))
    layer = lambda params: params.layers[-1].bias  # noqa: E731
    state = state.__class__(eqx.tree_at(layer, state.params, jnp.array([150.0, 0.0])), state.key)
    obs = jnp.array([0.05, 0.5, -0.05, -0.5])
    assert float(agent.policy.probs(state.params, obs).min()) == 0.0  # underflowed
    assert float(agent._step_log_d2(state.params, state.params, obs)) == pytest.approx(0.0, abs=1e-6)
    _, metrics = jax.jit(agent.train_chunk)(state)
    assert np.isfinite(float(metrics["bound"]))
