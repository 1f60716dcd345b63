"""The Gymnasium bridges (`as_gymnasium`, `GymnasiumEnv`) and the `make` registry."""

import re
import warnings

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from mbpg.envs import (
    CartPole,
    CartPoleSwingUp,
    GymnasiumEnv,
    MountainCarContinuous,
    Pendulum,
    as_gymnasium,
    double_integrator,
    gridworld,
    make,
)

# check_env's advice about the spaces themselves (CartPole's velocities and LQR's states are unbounded by
# definition); any other warning means the wrapper broke the API (dtypes, types, determinism, reused buffers).
BENIGN = re.compile(r"infinity|recommend using a symmetric and normalized space")

FUNCTIONAL_ENVS = {
    "Pendulum": Pendulum,
    "CartPole": CartPole,
    "CartPoleSwingUp": CartPoleSwingUp,
    "MountainCarContinuous": MountainCarContinuous,
    "gridworld": lambda: gridworld(3, 4, slip=0.5, gamma=0.9),
    "double_integrator": double_integrator,
}


@pytest.mark.parametrize("name", FUNCTIONAL_ENVS)
def test_check_env_passes_without_api_warnings(name):
    env = as_gymnasium(FUNCTIONAL_ENVS[name]())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    problems = [str(w.message) for w in caught if not BENIGN.search(str(w.message))]
    assert not problems, problems


@pytest.mark.parametrize("name", FUNCTIONAL_ENVS)
def test_seeded_episodes_repeat_and_seeds_differ(name):
    def episode(env, seed, n_steps=8):
        env.action_space.seed(0)  # the same actions every time: only the env's own randomness varies
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for _ in range(n_steps):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            trace += [obs, reward]
            if terminated:
                break
        return trace

    env = as_gymnasium(FUNCTIONAL_ENVS[name]())
    first, again = episode(env, 5), episode(env, 5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    others = [episode(env, seed) for seed in range(6, 10)]
    assert any(len(o) != len(first) or not all(np.array_equal(a, b) for a, b in zip(first, o)) for o in others)
    # Unseeded resets continue the seeded stream: reproducible, but not the same start every time.
    env.reset(seed=5)
    unseeded = [env.reset()[0] for _ in range(4)]
    env.reset(seed=5)
    assert all(np.array_equal(a, env.reset()[0]) for a in unseeded)
    if not isinstance(env.observation_space, spaces.Discrete):  # a gridworld may always start in one cell
        assert not np.array_equal(unseeded[0], unseeded[1])


def test_tabular_and_lqr_get_inferred_spaces():
    grid = gridworld(3, 4, slip=0.1, gamma=0.9)
    tabular = as_gymnasium(grid)
    assert tabular.observation_space == spaces.Discrete(grid.n_states)
    assert tabular.action_space == spaces.Discrete(grid.n_actions)
    obs, _ = tabular.reset(seed=0)
    assert type(obs) is int and 0 <= obs < grid.n_states
    lqr = as_gymnasium(double_integrator())
    assert lqr.observation_space == spaces.Box(-np.inf, np.inf, (2,), np.float32)
    assert lqr.action_space == spaces.Box(-np.inf, np.inf, (1,), np.float32)
    assert tabular.max_episode_steps is None and lqr.max_episode_steps is None


def test_wrapper_steps_the_functional_env_with_its_own_state():
    env = Pendulum()
    gym_env = as_gymnasium(env)
    gym_env.reset(seed=0)
    for action in ([1.5], [-3.0], [0.2]):
        state = gym_env.state
        obs, reward, terminated, truncated, _ = gym_env.step(np.array(action, np.float32))
        next_state, expected_reward = env.step(state, jnp.array(action), jax.random.key(0))
        np.testing.assert_allclose(obs, np.asarray(env.observation(next_state)), rtol=1e-6, atol=1e-6)
        assert reward == pytest.approx(float(expected_reward), rel=1e-6)
        assert obs.dtype == np.float32 and obs.flags.writeable and type(reward) is float


def test_every_step_draws_fresh_noise():
    lqr = double_integrator()
    env = as_gymnasium(lqr)
    obs, _ = env.reset(seed=0)
    A, noises = np.asarray(lqr.A), []
    for _ in range(300):
        next_obs, *_ = env.step(np.zeros(1, np.float32))
        noises.append(next_obs.astype(np.float64) - A @ obs)
        obs = next_obs
    noises = np.array(noises)
    assert not np.allclose(noises[0], noises[1])
    # Independent N(0, noise_cov) draws: the sample covariance is within sampling error of noise_cov.
    np.testing.assert_allclose(np.cov(noises.T), np.asarray(lqr.noise_cov), atol=0.25 * lqr.noise_cov[0, 0])
    assert abs(np.corrcoef(noises[:-1, 0], noises[1:, 0])[0, 1]) < 0.2


def test_truncation_at_the_time_limit_is_not_termination():
    env = as_gymnasium(Pendulum(), max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    env.reset(seed=1)  # a reset starts the count again
    assert env.step(np.zeros(1, np.float32))[3] is False
    assert as_gymnasium(Pendulum()).max_episode_steps == 200  # the env's own limit by default


def test_termination_is_reported_before_the_time_limit():
    env = as_gymnasium(CartPole())
    env.reset(seed=0)
    for t in range(1, 501):
        _, reward, terminated, truncated, _ = env.step(1)  # always push right: the pole falls back
        assert reward == 1.0
        if terminated:
            break
    assert terminated and not truncated and t < 50
    assert bool(CartPole().is_terminal(jnp.asarray(env.state)))


def test_step_compiles_once_for_every_action():
    traces = []

    class Counter(eqx.Module):
        """Counts its own traces: the Python body runs only when JAX (re)compiles."""

        max_episode_steps = None

        @property
        def observation_space(self):
            return spaces.Box(-np.inf, np.inf, (1,), np.float32)

        @property
        def action_space(self):
            return spaces.Discrete(3)

        def reset(self, key):
            return jnp.zeros(1)

        def step(self, state, action, key):
            traces.append(action)
            return state + action, jnp.sum(state)

    env = as_gymnasium(Counter())
    env.reset(seed=0)
    for action in [0, 1, 2, np.int64(2), np.int32(1), 0]:
        obs, *_ = env.step(action)
    assert obs[0] == 6.0
    assert len(traces) == 1


def test_invalid_actions_and_spaces_are_named():
    tabular = as_gymnasium(gridworld(3, 3))
    tabular.reset(seed=0)
    with pytest.raises(ValueError, match=r"outside Discrete\(4\)"):
        tabular.step(4)
    with pytest.raises(ValueError, match=r"must be one integer"):
        tabular.step(1.5)
    pendulum = as_gymnasium(Pendulum())
    with pytest.raises(RuntimeError, match="call reset"):
        pendulum.step(np.zeros(1, np.float32))
    pendulum.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        pendulum.step(np.zeros(2, np.float32))

    class BitEnv(eqx.Module):
        @property
        def observation_space(self):
            return spaces.MultiBinary(3)

        @property
        def action_space(self):
            return spaces.Discrete(2)

    with pytest.raises(ValueError, match=r"BitEnv has a MultiBinary observation space"):
        as_gymnasium(BitEnv())

    class Spaceless(eqx.Module):
        pass

    with pytest.raises(ValueError, match=r"Spaceless declares no observation_space/action_space"):
        as_gymnasium(Spaceless())


# ----- GymnasiumEnv ---------------------------------------------------------------------------------------------


def test_gymnasium_env_pendulum_truncates_at_its_limit():
    env = GymnasiumEnv("Pendulum-v1")
    assert env.max_episode_steps == 200
    assert isinstance(env.observation_space, spaces.Box) and isinstance(env.action_space, spaces.Box)
    obs = env.reset(seed=3)
    reference, _ = gymnasium.make("Pendulum-v1").reset(seed=3)
    np.testing.assert_array_equal(obs, reference)
    for t in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(np.array([0.5]))
        assert not terminated and truncated == (t == 200)
        assert isinstance(reward, float) and isinstance(info, dict) and obs in env.observation_space
    env.close()


def test_gymnasium_env_mujoco_separates_termination_from_truncation():
    with GymnasiumEnv("InvertedPendulum-v5", max_episode_steps=20) as env:
        assert env.max_episode_steps == 20
        env.reset(seed=0)
        for t in range(1, 21):  # no force: the pole barely moves in 0.8 s
            _, reward, terminated, truncated, _ = env.step(np.zeros(1))
            assert not terminated and truncated == (t == 20)
        env.reset(seed=0)
        for t in range(1, 21):  # full force: the cart shoots away and the pole falls
            _, _, terminated, truncated, _ = env.step(np.array([3.0]))
            if terminated:
                break
        assert terminated and not truncated and t < 20
    assert GymnasiumEnv("InvertedPendulum-v5").max_episode_steps == 1000


def test_gymnasium_env_discrete_spaces_and_unsupported_spaces():
    env = GymnasiumEnv("Acrobot-v1")
    assert env.action_space == spaces.Discrete(3)
    env.reset(seed=0)
    env.step(np.int64(2))
    with pytest.raises(ValueError, match=r"outside Discrete\(3\)"):
        env.step(3)
    with pytest.raises(ValueError, match=r"'Blackjack-v1' has a Tuple observation space.*wrappers="):
        GymnasiumEnv("Blackjack-v1")
    flat = GymnasiumEnv("Blackjack-v1", wrappers=[gymnasium.wrappers.FlattenObservation])
    assert flat.reset(seed=0) in flat.observation_space


# ----- make -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id, port", [("Pendulum-v1", Pendulum), ("CartPole-v1", CartPole),
                                           ("MountainCarContinuous-v0", MountainCarContinuous),
                                           ("CartPoleSwingUp-v0", CartPoleSwingUp)])
def test_make_returns_the_port_for_known_ids(env_id, port):
    assert type(make(env_id)) is port
    assert type(make(env_id, backend="jax")) is port


def test_make_falls_back_to_gymnasium_and_forwards_arguments():
    assert isinstance(make("Acrobot-v1"), GymnasiumEnv)
    host = make("Pendulum-v1", backend="gymnasium")
    assert isinstance(host, GymnasiumEnv) and host.observation_space == Pendulum().observation_space
    assert make("Pendulum-v1", g=9.81).g == 9.81
    assert make("Pendulum-v1", backend="gymnasium", max_episode_steps=7).max_episode_steps == 7


def test_make_suggests_close_matches_for_a_typo():
    with pytest.raises(ValueError, match=r"unknown env 'Pendulm-v1'; did you mean Pendulum-v1"):
        make("Pendulm-v1")
    with pytest.raises(ValueError, match=r"did you mean CartPoleSwingUp-v0"):
        make("CartPoleSwingup-v0")
    with pytest.raises(ValueError, match=r"unknown env 'qqqq'; no close match"):
        make("qqqq")


def test_make_rejects_impossible_backends():
    with pytest.raises(ValueError, match=r"no JAX port of 'Acrobot-v1'.*backend='gymnasium'"):
        make("Acrobot-v1", backend="jax")
    with pytest.raises(ValueError, match=r"'CartPoleSwingUp-v0' exists only as a JAX port"):
        make("CartPoleSwingUp-v0", backend="gymnasium")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        make("Pendulum-v1", backend="torch")


def test_a_resumed_host_env_run_does_not_replay_chunk_0(tmp_path):
    """The host driver's envs and acting keys are not in the checkpoint; a resumed run once restarted them and
    collected chunk 0's transitions again (SAC in its random phase: the same actions, observations and start)."""
    from mbpg.algos.sac import SAC, SACConfig
    from mbpg.envs.gym_adapter import GymnasiumEnv
    from mbpg.train.loop import LoopSettings, train

    chunk = 20
    env = GymnasiumEnv("Pendulum-v1")
    agent = SAC(SACConfig(chunk_steps=chunk, learning_starts=10_000, buffer_size=100, hidden=(8,), batch_size=4), env)
    common = dict(seed=3, eval_every=10**9, eval_episodes=1, checkpoint_every=chunk, tensorboard=False)
    train(agent, env, "Pendulum-v1", LoopSettings(chunk, **common), tmp_path / "cut")
    resumed = train(agent, env, "Pendulum-v1", LoopSettings(2 * chunk, **common), tmp_path / "cut", resume=True)
    data = jax.tree.map(lambda x: np.asarray(x)[0], resumed["state"].replay.data)
    assert int(np.asarray(resumed["state"].replay.size)[0]) == 2 * chunk
    for name in ("obs", "action"):
        assert not np.isclose(data[name][chunk:2 * chunk], data[name][:chunk]).all(axis=-1).any(), name


def test_host_sac_chunk_metrics_average_only_the_steps_that_updated():
    """As the compiled chunk does (test_algos): a host chunk in which SAC starts learning reports its losses over
    the steps that updated; it once averaged in the zeros of the steps before learning_starts."""
    from mbpg.algos.sac import SAC, SACConfig
    from mbpg.envs.gym_adapter import GymnasiumEnv
    from mbpg.train.host import HostDriver

    env = GymnasiumEnv("Pendulum-v1")
    agent = SAC(SACConfig(chunk_steps=20, learning_starts=13, buffer_size=64, hidden=(8,), batch_size=8), env)
    driver = HostDriver(agent, env, seed=0)
    observe, recorded = driver._observe, []

    def recording(*args):
        state, info = observe(*args)
        recorded.append(jax.tree.map(np.asarray, info))
        return state, info

    driver._observe = recording
    _, metrics = driver.chunk(agent.init(jax.random.key(0)))
    updated = np.array([info["updated"] for info in recorded]) > 0
    assert 0 < updated.sum() < len(recorded) == 20
    assert "updated" not in metrics and "critic_loss" in metrics
    for name in metrics.keys() - {"train_episode_return"}:
        steps = np.array([info[name] for info in recorded])
        np.testing.assert_allclose(metrics[name], steps[updated].mean(), rtol=1e-5, atol=1e-7)


def test_host_runs_spawn_their_extra_and_evaluation_envs_with_the_same_arguments():
    """The host driver built its extra envs and its evaluation env from the id alone, so a GymnasiumEnv made
    with other arguments (here a 50-step limit) trained and was evaluated on the registered defaults."""
    from mbpg.envs.gym_adapter import GymnasiumEnv

    env = GymnasiumEnv("Pendulum-v1", max_episode_steps=50, g=9.81)
    copy = env.spawn()
    assert copy.max_episode_steps == 50 and copy.env.unwrapped.g == 9.81
    copy.close()
    env.close()


def test_make_keeps_the_registered_limit_for_max_episode_steps_none_and_ports_refuse_reset_options():
    from mbpg.envs.autoreset import episode_limit
    from mbpg.envs.gym_adapter import as_gymnasium

    assert episode_limit(make("Pendulum-v1", max_episode_steps=None)) == 200  # was None: 1000-step episodes
    assert make("Pendulum-v1", backend="gymnasium", max_episode_steps=None).max_episode_steps == 200
    env = as_gymnasium(make("Pendulum-v1"))
    env.reset(seed=0, options={})
    with pytest.raises(ValueError, match=r"reset options are not supported.*x_init"):
        env.reset(seed=0, options={"x_init": 0.0})
