"""The 1-D minigolf environment: physics of a putt, episode ends, and the Gymnasium API."""

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
    return env.step(jnp.array([x, 0.0]), jnp.array([speed]), jax.random.key(0))


def test_friction_stops_a_slow_ball_short_of_the_hole():
    env = Minigolf(noise_std=0.0)
    deceleration = 5 / 7 * 0.131 * GRAVITY
    state, reward = _putt(env, 5.0, 2.0)
    assert float(reward) == -1.0 and not bool(env.is_terminal(state))
    assert float(state[0]) == pytest.approx(5.0 - 2.0**2 / (2 * deceleration), rel=1e-5)
    # a rougher green (friction growing with distance) stops the same putt sooner
    rough, _ = _putt(Minigolf(noise_std=0.0, friction_far=0.19), 5.0, 2.0)
    assert float(rough[0]) > float(state[0])


def test_a_putt_at_the_right_speed_drops_and_a_fast_one_overshoots():
    env = Minigolf(noise_std=0.0)
    v_min = np.sqrt(2 * 5 / 7 * 0.131 * GRAVITY * 5.0)
    holed, reward = _putt(env, 5.0, v_min + 0.05)
    assert float(reward) == 0.0 and bool(env.is_terminal(holed)) and float(holed[0]) == 0.0
    over, reward = _putt(env, 5.0, v_min + 2.0)
    assert float(reward) == -100.0 and bool(env.is_terminal(over))
    # once ended, the state is absorbing and pays nothing
    after, reward = env.step(over, jnp.array([3.0]), jax.random.key(1))
    np.testing.assert_array_equal(after, over)
    assert float(reward) == 0.0


def test_noise_scales_the_putt_and_actions_are_clipped():
    env = Minigolf()
    keys = jax.random.split(jax.random.key(0), 2000)
    states, _ = jax.vmap(lambda k: env.step(jnp.array([19.0, 0.0]), jnp.array([2.0]), k))(keys)
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
