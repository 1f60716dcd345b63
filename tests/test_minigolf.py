"""The 1-D minigolf environment (physics of a putt, episode ends, the Gymnasium API) and the continuous GAMPS
parts that run on it (stop models, weights, Q, the policy gradient)."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mbpg.envs import as_gymnasium, make
from mbpg.envs.minigolf import GRAVITY, Minigolf

BENIGN = re.compile(r"infinity|recommend using a symmetric and normalized space")


def _putt(env, x, speed):
    return env.step(jnp.array([x, 0.0, 0.0]), jnp.array([speed]), jax.random.key(0))


def test_friction_stops_a_slow_ball_short_of_the_hole():
    env = Minigolf(noise_std=0.0)
    deceleration = 5 / 7 * 0.131 * GRAVITY
    state, reward = _putt(env, 5.0, 2.0)
    assert float(reward) == -1.0 and not bool(env.is_terminal(state))
    assert float(state[0]) == pytest.approx(5.0 - 2.0**2 / (2 * deceleration), rel=1e-5)
    # a rougher green (friction growing with distance) stops the same putt sooner
    rough, _ = _putt(Minigolf(noise_std=0.0, friction_far=0.19), 5.0, 2.0)
    assert float(rough[0]) > float(state[0])


def test_friction_nearer_the_hole_than_the_start_band_stays_the_near_friction():
    """Balls start in [min_position, max_position] but short putts leave them nearer the hole; the friction line
    must not be extended there (at min_position=10, friction_far=1 it would be -0.30 at x=5 and push the ball back)."""
    env = Minigolf(noise_std=0.0, min_position=10.0, friction_far=1.0)
    np.testing.assert_allclose(env.friction_at(jnp.array([0.0, 5.0, 10.0, 15.0, 20.0])),
                               [0.131, 0.131, 0.131, 0.131 + 0.5 * (1.0 - 0.131), 1.0], rtol=1e-6)
    state, _ = _putt(env, 5.0, 1.0)
    assert float(state[0]) == pytest.approx(5.0 - 1.0 / (2 * 5 / 7 * 0.131 * GRAVITY), rel=1e-5)


def test_a_putt_at_the_right_speed_drops_and_a_fast_one_overshoots():
    env = Minigolf(noise_std=0.0)
    v_min = np.sqrt(2 * 5 / 7 * 0.131 * GRAVITY * 5.0)
    holed, reward = _putt(env, 5.0, v_min + 0.05)
    assert float(reward) == 0.0 and bool(env.is_terminal(holed)) and float(holed[0]) == 0.0
    over, reward = _putt(env, 5.0, v_min + 2.0)
    assert float(reward) == -100.0 and bool(env.is_terminal(over))
    # the state records where each putt would have stopped: past the hole by more than the window for the overshoot
    assert float(holed[2]) == pytest.approx(5.0 - (v_min + 0.05) ** 2 / (2 * 5 / 7 * 0.131 * GRAVITY), rel=1e-5)
    assert -float(env.hole_window(jnp.asarray(5.0))) <= float(holed[2]) <= 0.0
    assert float(over[2]) < -float(env.hole_window(jnp.asarray(5.0)))
    # once ended, the state is absorbing and pays nothing
    after, reward = env.step(over, jnp.array([3.0]), jax.random.key(1))
    np.testing.assert_array_equal(after, over)
    assert float(reward) == 0.0


def test_noise_scales_the_putt_and_actions_are_clipped():
    env = Minigolf()
    keys = jax.random.split(jax.random.key(0), 2000)
    states, _ = jax.vmap(lambda k: env.step(jnp.array([19.0, 0.0, 0.0]), jnp.array([2.0]), k))(keys)
    rolled = 19.0 - np.asarray(states[:, 0])
    deceleration = 5 / 7 * 0.131 * GRAVITY
    # distance = u^2 / (2 d) with u = 2 (1 + 0.3 eps): mean 4 (1 + 0.09) / (2 d)
    assert rolled.mean() == pytest.approx(4 * 1.09 / (2 * deceleration), rel=0.05)
    clipped, _ = _putt(Minigolf(noise_std=0.0), 19.0, 50.0)
    reference, _ = _putt(Minigolf(noise_std=0.0), 19.0, 10.0)
    np.testing.assert_array_equal(clipped, reference)


def test_reset_is_uniform_on_the_green_and_registered():
    env = make("Minigolf-v0")
    assert isinstance(env, Minigolf) and env.max_episode_steps == 20
    starts = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 1000))
    assert 0.0 <= float(starts[:, 0].min()) and float(starts[:, 0].max()) <= 20.0
    assert float(starts[:, 0].mean()) == pytest.approx(10.0, abs=0.6)
    assert not bool(env.is_terminal(starts).any())


def test_check_env_passes():
    env = as_gymnasium(Minigolf())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    problems = [str(w.message) for w in caught if not BENIGN.search(str(w.message))]
    assert not problems, problems


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="friction must be > 0"):
        Minigolf(friction=0.0)
    with pytest.raises(ValueError, match="min_action < max_action"):
        Minigolf(min_action=5.0, max_action=1.0)


# ----- GAMPS on minigolf: the model's Q, the weighted fit, the loop ----------------------------------------------


def test_model_q_is_the_return_of_the_model_under_the_rules_and_the_time_limit():
    from mbpg.algos.gamps_continuous import GAMMA, Batch, PuttPolicy, model_q

    env = Minigolf()
    x = jnp.full((1, 20), 5.0)
    batch = Batch(x, jnp.ones((1, 20)), x, x, jnp.ones((1, 20), bool), x)
    # Deterministic model "every putt stops 0.5 closer": 9 short putts (-1 each) from 5.0, then one that drops.
    q = model_q(env, PuttPolicy(), jnp.zeros(2), jnp.array([1.0, 0.0, -0.5]), jnp.asarray(0.0), batch,
                jax.random.key(0), 2, model="linear")
    np.testing.assert_allclose(q[0, 0], -sum(GAMMA**k for k in range(9)), rtol=1e-5)
    np.testing.assert_allclose(q[0, 15], -sum(GAMMA**k for k in range(5)), rtol=1e-5)  # 5 putts left at t = 15
    overshoot = model_q(env, PuttPolicy(), jnp.zeros(2), jnp.array([0.0, 0.0, -10.0]), jnp.asarray(0.0), batch,
                        jax.random.key(0), 2, model="linear")
    np.testing.assert_allclose(overshoot, -100.0)
    # 'travel': a putt of strength 1 travels q = 0.45 (the policy putts 1.0 with a negligible std): 11 short putts
    # leave 0.05, the 12th drops.
    travel = model_q(env, PuttPolicy(std=1e-6), jnp.array([0.0, 1.0]), jnp.array([0.45]), jnp.asarray(0.0), batch,
                     jax.random.key(0), 2, model="travel")
    np.testing.assert_allclose(travel[0, 0], -sum(GAMMA**k for k in range(11)), rtol=1e-4)


def test_travel_model_fits_the_mean_travel_factor_of_the_physics():
    """q = (x - y) / a^2 is (1 + eps)^2 / (2 d) in the physics, mean (1 + noise_std^2) / (2 d): the unweighted
    fit recovers it (and its std) from real putts; clipped putts below MIN_FIT_ACTION are left out."""
    from mbpg.algos.gamps_continuous import MIN_FIT_ACTION, PuttPolicy, collect, fit_stop_model

    env = Minigolf()
    policy = PuttPolicy()
    params = jnp.array([0.8, 0.0])
    batch = collect(env, policy, params, jax.random.key(3), 400)
    buffer = jax.tree.map(lambda a: a[None], batch)
    (mean,), std = fit_stop_model(env, policy, params, buffer, jnp.ones(1, bool), "ml", 10.0, model="travel")
    d = float(env.deceleration(jnp.asarray(1.0)))
    truth_mean = (1 + env.noise_std ** 2) / (2 * d)
    # Var[(1 + e)^2] = 4 s^2 + 2 s^4 for e ~ N(0, s^2)
    truth_std = np.sqrt(4 * env.noise_std ** 2 + 2 * env.noise_std ** 4) / (2 * d)
    used = np.asarray(batch.alive) & (np.clip(np.asarray(batch.actions), 1e-5, 10) >= MIN_FIT_ACTION)
    assert used.sum() > 1000 and (~used & np.asarray(batch.alive)).sum() > 0  # some putts are left out
    np.testing.assert_allclose(float(mean), truth_mean, rtol=0.05)
    np.testing.assert_allclose(float(std), truth_std, rtol=0.1)


def test_unweighted_stop_model_is_least_squares_on_the_live_transitions_and_the_loop_is_seeded():
    from mbpg.algos.gamps_continuous import (ContinuousGAMPSConfig, PuttPolicy, collect, fit_stop_model, make_train,
                                             model_q, predict_stop)

    env = Minigolf()
    policy = PuttPolicy()
    params = jnp.array([1.2, 0.0])
    batch = collect(env, policy, params, jax.random.key(1), 6)
    buffer = jax.tree.map(lambda a: a[None], batch)
    coefficients, _ = fit_stop_model(env, policy, params, buffer, jnp.ones(1, bool), "ml", 10.0, model="linear")
    live = np.asarray(batch.alive)
    inputs = np.stack([np.asarray(batch.x)[live], np.clip(np.asarray(batch.actions)[live], 1e-5, 10.0),
                       np.ones(live.sum())], 1)
    expected, *_ = np.linalg.lstsq(inputs, np.asarray(batch.stops)[live], rcond=None)
    np.testing.assert_allclose(coefficients, expected, rtol=1e-3, atol=1e-3)
    config = ContinuousGAMPSConfig(iterations=3, n_episodes=4, n_rollouts=2, buffer_batches=2, eval_episodes=8)
    train = jax.jit(make_train(env, config))
    first, metrics = train(jax.random.key(0))
    again, _ = train(jax.random.key(0))
    np.testing.assert_array_equal(first, again)
    assert metrics["eval_return"].shape == (3,) and np.isfinite(np.asarray(metrics["coefficients"])).all()
    with pytest.raises(ValueError, match="gradient must be"):
        ContinuousGAMPSConfig(gradient="mle")
    with pytest.raises(ValueError, match="n_episodes must be >= 2"):
        ContinuousGAMPSConfig(n_episodes=1)
    with pytest.raises(ValueError, match="model must be one of 'travel', 'linear'"):
        ContinuousGAMPSConfig(model="quadratic")
    for call in (lambda: predict_stop(env, "quadratic", coefficients, 0.1, 1.0, 1.0, jax.random.key(0)),
                 lambda: model_q(env, policy, params, coefficients, 0.1, batch, jax.random.key(0), 1, "quadratic")):
        with pytest.raises(ValueError, match="model must be one of"):  # not silently the 'linear' class
            call()


def test_gamps_weighted_fits_and_the_policy_gradient_match_loops_over_an_off_policy_buffer():
    """The GAMPS weight of step t, gamma^t * min(prefix likelihood ratio, clip) * sum of score norms up to t, the two
    model classes fitted with it, and the leave-one-out baselined score-function gradient, each against plain loops
    over a buffer of two batches (one from older parameters: ratios != 1) and one empty slot."""
    from mbpg.algos.gamps_continuous import GAMMA, MIN_FIT_ACTION, PuttPolicy, collect, fit_stop_model, \
        policy_gradient
    from mbpg.values import reward_to_go

    env, policy = Minigolf(), PuttPolicy(0.5)
    current, older = jnp.array([1.1, -0.05]), jnp.array([0.9, 0.1])
    new_batch = collect(env, policy, current, jax.random.key(1), 5)
    old_batch = collect(env, policy, older, jax.random.key(2), 5)
    buffer = jax.tree.map(lambda *a: jnp.stack(a), new_batch, old_batch, jax.tree.map(jnp.zeros_like, new_batch))
    filled = jnp.array([True, True, False])
    theta = np.asarray(current, np.float64)

    def features(x):
        return np.array([np.sqrt(max(x, 0.0)), 1.0])

    def log_prob(x, a):
        return -0.5 * ((a - theta @ features(x)) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)

    def score(x, a):
        return (a - theta @ features(x)) / 0.5**2 * features(x)

    rows = []  # (x, a, stop, weight) of every live step of the filled slots
    for slot in range(2):
        for i in range(5):
            log_ratio, norms = 0.0, 0.0
            for t in range(buffer.x.shape[2]):
                x, a = float(buffer.x[slot, i, t]), float(buffer.actions[slot, i, t])
                if not bool(buffer.alive[slot, i, t]):
                    break
                log_ratio += log_prob(x, a) - float(buffer.log_probs[slot, i, t])
                norms += np.linalg.norm(score(x, a))
                rows.append((x, a, float(buffer.stops[slot, i, t]), GAMMA**t * min(np.exp(log_ratio), 10.0) * norms))
    x, a, stop, w = np.array(rows).T
    assert len(rows) > 10 and w.std() > 0.1 * w.mean()  # the weights do vary
    putt = np.clip(a, env.min_action, env.max_action)
    strong = putt >= MIN_FIT_ACTION
    travel = (x - stop)[strong] / putt[strong] ** 2
    mean = np.sum(w[strong] * travel) / np.sum(w[strong])
    std = np.sqrt(np.sum(w[strong] * (travel - mean) ** 2) / np.sum(w[strong]))
    (coefficient,), noise = fit_stop_model(env, policy, current, buffer, filled, "gamps", 10.0, "travel")
    np.testing.assert_allclose([float(coefficient), float(noise)], [mean, std], rtol=1e-4)
    inputs = np.stack([x, putt, np.ones_like(x)], 1)
    linear = np.linalg.solve(inputs.T @ (w[:, None] * inputs), inputs.T @ (w * stop))
    residual = stop - inputs @ linear
    coefficients, noise = fit_stop_model(env, policy, current, buffer, filled, "gamps", 10.0, "linear")
    np.testing.assert_allclose(coefficients, linear, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(noise), np.sqrt(np.sum(w * residual**2) / w.sum()), rtol=1e-4)

    signal = np.asarray(reward_to_go(new_batch.rewards * new_batch.alive, GAMMA)) * np.asarray(new_batch.alive)
    n = signal.shape[0]
    expected = np.zeros(2)
    for i in range(n):
        for t in range(signal.shape[1]):
            if bool(new_batch.alive[i, t]):
                baseline = (signal[:, t].sum() - signal[i, t]) / (n - 1)  # the other episodes' mean at t
                expected += GAMMA**t * (signal[i, t] - baseline) * score(float(new_batch.x[i, t]),
                                                                          float(new_batch.actions[i, t]))
    gradient = policy_gradient(policy, current, new_batch, reward_to_go(new_batch.rewards * new_batch.alive, GAMMA))
    np.testing.assert_allclose(gradient, expected / n, rtol=1e-4, atol=1e-5)
