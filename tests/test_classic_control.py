"""The JAX classic-control ports against Gymnasium, step by step, and the swing-up's physics.

Each port is stepped from exactly the state the Gymnasium env is in (re-synchronised every step, because the
pendulum and cart-pole amplify float32-vs-float64 rounding exponentially near upright, which would turn a
trajectory comparison into a test of rounding rather than of dynamics). States and actions are drawn to hit the
edge cases: clipped torques and speeds, wrapped angles, both kinds of cart-pole failure, the mountain car's left
wall and its goal; each test asserts the edge cases actually occurred.
"""

import dataclasses

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.envs import CartPole, CartPoleSwingUp, MountainCarContinuous, Pendulum

RTOL, ATOL = 2e-5, 1e-5  # float32 port vs float64 Gymnasium


def jitted_transition(env):
    """(next_state, obs, reward, terminated) from (state, action), one compiled call."""

    @jax.jit
    def transition(state, action):
        next_state, reward = env.step(state, action, jax.random.key(0))
        return next_state, env.observation(next_state), reward, env.is_terminal(next_state)

    return transition


def assert_same_step(t, port_out, gym_out):
    _, obs, reward, terminated = port_out
    gym_obs, gym_reward, gym_terminated, gym_truncated, _ = gym_out
    np.testing.assert_allclose(np.asarray(obs), gym_obs, rtol=RTOL, atol=ATOL, err_msg=f"observation at step {t}")
    np.testing.assert_allclose(float(reward), gym_reward, rtol=RTOL, atol=ATOL, err_msg=f"reward at step {t}")
    assert bool(terminated) == gym_terminated, f"termination at step {t}"
    assert gym_truncated is False  # the unwrapped env has no time limit; truncation is the caller's


def test_pendulum_matches_gymnasium_step_by_step():
    env, gym_env = Pendulum(), gymnasium.make("Pendulum-v1").unwrapped
    transition, rng = jitted_transition(env), np.random.default_rng(0)
    gym_env.reset(seed=0)
    clipped_torque = clipped_speed = wrapped = 0
    for t in range(600):
        if t % 20 == 0:  # angles beyond +-pi exercise the normalisation; speeds near the limit its clip
            gym_env.state = np.array([rng.uniform(-3 * np.pi, 3 * np.pi), rng.uniform(-8.0, 8.0)])
        state = np.array(gym_env.state)
        action = rng.uniform(-3.0, 3.0, size=(1,)).astype(np.float32)
        port = transition(jnp.asarray(state, jnp.float32), jnp.asarray(action))
        gym_out = gym_env.step(action)
        assert_same_step(t, port, gym_out)
        np.testing.assert_allclose(np.asarray(port[0]), gym_env.state, rtol=RTOL, atol=ATOL)
        clipped_torque += abs(action[0]) > 2.0
        clipped_speed += abs(gym_env.state[1]) == 8.0
        wrapped += abs(state[0]) > np.pi
    assert clipped_torque > 50 and clipped_speed > 10 and wrapped > 50


def test_cartpole_matches_gymnasium_including_both_kinds_of_failure():
    env, gym_env = CartPole(), gymnasium.make("CartPole-v1").unwrapped
    transition, rng = jitted_transition(env), np.random.default_rng(1)
    gym_env.reset(seed=1)
    high = np.array([2.4, 2.0, 0.2, 2.0])
    fell, left_track, steps_since_reset, episodes = 0, 0, 0, 0
    for t in range(800):
        if t == 0 or steps_since_reset == 30:
            state = rng.uniform(-high, high)
            if episodes % 2:  # near an end of the track, heading off it, pole nearly still
                side = rng.choice([-1.0, 1.0])
                state = np.array([side * rng.uniform(1.9, 2.4), side * rng.uniform(0.5, 3.0), 0.2 * state[2], 0.0])
            gym_env.state, gym_env.steps_beyond_terminated, steps_since_reset = state, None, 0
            episodes += 1
        state = np.array(gym_env.state)
        action = int(rng.integers(2))
        port = transition(jnp.asarray(state, jnp.float32), jnp.asarray(action))
        gym_out = gym_env.step(action)
        assert_same_step(t, port, gym_out)
        steps_since_reset += 1
        if gym_out[2]:  # terminated: count which rule fired, then start a new episode
            fell += abs(gym_env.state[2]) > env.theta_threshold_radians
            left_track += abs(gym_env.state[0]) > env.x_threshold
            steps_since_reset = 30
    assert fell > 10 and left_track > 10


def test_cartpole_semi_implicit_integrator_matches_gymnasium():
    env, gym_env = CartPole(kinematics_integrator="semi-implicit euler"), gymnasium.make("CartPole-v1").unwrapped
    gym_env.kinematics_integrator = "semi-implicit euler"
    transition, rng = jitted_transition(env), np.random.default_rng(2)
    gym_env.reset(seed=2)
    for t in range(50):
        gym_env.state, gym_env.steps_beyond_terminated = rng.uniform(-1, 1, size=4) * [2, 2, 0.2, 2], None
        action = int(rng.integers(2))
        port = transition(jnp.asarray(gym_env.state, jnp.float32), jnp.asarray(action))
        assert_same_step(t, port, gym_env.step(action))


def test_mountain_car_matches_gymnasium_including_left_wall_and_goal():
    env, gym_env = MountainCarContinuous(), gymnasium.make("MountainCarContinuous-v0").unwrapped
    transition, rng = jitted_transition(env), np.random.default_rng(3)
    gym_env.reset(seed=3)
    wall_stops = goals = 0
    for t in range(1500):
        if t % 25 == 0:
            if t % 100 == 0:  # heading into the left wall
                start = [rng.uniform(-1.2, -1.15), rng.uniform(-0.07, -0.03)]
            else:  # anywhere, including near and past the goal
                start = [rng.uniform(-1.2, 0.6), rng.uniform(-0.07, 0.07)]
            gym_env.state = np.array(start, dtype=np.float32)
        state = np.array(gym_env.state)
        # Beyond [-1, 1] too: the force is clipped but Gymnasium charges the raw action.
        action = rng.uniform(-1.5, 1.5, size=(1,)).astype(np.float32)
        port = transition(jnp.asarray(state), jnp.asarray(action))
        gym_out = gym_env.step(action)
        assert_same_step(t, port, gym_out)
        np.testing.assert_allclose(np.asarray(port[0]), gym_env.state, rtol=RTOL, atol=ATOL)
        unstopped_velocity = np.clip(state[1] + np.clip(action[0], -1, 1) * 0.0015 - 0.0025 * np.cos(3 * state[0]),
                                     -0.07, 0.07)
        wall_stops += gym_env.state[0] == -1.2 and unstopped_velocity < 0
        goals += gym_out[2]
    assert wall_stops > 10 and goals > 10


@pytest.mark.parametrize("env_id, port", [("Pendulum-v1", Pendulum()), ("CartPole-v1", CartPole()),
                                           ("MountainCarContinuous-v0", MountainCarContinuous())])
def test_spaces_and_time_limit_match_gymnasium(env_id, port):
    gym_env = gymnasium.make(env_id)
    assert port.observation_space == gym_env.observation_space
    assert port.action_space == gym_env.action_space
    assert port.max_episode_steps == gym_env.spec.max_episode_steps


@pytest.mark.parametrize("env_id, port", [("Pendulum-v1", Pendulum()), ("CartPole-v1", CartPole()),
                                           ("MountainCarContinuous-v0", MountainCarContinuous())])
def test_reset_distribution_covers_the_same_box_as_gymnasium(env_id, port):
    gym_env = gymnasium.make(env_id).unwrapped
    gym_states = []
    for seed in range(1000):
        gym_env.reset(seed=seed)
        gym_states.append(np.array(gym_env.state, np.float64))
    gym_states = np.array(gym_states)
    port_states = np.asarray(jax.vmap(port.reset)(jax.random.split(jax.random.key(0), 1000)), np.float64)
    assert port_states.shape == gym_states.shape
    spread = np.maximum(gym_states.max(0) - gym_states.min(0), 1e-12)
    # Both are uniform on the same box: the extremes of 1000 draws agree to a few percent of its width...
    np.testing.assert_allclose(port_states.min(0), gym_states.min(0), atol=0.01 * spread.max())
    np.testing.assert_allclose(port_states.max(0), gym_states.max(0), atol=0.01 * spread.max())
    # ...and nothing falls outside it.
    assert np.all(port_states >= gym_states.min(0) - 0.01 * spread)
    assert np.all(port_states <= gym_states.max(0) + 0.01 * spread)


@pytest.mark.parametrize("env", [Pendulum(), CartPole(), CartPoleSwingUp(), MountainCarContinuous()],
                         ids=lambda e: type(e).__name__)
def test_rollouts_jit_and_vmap_agree_with_an_eager_loop(env):
    n_envs, horizon = 4, 30

    def policy_action(key):
        space = env.action_space
        if hasattr(space, "n"):
            return jax.random.randint(key, (), 0, space.n)
        return jax.random.uniform(key, space.shape, minval=space.low, maxval=space.high)

    @jax.jit
    def rollout(key):
        reset_key, key = jax.random.split(key)

        def one_step(state, key):
            action_key, step_key = jax.random.split(key)
            action = policy_action(action_key)
            next_state, reward = env.step(state, action, step_key)
            return next_state, (env.observation(next_state), reward, env.is_terminal(next_state))

        return jax.lax.scan(one_step, env.reset(reset_key), jax.random.split(key, horizon))[1]

    keys = jax.random.split(jax.random.key(7), n_envs)
    obs, rewards, terminal = jax.vmap(rollout)(keys)
    assert obs.shape == (n_envs, horizon, *env.observation_space.shape)
    assert rewards.shape == terminal.shape == (n_envs, horizon)
    assert np.isfinite(np.asarray(obs)).all()

    # The same keys, one environment, no jit: identical numbers up to float32 rounding.
    reset_key, key = jax.random.split(keys[1])
    state = env.reset(reset_key)
    for t, step_key in enumerate(jax.random.split(key, horizon)):
        action_key, step_key = jax.random.split(step_key)
        state, reward = env.step(state, policy_action(action_key), step_key)
        np.testing.assert_allclose(np.asarray(env.observation(state)), np.asarray(obs[1, t]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(reward), float(rewards[1, t]), rtol=1e-4, atol=1e-5)


def test_envs_are_hashable_static_arguments():
    @jax.jit
    def first_reward(env, key):
        state = env.reset(key)
        return env.step(state, jnp.zeros(1), key)[1]

    first_reward_static = jax.jit(lambda env, key: first_reward(env, key), static_argnums=0)
    key = jax.random.key(0)
    a, b = Pendulum(), Pendulum(g=9.81)
    assert hash(a) == hash(Pendulum()) and a != b
    assert float(first_reward(a, key)) == pytest.approx(float(first_reward_static(a, key)), rel=1e-6)
    assert dataclasses.replace(a, g=9.81) == b


def test_invalid_integrator_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"kinematics_integrator must be one of .*semi-implicit euler.*'rk4'"):
        CartPole(kinematics_integrator="rk4")


# ----- CartPoleSwingUp -----------------------------------------------------------------------------------------


def swing_up_rollout(env, state, n_steps, action=0.0):
    step = jax.jit(lambda s: env.step(s, jnp.full((1,), action, s.dtype), jax.random.key(0)))
    states, rewards = [np.asarray(state)], []
    for _ in range(n_steps):
        state, reward = step(state)
        states.append(np.asarray(state))
        rewards.append(float(reward))
    return np.array(states), np.array(rewards)


def mechanical_energy_and_momentum(env, states):
    """Total energy and horizontal momentum of a cart with a uniform rod of length `pole_length` hinged on it."""
    x_dot, theta, theta_dot = states[:, 1], states[:, 2], states[:, 3]
    half, m, big_m = env.pole_length / 2, env.masspole, env.masscart
    rod_x_dot = x_dot + half * np.cos(theta) * theta_dot
    rod_y_dot = -half * np.sin(theta) * theta_dot
    rod_inertia = m * env.pole_length**2 / 12  # about its centre
    kinetic = 0.5 * big_m * x_dot**2 + 0.5 * m * (rod_x_dot**2 + rod_y_dot**2) + 0.5 * rod_inertia * theta_dot**2
    potential = m * env.gravity * half * np.cos(theta)
    return kinetic + potential, (big_m + m) * x_dot + m * half * np.cos(theta) * theta_dot


def test_swing_up_pole_stays_up_for_a_while_then_falls_without_force():
    env = CartPoleSwingUp()
    states, rewards = swing_up_rollout(env, jnp.array([0.0, 0.0, 1e-4, 0.0]), env.max_episode_steps)
    assert np.abs(states[:11, 2]).max() < 0.1 and rewards[:10].min() > 0.9  # upright for the first second
    assert np.abs(states[:, 2]).max() > np.pi / 2  # ...but upright is unstable: it has fallen by the end


def test_swing_up_pole_hanging_down_oscillates_at_the_rods_pendulum_frequency():
    env = CartPoleSwingUp()
    offset = 0.1
    states, rewards = swing_up_rollout(env, jnp.array([0.0, 0.0, np.pi + offset, 0.0]), env.max_episode_steps)
    deviation = states[:, 2] - np.pi
    assert np.abs(deviation).max() <= offset * 1.02  # stays down, no energy pumped in
    assert rewards.max() < 1e-3
    # Small oscillations of a uniform rod (half-length h) on a free cart: w^2 = g / (h (4/3 - m / (M + m))).
    half = env.pole_length / 2
    omega = np.sqrt(env.gravity / (half * (4 / 3 - env.masspole / (env.masspole + env.masscart))))
    crossings = np.flatnonzero(np.sign(deviation[1:]) != np.sign(deviation[:-1]))
    times = env.dt * (crossings + deviation[crossings] / (deviation[crossings] - deviation[crossings + 1]))
    measured_period = 2 * np.mean(np.diff(times))
    assert len(crossings) >= 5
    assert measured_period == pytest.approx(2 * np.pi / omega, rel=0.03)


def test_swing_up_conserves_energy_and_momentum_without_force():
    """Without force the continuous equations conserve energy and horizontal momentum; the integrator's error
    must shrink with the sub-step (first order: ~10x for 10x more sub-steps), which a wrong equation's would not."""
    start = jnp.array([0.0, 0.2, np.pi - 1.5, 0.0])  # a 1.5 rad swing on a drifting cart
    drift = {}
    for n_substeps in (10, 100):
        env = CartPoleSwingUp(n_substeps=n_substeps)
        states, _ = swing_up_rollout(env, start, env.max_episode_steps)
        energy, momentum = mechanical_energy_and_momentum(env, states.astype(np.float64))
        drift[n_substeps] = np.abs(energy - energy[0]).max(), np.abs(momentum - momentum[0]).max()
    energy_scale = env.masspole * env.gravity * env.pole_length
    momentum_scale = env.masspole * env.pole_length / 2 * np.abs(states[:, 3]).max()  # the swinging rod's
    assert drift[10][0] < 0.03 * energy_scale  # the default: within a few percent over an episode
    assert drift[100][0] < 0.005 * energy_scale and drift[100][1] < 0.01 * momentum_scale
    assert drift[100][0] < 0.2 * drift[10][0] and drift[100][1] < 0.2 * drift[10][1]
    # Gymnasium's explicit Euler, by contrast, pumps energy in (why the default is semi-implicit).
    euler = CartPoleSwingUp(kinematics_integrator="euler")
    euler_energy, _ = mechanical_energy_and_momentum(euler, swing_up_rollout(euler, start, 40)[0].astype(np.float64))
    assert euler_energy[-1] - euler_energy[0] > 5 * drift[10][0]


def test_swing_up_uses_cartpole_dynamics():
    """With CartPole's pole, step and integrator, one swing-up step is one CartPole-v1 step with a +-10 N push."""
    env = CartPoleSwingUp(pole_length=1.0, dt=0.02, n_substeps=1, kinematics_integrator="euler")
    gym_env, rng = gymnasium.make("CartPole-v1").unwrapped, np.random.default_rng(4)
    gym_env.reset(seed=4)
    for _ in range(20):
        gym_env.state, gym_env.steps_beyond_terminated = rng.uniform(-1, 1, size=4) * [2, 2, 3, 2], None
        push = int(rng.integers(2))
        state, _ = env.step(jnp.asarray(gym_env.state, jnp.float32), jnp.array([2.0 * push - 1.0]), None)
        gym_env.step(push)
        np.testing.assert_allclose(np.asarray(state), gym_env.state, rtol=RTOL, atol=ATOL)


def test_swing_up_reward_measures_the_tip_distance_from_upright():
    env = CartPoleSwingUp()
    reward = lambda x, theta: float(env.reward(jnp.array([x, 0.0, theta, 0.0])))  # noqa: E731
    assert reward(0.0, 0.0) == pytest.approx(1.0)
    assert reward(0.0, np.pi) == pytest.approx(np.exp(-(2 * 0.6) ** 2 / (2 * 0.25**2)), rel=1e-4)
    assert reward(0.0, np.pi) < 1e-4
    # Tip at (x + l sin theta, l cos theta) vs (0, l): lying flat to the right of a cart at x = 0.3.
    assert reward(0.3, np.pi / 2) == pytest.approx(np.exp(-((0.3 + 0.6) ** 2 + 0.6**2) / 0.125), rel=1e-4)
    assert reward(0.3, 0.0) < reward(0.1, 0.0) < 1.0
    assert reward(0.0, 2 * np.pi) == pytest.approx(1.0, abs=1e-6)  # the angle is not wrapped, the reward is


def test_swing_up_force_direction_clipping_and_observation():
    env = CartPoleSwingUp()
    hanging = jnp.array([0.0, 0.0, np.pi, 0.0])
    pushed_right, _ = env.step(hanging, jnp.array([1.0]), None)
    pushed_left, _ = env.step(hanging, jnp.array([-0.5]), None)
    over_pushed, _ = env.step(hanging, jnp.array([5.0]), None)
    assert pushed_right[1] > 0 and pushed_left[1] < 0
    np.testing.assert_array_equal(np.asarray(over_pushed), np.asarray(pushed_right))
    obs = np.asarray(env.observation(pushed_right))
    np.testing.assert_allclose(obs, [pushed_right[0], pushed_right[1], np.cos(pushed_right[2]),
                                     np.sin(pushed_right[2]), pushed_right[3]], rtol=1e-6, atol=1e-7)
    assert not bool(env.is_terminal(jnp.array([100.0, 0.0, 0.0, 0.0])))


def test_swing_up_starts_hanging_down_with_small_noise():
    env = CartPoleSwingUp()
    starts = np.asarray(jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 4000)))
    np.testing.assert_allclose(starts.mean(0), [0.0, 0.0, np.pi, 0.0], atol=4 * env.reset_noise / np.sqrt(4000))
    np.testing.assert_allclose(starts.std(0), env.reset_noise, rtol=0.05)
    assert np.all(np.cos(starts[:, 2]) < -0.8)
