"""`--gradient mfg|mvg|fmg|auto` in training: REINFORCE's model-based candidates (checked against the true
Pendulum dynamics standing in for the model), the per-environment contributions the selector needs, bad options,
a CLI run that logs the selector's choice, and the lab's exact-return trainer."""

import csv
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos import get_algorithm, make_agent
from mbpg.algos.model_gradients import per_env_gradients
from mbpg.algos.on_policy import Rollout, advantages_and_returns, collect, flatten_time
from mbpg.algos.reinforce import ReinforceConfig
from mbpg.cli import main
from mbpg.envs import make
from mbpg.lab.training import LabTrainingConfig, train_lab

SMALL = dict(n_envs=3, n_steps=6, gamma=0.9, hidden=(8,), model_members=2, model_elites=1, model_hidden=(8,),
             model_buffer_size=64, model_epochs=1)


def true_pendulum_step(env):
    """The real Pendulum as a 'model' in observation space (deterministic, so Q_hat is checkable by hand)."""

    def step(ensemble, obs, action, key):
        action = jnp.clip(action, -2.0, 2.0)
        state = jnp.stack([jnp.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], 1)
        next_state, reward = jax.vmap(env.step)(state, action, jax.random.split(key, obs.shape[0]))
        return jax.vmap(env.observation)(next_state), reward, jnp.zeros(obs.shape[0], bool)

    return step


@pytest.fixture(scope="module")
def batch():
    env = make("Pendulum-v1")
    agent = make_agent("reinforce", ReinforceConfig(gradient="auto", **SMALL), env)
    state = agent.init(jax.random.key(0))
    _, rollout = collect(env, agent.spec, agent.policy, state.policy_params, state.env_states, jax.random.key(1),
                         SMALL["n_steps"], agent.limit)
    return env, agent, state, rollout


def test_per_env_contributions_average_to_the_batch_gradient(batch):
    _, agent, state, rollout = batch
    advantages = jax.random.normal(jax.random.key(2), rollout.reward.shape)
    rows = per_env_gradients(agent.policy, state.policy_params, rollout.obs, rollout.action, advantages)

    def loss(params):
        log_probs = jax.vmap(jax.vmap(agent.policy.log_prob, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(
            params, rollout.obs, rollout.action)
        return -jnp.mean(log_probs * advantages)

    whole = eqx.filter_grad(loss)(state.policy_params)
    for row, full in zip(jax.tree.leaves(rows), jax.tree.leaves(whole)):
        assert row.shape == (SMALL["n_envs"],) + full.shape
        np.testing.assert_allclose(row.mean(0), full, rtol=1e-5, atol=1e-6)


def test_mvg_q_with_a_perfect_one_step_model_is_reward_plus_discounted_next_value(batch, monkeypatch):
    env, agent, state, rollout = batch
    sources = agent.model_gradients
    monkeypatch.setattr(sources, "_model_step", true_pendulum_step(env))
    monkeypatch.setattr(sources, "settings", ReinforceConfig(**{**SMALL, "gradient": "auto", "model_horizon": 1}))
    advantages = sources.mvg_advantages(state.policy_params, state.value, None, rollout, jax.random.key(3))
    value = jax.vmap(jax.vmap(state.value))
    expected = rollout.reward + 0.9 * value(rollout.next_obs) - value(rollout.obs)
    np.testing.assert_allclose(advantages, expected, rtol=1e-4, atol=1e-4)


def test_fmg_imagined_trajectories_follow_the_model_and_earn_its_rewards(batch, monkeypatch):
    env, agent, state, _ = batch
    sources = agent.model_gradients
    monkeypatch.setattr(sources, "_model_step", true_pendulum_step(env))
    imagined, alive = sources.imagine(state.policy_params, None, 3, 5, jax.random.key(4))
    assert bool(alive.all())
    np.testing.assert_allclose(imagined.obs[1:], imagined.next_obs[:-1])  # one continuous trajectory per env
    state_of = lambda o: jnp.stack([jnp.arctan2(o[..., 1], o[..., 0]), o[..., 2]], -1)  # noqa: E731
    rewards = jax.vmap(jax.vmap(lambda s, a: env.step(s, jnp.clip(a, -2, 2), jax.random.key(0))[1]))(
        state_of(imagined.obs), imagined.action)
    np.testing.assert_allclose(imagined.reward, rewards, rtol=1e-5, atol=1e-5)
    # Its advantages are the same GPOMDP-with-baseline computation as the real batch's.
    advantages, _ = advantages_and_returns(imagined, state.value, 0.9, 1.0)
    assert advantages.shape == (5, 3) and bool(jnp.isfinite(advantages).all())


def test_candidates_share_one_scale_and_fixed_types_use_their_own_row(batch):
    _, agent, state, rollout = batch
    sources = agent.model_gradients
    mfg, _ = advantages_and_returns(rollout, state.value, 0.9, 1.0)
    key = jax.random.key(5)
    rows = sources.candidates(state.policy_params, state.value, state.model.ensemble, rollout, mfg, 2.0, key)
    direct = per_env_gradients(agent.policy, state.policy_params, rollout.obs, rollout.action, mfg / 2.0)
    for stacked, own in zip(jax.tree.leaves(rows), jax.tree.leaves(direct)):
        assert stacked.shape[0] == 3
        np.testing.assert_allclose(stacked[0], own, rtol=1e-5, atol=1e-7)
    mixed, metrics = sources.gradient(state.policy_params, state.value, state.model.ensemble, rollout, mfg, 2.0, key)
    weights = np.array([float(metrics[f"auto_weight_{n}"]) for n in ("mfg", "mvg", "fmg")])
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0, abs=1e-5)
    for leaf, stacked in zip(jax.tree.leaves(mixed), jax.tree.leaves(rows)):
        np.testing.assert_allclose(leaf, jnp.tensordot(weights, stacked.mean(1), 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient", ["auto", "auto-is", "fmg"])
def test_the_weighted_surrogate_s_gradient_at_the_collecting_policy_is_the_selected_mix(gradient):
    """TRPO and PPO step on sum_k mean(ratio_k w_k A_k) (`weighted_samples`); at the collecting policy its gradient
    must be exactly what REINFORCE's `gradient` mixes from the same candidates (auto with 5 environments
    cross-fits: halves of 2 and 3, each weighted by the other's choice; auto-is: in-sample weights)."""
    env = make("Pendulum-v1")
    agent = make_agent("reinforce", ReinforceConfig(gradient=gradient, **{**SMALL, "n_envs": 5}), env)
    state = agent.init(jax.random.key(0))
    _, rollout = collect(env, agent.spec, agent.policy, state.policy_params, state.env_states, jax.random.key(1),
                         SMALL["n_steps"], agent.limit)
    sources, key = agent.model_gradients, jax.random.key(2)
    mfg, _ = advantages_and_returns(rollout, state.value, agent.config.gamma, 1.0)
    args = (state.policy_params, state.value, state.model.ensemble, rollout, mfg, 2.0, key)
    mixed, metrics = sources.gradient(*args)
    samples, sample_metrics = sources.weighted_samples(*args)
    assert samples.obs.shape[:2] == (5 * SMALL["n_steps"], 1 if gradient == "fmg" else 3)
    assert sorted(sample_metrics) == sorted(metrics)
    if gradient != "fmg":  # the real candidates' samples line up with flatten_time's real batch (value targets)
        np.testing.assert_array_equal(samples.obs[:, 0], flatten_time(rollout.obs))
    log_prob = jax.vmap(jax.vmap(agent.policy.log_prob, in_axes=(None, 0, 0)), in_axes=(None, 1, 1), out_axes=1)

    def surrogate(params):
        ratio = jnp.exp(log_prob(params, samples.obs, samples.action) - samples.log_prob)
        return -jnp.sum(jnp.mean(ratio * samples.advantage, 0))

    for got, want in zip(jax.tree.leaves(eqx.filter_grad(surrogate)(state.policy_params)), jax.tree.leaves(mixed)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("algo", ["trpo", "ppo"])
def test_cli_surrogate_algorithms_take_every_gradient_type(tmp_path, algo):
    out = tmp_path / algo
    args = ["train", algo, "--env", "Pendulum-v1", "--steps", "48", "--gradient", "auto-cf", "--n-envs", "4",
            "--n-steps", "6", "--hidden", "8", "--model-members", "2", "--model-elites", "1", "--model-hidden", "8",
            "--model-buffer-size", "64", "--model-epochs", "1", "--eval-every", "48", "--eval-episodes", "1",
            "--no-tensorboard", "--out", str(out)]
    if algo == "ppo":
        args += ["--epochs", "2", "--minibatches", "2"]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        assert sum(float(row[f"auto_weight_{n}"]) for n in ("mfg", "mvg", "fmg")) == pytest.approx(1.0, abs=1e-5)
    assert math.isfinite(float(rows[-1]["eval_return"]))
    with pytest.raises(ValueError, match="discrete actions"):
        make_agent(algo, get_algorithm(algo)[0](gradient="auto"), make("CartPole-v1"))


def test_bad_gradient_options_are_clear_errors():
    with pytest.raises(ValueError, match="--gradient must be one of mfg, mvg, fmg, auto, auto-cf, auto-is"):
        make_agent("reinforce", ReinforceConfig(gradient="magic"), make("Pendulum-v1"))
    with pytest.raises(ValueError, match="discrete actions"):
        make_agent("reinforce", ReinforceConfig(gradient="auto"), make("CartPole-v1"))
    with pytest.raises(ValueError, match="needs --n-envs >= 4"):
        make_agent("reinforce", ReinforceConfig(gradient="auto-cf", n_envs=2), make("Pendulum-v1"))
    with pytest.raises(ValueError, match="needs --n-envs >= 2"):
        make_agent("reinforce", ReinforceConfig(gradient="auto", n_envs=1), make("Pendulum-v1"))
    with pytest.raises(ValueError, match="termination rule"):
        make_agent("reinforce", ReinforceConfig(gradient="mvg"), make("Minigolf-v0"))
    # MountainCarContinuous's termination is known but its reward needs the true state: rejected here, not as a
    # "None is not callable" in the first training chunk
    for gradient in ("mvg", "fmg", "auto"):
        with pytest.raises(ValueError, match="reward is not a function of the observations.*use --gradient mfg"):
            make_agent("reinforce", ReinforceConfig(gradient=gradient), make("MountainCarContinuous-v0"))


def test_cli_auto_logs_the_selector_s_choice_every_update(tmp_path):
    out = tmp_path / "auto"
    args = ["train", "reinforce", "--env", "Pendulum-v1", "--steps", "36", "--gradient", "auto", "--n-envs", "3",
            "--n-steps", "6", "--hidden", "8", "--model-members", "2", "--model-elites", "1", "--model-hidden", "8",
            "--model-buffer-size", "64", "--model-epochs", "1", "--eval-every", "36", "--eval-episodes", "1",
            "--no-tensorboard", "--out", str(out)]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2  # one row per update
    for row in rows:
        weights = [float(row[f"auto_weight_{n}"]) for n in ("mfg", "mvg", "fmg")]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert all(math.isfinite(float(row[f"auto_variance_{n}"])) for n in ("mfg", "mvg", "fmg"))


def test_lab_training_ascends_the_exact_return_and_records_the_selector():
    plain = train_lab(LabTrainingConfig(env="gridworld", gradient="gpomdp", iterations=8))
    assert plain["returns"].shape == (9,) and plain["weights"] is None
    assert plain["returns"][-1] > plain["returns"][0]
    auto = train_lab(LabTrainingConfig(env="gridworld", gradient="auto", iterations=3))
    assert auto["weights"].shape == (3, 3)
    np.testing.assert_allclose(auto["weights"].sum(1), 1.0, atol=1e-5)
    assert tuple(auto["candidates"]) == ("gpomdp", "mvg-dp", "fmg")


def test_lab_training_rejects_what_it_cannot_train():
    with pytest.raises(ValueError, match="fits its own model"):
        train_lab(LabTrainingConfig(gradient="gamps", iterations=1))
    with pytest.raises(ValueError, match="iterations"):
        LabTrainingConfig(iterations=0)
    with pytest.raises(ValueError, match="learning-rate"):
        LabTrainingConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="baseline must be one of none, constant, state-value"):
        LabTrainingConfig(baseline="mean")


def test_lab_training_passes_its_baseline_to_the_estimator():
    """The same key with and without the leave-one-out baseline: different draws of the same expected step."""
    runs = [train_lab(LabTrainingConfig(env="gridworld", gradient="gpomdp", iterations=1, baseline=baseline))
            for baseline in ("none", "constant")]
    assert not np.allclose(runs[0]["params"][1], runs[1]["params"][1])


def pendulum_step_ending_above(env, speed: float):
    """The real Pendulum as a deterministic model whose episodes end when the angular velocity exceeds `speed`
    (a model terminal that random actions reach at random times)."""
    step = true_pendulum_step(env)

    def ending(ensemble, obs, action, key):
        next_obs, reward, _ = step(ensemble, obs, action, key)
        return next_obs, reward, next_obs[:, 2] > speed

    return ending


def plain_value(obs):
    """A baseline that matters: V changes by several units across the states below, so a misplaced bootstrap shows."""
    return 5.0 + 3.0 * obs[2] - 2.0 * obs[0]


def mvg_q_by_numpy_monte_carlo(env, policy, params, obs, action, reward, horizon, gamma, speed, samples, rng,
                               reward_at_terminal=True):
    """Q_hat(s, a) of the MVG cell by its definition, with numpy's own random actions: the real reward, then H - 1
    model rewards under pi (the one on the step that ends the episode included), then gamma^H V(s_H) if the
    model's episode is still running. Returns per-sample values [samples] and whether each sample's model episode
    ended after its first model step [samples]."""
    model = pendulum_step_ending_above(env, speed)
    obs = jnp.broadcast_to(obs, (samples, 3))
    obs, _, terminated = model(None, obs, jnp.broadcast_to(action, (samples, 1)), jax.random.key(0))
    alive = ~np.asarray(terminated)
    alive_after_first = alive
    total = np.zeros(samples)
    mean = jax.vmap(policy.mean, in_axes=(None, 0))
    std = float(policy.std(params)[0])
    for j in range(1, horizon):
        actions = mean(params, obs) + std * rng.standard_normal((samples, 1)).astype(np.float32)
        obs, rewards, terminated = model(None, obs, actions, jax.random.key(0))
        kept = alive if reward_at_terminal else alive & ~np.asarray(terminated)
        total += gamma ** j * kept * np.asarray(rewards)
        alive = alive & ~np.asarray(terminated)
    tail = gamma ** horizon * alive * np.asarray(jax.vmap(plain_value)(obs))
    return reward + total + tail, alive_after_first & ~alive


SLIPS = {"one model step too few": {"horizon": 2}, "one model step too many": {"horizon": 4},
         "no reward on the step a model episode ends": {"reward_at_terminal": False}}
"""Changes to Q_hat's definition at horizon 3 that the MVG test must tell from the code's output."""


def test_mvg_q_at_horizon_three_with_model_terminals_is_unbiased_for_its_definition(batch, monkeypatch):
    """Key-independent: the mean of mvg_advantages over many replicates of each real (s, a) against a numpy Monte
    Carlo of Q_hat's definition, within a 4.5-standard-error band; the same band rejects the usual slips (one model
    step too few or too many, the terminal step's reward dropped), so the test can fail."""
    env, agent, state, _ = batch
    sources, policy, params = agent.model_gradients, agent.policy, state.policy_params
    speed, horizon, gamma, replicates = 1.0, 3, 0.9, 4000  # horizon 3: SLIPS are written for it
    monkeypatch.setattr(sources, "_model_step", pendulum_step_ending_above(env, speed))
    monkeypatch.setattr(sources, "settings", ReinforceConfig(**{**SMALL, "gradient": "mvg", "model_horizon": horizon}))
    # (theta, theta_dot, action, real reward, real terminal): mid-episode pairs whose model episodes end at random
    # steps, one whose first model step ends it, one at a real terminal.
    pairs = [(0.3, 0.2, 0.5, -1.0, False), (-0.4, 0.6, -0.3, -2.0, False), (2.5, -0.5, 1.0, -6.0, False),
             (0.2, 1.6, 0.0, -0.5, False), (1.0, 0.0, 0.0, -1.5, True)]
    theta, theta_dot, action, reward, terminal = (np.array(column) for column in zip(*pairs))
    obs = np.stack([np.cos(theta), np.sin(theta), theta_dot], 1).astype(np.float32)
    T, n = len(pairs), replicates
    rollout = Rollout(jnp.asarray(np.repeat(obs[:, None], n, 1)), jnp.asarray(np.repeat(action[:, None, None], n, 1),
                      jnp.float32), jnp.zeros((T, n)), jnp.asarray(np.repeat(reward[:, None], n, 1), jnp.float32),
                      jnp.zeros((T, n, 3)), jnp.asarray(np.repeat(terminal[:, None], n, 1)), jnp.zeros((T, n), bool),
                      jnp.zeros((T, n)))
    advantages = np.asarray(sources.mvg_advantages(params, plain_value, None, rollout, jax.random.key(7)))
    q = advantages + np.asarray(jax.vmap(plain_value)(jnp.asarray(obs)))[:, None]
    rng = np.random.default_rng(11)
    ended_at_random, rejected = 0, set()
    for i in range(T):
        def reference(**changes):
            return mvg_q_by_numpy_monte_carlo(env, policy, params, obs[i], action[i:i + 1], reward[i],
                                              changes.get("horizon", horizon), gamma, speed, 4 * n, rng,
                                              changes.get("reward_at_terminal", True))[0]

        def band(samples):
            if terminal[i]:
                return abs(q[i].mean() - reward[i]), 1e-5
            gap = abs(q[i].mean() - samples.mean())
            return gap, 4.5 * np.sqrt(q[i].var() / n + samples.var() / samples.size) + 1e-5

        gap, width = band(reference())
        assert gap < width, (pairs[i], q[i].mean(), gap, width)
        if terminal[i]:
            np.testing.assert_allclose(q[i], reward[i], atol=1e-5)  # a real terminal: Q_hat = r, nothing after
            continue
        _, ended_later = mvg_q_by_numpy_monte_carlo(env, policy, params, obs[i], action[i:i + 1], reward[i], horizon,
                                                    gamma, speed, n, rng)
        ended_at_random += 0.05 < ended_later.mean() < 0.95
        for slip, changes in SLIPS.items():
            gap, width = band(reference(**changes))
            if gap > width:
                rejected.add(slip)
    assert ended_at_random >= 2  # two pairs' model episodes end after the first step in some draws, not in others
    assert rejected == set(SLIPS), rejected


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_fmg_advantages_stop_at_a_model_terminal_and_vanish_after_it(batch, monkeypatch, lam):
    """The FMG row of candidate_batch on imagined trajectories that the model ends mid-batch, against a plain loop
    over the trajectories that row itself holds (so no key is replayed): GAE(gamma, lam) up to and including the
    terminal step with no bootstrap there, V's bootstrap only where a trajectory is still running at the batch's end,
    zero from the step after the terminal on."""
    env, agent, state, _ = batch
    sources = agent.model_gradients
    speed, gamma, scale, T, n = 1.5, 0.9, 2.0, 8, 64
    model = pendulum_step_ending_above(env, speed)
    monkeypatch.setattr(sources, "_model_step", model)
    monkeypatch.setattr(sources, "lam", lam)
    real = Rollout(jnp.zeros((T, n, 3)), jnp.zeros((T, n, 1)), jnp.zeros((T, n)), jnp.zeros((T, n)),
                   jnp.zeros((T, n, 3)), jnp.zeros((T, n), bool), jnp.zeros((T, n), bool), jnp.zeros((T, n)))
    rows = sources.candidate_batch(state.policy_params, plain_value, None, real, jnp.zeros((T, n)), scale,
                                   jax.random.key(8))
    obs, actions = np.asarray(rows.obs[2]), np.asarray(rows.action[2])
    advantage = np.asarray(rows.advantage[2]) * scale
    expected, terminal_steps = np.zeros((T, n)), []
    for e in range(n):
        next_obs, reward, terminated = (np.asarray(x) for x in model(None, jnp.asarray(obs[:, e]),
                                                                     jnp.asarray(actions[:, e]), jax.random.key(0)))
        np.testing.assert_allclose(obs[1:, e], next_obs[:-1], rtol=1e-6, atol=1e-6)  # one trajectory per column
        value, next_value = (np.asarray(jax.vmap(plain_value)(jnp.asarray(o))) for o in (obs[:, e], next_obs))
        ended = bool(terminated.any())
        end = int(np.argmax(terminated)) if ended else T - 1
        if ended:
            terminal_steps.append(end)
        running = 0.0
        for t in range(end, -1, -1):
            bootstrap = 0.0 if (ended and t == end) else gamma * next_value[t]
            running = reward[t] + bootstrap - value[t] + (gamma * lam * running if t < end else 0.0)
            expected[t, e] = running
    # The draws really end trajectories mid-batch, at several different steps.
    assert 0.2 * n < len(terminal_steps) < 0.9 * n and len(set(terminal_steps) - {T - 1}) >= 3
    np.testing.assert_allclose(advantage, expected, rtol=1e-4, atol=1e-4)
