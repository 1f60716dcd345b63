"""MBPO: the rollout-length schedule, branching from real states, the real/model batch mix, the jitted model fit
it relies on, the known Pendulum reward, bad options, and a CLI run with 2 seeds and --resume."""

import csv
import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos.mbpo import MBPO, MBPOConfig, MixedReplay, add_valid, known_model_functions, rollout_length
from mbpg.algos.replay import Replay
from mbpg.cli import main
from mbpg.envs import Pendulum
from mbpg.models.ensemble import EnsembleConfig, fit_buffer, init_ensemble, predict_all, predict_batch

TINY = MBPOConfig(batch_size=16, hidden=(16, 16), updates_per_step=2, random_steps=50, buffer_size=400,
                  retrain_interval=50, rollouts_per_step=2, epoch_length=50, ensemble_members=3, ensemble_elites=2,
                  model_hidden=(16, 16), model_batch_size=32, model_max_epochs=3)


def pendulum_data(key, n):
    env = Pendulum()
    key_s, key_a = jax.random.split(key)
    states = jax.random.uniform(key_s, (n, 2), minval=jnp.array([-jnp.pi, -8.0]), maxval=jnp.array([jnp.pi, 8.0]))
    actions = jax.random.uniform(key_a, (n, 1), minval=-2.0, maxval=2.0)
    next_states, rewards = jax.vmap(env.step)(states, actions, jax.random.split(key, n))
    return {"obs": env.observation(states), "action": actions, "reward": rewards,
            "next_obs": env.observation(next_states), "terminated": jnp.zeros(n, bool)}


def assert_same_arrays(a, b):
    for x, y in zip(jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array)),
                    strict=True):
        np.testing.assert_array_equal(x, y)


def test_rollout_length_follows_mbpos_linear_schedule():
    config = MBPOConfig(k_min=1, k_max=5, k_first_epoch=2, k_last_epoch=6, epoch_length=10)
    for steps in range(0, 120, 5):
        epoch = steps // 10
        expected = int(min(max(1 + (epoch - 2) / (6 - 2) * (5 - 1), 1), 5))  # MBPO's formula
        assert int(rollout_length(steps, config)) == expected, steps
    assert [int(rollout_length(s, config)) for s in (0, 29, 30, 50, 60, 10_000)] == [1, 1, 2, 4, 5, 5]
    assert int(rollout_length(10**6, MBPOConfig())) == 1  # the default is k = 1 throughout


def test_add_valid_appends_only_valid_rows_in_order_and_wraps():
    replay = Replay.create({"x": jnp.zeros(())}, 5)
    replay = add_valid(replay, {"x": jnp.arange(1.0, 5.0)}, jnp.array([True, False, True, True]))
    assert replay.data["x"].tolist() == [1, 3, 4, 0, 0] and int(replay.size) == 3 and int(replay.position) == 3
    replay = add_valid(replay, {"x": jnp.arange(10.0, 14.0)}, jnp.array([True, True, True, False]))
    assert replay.data["x"].tolist() == [12, 3, 4, 10, 11] and int(replay.size) == 5 and int(replay.position) == 1


def test_sample_recent_draws_only_the_newest_size_rows_of_a_wrapped_buffer():
    replay = add_valid(Replay.create({"x": jnp.zeros(())}, 5), {"x": jnp.arange(1.0, 8.0)}, jnp.ones(7, bool))
    assert replay.data["x"].tolist() == [6, 7, 3, 4, 5] and int(replay.position) == 2
    kept = dataclasses.replace(replay, size=jnp.asarray(3, jnp.int32))
    drawn = set(kept.sample_recent(jax.random.key(0), 200)["x"].tolist())
    assert drawn == {5.0, 6.0, 7.0}  # the three newest rows, all of them, and nothing older
    assert set(replay.sample_recent(jax.random.key(0), 200)["x"].tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}


def test_k_schedule_retains_model_retain_epochs_at_the_current_k(refreshed):
    """MBPO resizes its model pool to retain_epochs * rollouts per epoch * k whenever k changes. Here k is still 1
    of k_max = 3: the buffer (sized for k = 3) must keep one epoch of k = 1 rollouts, not three (review finding:
    it kept model_retain_epochs * k_max / k epochs)."""
    _, state, _, _, _, _ = refreshed
    config = dataclasses.replace(TINY, k_max=3, k_first_epoch=100, k_last_epoch=200)
    agent = MBPO(config, Pendulum())
    replay = dataclasses.replace(agent.init(jax.random.key(0)).sac.replay, real=state.sac.replay.real)
    assert replay.model_recent  # set by init under a k schedule
    state = dataclasses.replace(state, sac=dataclasses.replace(state.sac, replay=replay))
    refresh = eqx.filter_jit(agent.refresh_model)
    state, _ = refresh(state, jax.random.key(3))
    state, metrics = refresh(state, jax.random.key(4))
    one_epoch = config.epoch_length * config.rollouts_per_step  # at k = 1
    model = state.sac.replay.model
    assert model.capacity == 3 * one_epoch and int(model.position) == 2 * one_epoch
    assert int(model.size) == one_epoch and metrics["model_buffer_size"] == one_epoch
    newest = np.asarray(model.data["next_obs"][one_epoch:2 * one_epoch])
    batch = state.sac.replay.sample(jax.random.key(5), 64)
    rows = np.asarray(batch["next_obs"][agent.n_real:])
    assert (np.abs(rows[:, None, :] - newest[None]).max(-1).min(1) == 0).all()  # only the second refresh's rows


def test_batches_mix_real_and_model_rows_in_the_configured_ratio():
    example = {"reward": jnp.zeros(())}
    real = add_valid(Replay.create(example, 50), {"reward": jnp.ones(30)}, jnp.ones(30, bool))
    model = add_valid(Replay.create(example, 100), {"reward": -jnp.ones(80)}, jnp.ones(80, bool))
    agent = MBPO(dataclasses.replace(TINY, batch_size=40, real_ratio=0.25), Pendulum())
    batch = MixedReplay(real, model, agent.n_real).sample(jax.random.key(0), 40)
    assert agent.n_real == 10 and int(jnp.sum(batch["reward"] == 1)) == 10 and int(jnp.sum(batch["reward"] == -1)) == 30
    assert MBPO(TINY, Pendulum()).n_real == round(0.05 * 16)  # MBPO's 5% of the batch by default


def test_known_pendulum_reward_is_the_environments():
    env = Pendulum()
    reward_fn, termination_fn = known_model_functions(env)
    data = pendulum_data(jax.random.key(1), 64)
    states = jnp.stack([jnp.arctan2(data["obs"][:, 1], data["obs"][:, 0]), data["obs"][:, 2]], 1)
    rewards = jax.vmap(reward_fn)(data["obs"], data["action"], data["next_obs"])
    np.testing.assert_allclose(rewards, data["reward"], rtol=1e-5, atol=1e-5)
    assert not bool(jnp.any(termination_fn(data["next_obs"]))) and states.shape == (64, 2)
    assert known_model_functions(env, learn_reward=True)[0] is None


@pytest.fixture(scope="module")
def refreshed():
    """An agent whose real buffer holds 200 Pendulum transitions, after one model refresh (fit + branch)."""
    agent = MBPO(TINY, Pendulum())
    state = agent.init(jax.random.key(0))
    data = pendulum_data(jax.random.key(2), 200)
    replay = state.sac.replay
    replay = dataclasses.replace(replay, real=add_valid(replay.real, data, jnp.ones(200, bool)))
    state = dataclasses.replace(state, sac=dataclasses.replace(state.sac, replay=replay, steps=jnp.asarray(50)))
    refresh = eqx.filter_jit(agent.refresh_model)
    new_state, metrics = refresh(state, jax.random.key(3))
    return agent, state, new_state, metrics, data, refresh


def test_k1_model_transitions_all_start_at_real_states(refreshed):
    agent, _, state, metrics, data, _ = refreshed
    model = state.sac.replay.model
    n = int(model.size)
    assert n == agent.n_rollouts == TINY.rollouts_per_step * TINY.retrain_interval
    assert metrics["rollout_length"] == 1 and metrics["model_epochs"] >= 1 and metrics["model_failed"] == 0
    real_obs = np.asarray(data["obs"])
    model_obs = np.asarray(model.data["obs"][:n])
    distance = np.abs(model_obs[:, None, :] - real_obs[None, :, :]).max(-1).min(1)
    assert distance.max() == 0.0  # every imagined transition branches from a real observation: d is real
    # ... and its next state and reward come from the model (with Pendulum's known reward).
    assert np.abs(np.asarray(model.data["next_obs"][:n]) - model_obs).max() > 1e-3
    reward_fn = agent.reward_fn
    expected = jax.vmap(reward_fn)(model.data["obs"][:n], model.data["action"][:n], model.data["next_obs"][:n])
    np.testing.assert_allclose(model.data["reward"][:n], expected, rtol=1e-6)


def test_fit_changed_the_model_and_nothing_is_stored_before_random_steps(refreshed):
    agent, before, after, _, _, refresh = refreshed
    assert not np.allclose(before.model.members.max_log_var, after.model.members.max_log_var)
    early = dataclasses.replace(before, sac=dataclasses.replace(before.sac, steps=jnp.asarray(10)))
    state, metrics = refresh(early, jax.random.key(3))  # same shapes: no second compilation
    assert int(state.sac.replay.model.size) == 0 and metrics["model_epochs"] == 0
    assert_same_arrays(state.model, before.model)


def test_longer_rollouts_chain_model_states(refreshed):
    """k = 2 of k_max = 3: step 2 starts where step 1's model prediction ended, step 3 is masked out."""
    agent, _, state, _, data, _ = refreshed
    starts = data["obs"][:10]
    long_agent = MBPO(dataclasses.replace(TINY, k_max=3), Pendulum())
    transitions, valid = long_agent.branch(state.sac.actor, state.model, starts, 2, jax.random.key(4))
    assert valid.shape == (3, 10) and valid[:2].all() and not valid[2].any()
    np.testing.assert_array_equal(transitions["obs"][0], starts)
    np.testing.assert_array_equal(transitions["obs"][1], transitions["next_obs"][0])


def test_fit_buffer_ignores_rows_past_size_and_keeps_the_model_on_divergence():
    config = EnsembleConfig(n_members=2, n_elites=1, hidden=(8,), max_epochs=3)
    model = init_ensemble(config, 3, 1, jax.random.key(0))
    data = pendulum_data(jax.random.key(5), 100)
    args = [data[k] for k in ("obs", "action", "next_obs", "reward")]

    def padded(fill):  # 20 rows past `size` that the fit must ignore
        return [jnp.concatenate([a, jnp.full((20,) + a.shape[1:], fill, a.dtype)]) for a in args]

    fit = eqx.filter_jit(fit_buffer)
    first, info = fit(model, *padded(0.0), 100, jax.random.key(1))
    assert int(info.epochs) == 3 and not bool(info.failed)
    for fill in (1e6, 1e20, jnp.inf, jnp.nan):  # 1e20 squares to inf in float32; 0 * inf is nan
        second, info = fit(model, *padded(fill), 100, jax.random.key(1))
        assert not bool(info.failed), fill
        assert_same_arrays(first, second)
    broken = padded(0.0)
    broken[2] = broken[2].at[7, 0].set(jnp.nan)
    kept, info = fit(model, *broken, 100, jax.random.key(1))
    assert bool(info.failed)
    assert_same_arrays(kept, model)


def test_fit_buffer_that_diverges_mid_fit_on_finite_data_returns_the_model_passed_in():
    """A learning rate of 1e6 on finite data trains for a few epochs before the parameters overflow: the loss is
    checked every step and the parameters once per epoch, and either way the fit must report the failure and hand
    back the model it was given."""
    config = EnsembleConfig(n_members=3, n_elites=2, hidden=(16,), max_epochs=10, learning_rate=1e6)
    model = init_ensemble(config, 3, 1, jax.random.key(0))
    data = pendulum_data(jax.random.key(5), 300)
    kept, info = eqx.filter_jit(fit_buffer)(model, *[data[k] for k in ("obs", "action", "next_obs", "reward")], 300,
                                            jax.random.key(1))
    assert bool(info.failed) and int(info.epochs) > 1  # it diverged mid-fit, not at the first step
    assert_same_arrays(kept, model)


def test_fit_buffer_trains_each_member_on_its_own_fixed_resample():
    """The per-member resample is drawn once per fit_buffer call (redrawing it every step collapses the members,
    the bug ALGORITHMS.md warns of). One training row gets a reward far off the others: a member whose resample
    holds that row is pulled toward it, a member whose resample lacks it never sees it. Were the resample redrawn
    every step, every member would see the row about equally often and the two groups would not separate. Which
    members hold the row is rebuilt here from fit_buffer's documented key use (split, bootstrap, epochs)."""
    config = EnsembleConfig(n_members=6, n_elites=2, hidden=(16,), max_epochs=100, patience=100, batch_size=16)
    model = init_ensemble(config, 3, 1, jax.random.key(0))
    n, key = 100, jax.random.key(7)
    data = pendulum_data(jax.random.key(5), n)
    n_hold = int(n * config.holdout_fraction)
    n_train = n - n_hold
    key_split, key_boot, _ = jax.random.split(key, 3)
    order = np.asarray(jnp.argsort(jax.random.uniform(key_split, (n,))))
    resample = np.asarray(jax.random.randint(key_boot, (config.n_members, n), 0, n_train))[:, :n_train]
    holders = np.array([[j in set(row) for row in resample] for j in range(n_train)])  # [position, member]
    position = int(np.flatnonzero(holders.sum(1) == config.n_members // 2)[0])  # held by half of the members
    row = int(order[n_hold + position])
    # The odd row lies far from the others (angular velocity 30, the data's is within 8), so fitting it barely
    # moves a member's holdout error, and its reward is far off too (Pendulum's lie in [-16.3, 0]).
    far = jnp.array([1.0, 0.0, 30.0])
    obs = data["obs"].at[row].set(far)
    next_obs = data["next_obs"].at[row].set(far + data["next_obs"][row] - data["obs"][row])
    rewards = data["reward"].at[row].set(100.0)
    fitted, info = eqx.filter_jit(fit_buffer)(model, obs, data["action"], next_obs, rewards, n, key)
    assert not bool(info.failed) and int(info.epochs) == config.max_epochs
    means, _ = predict_all(fitted, obs[row], data["action"][row])
    predicted = np.asarray(means[:, -1])  # each member's predicted reward at the odd row
    held = holders[position]
    # Margins 26-35 over 6 keys with the fixed resample, -14 to -2 with one redrawn every step (a one-line patch).
    assert predicted[held].min() > predicted[~held].max() + 10.0, (predicted, held)


def test_predict_batch_gives_each_row_one_elites_prediction_balanced(refreshed):
    _, _, state, _, data, _ = refreshed
    model = state.model
    obs, actions = data["obs"][:101], data["action"][:101]
    next_obs, _ = predict_batch(model, obs, actions, jax.random.key(6), deterministic=True)
    means, _ = jax.vmap(predict_all, in_axes=(None, 0, 0))(model, obs, actions)
    elite_means = np.asarray(means[:, model.elites, :3])  # [101, n_elites, 3]
    match = np.abs(elite_means - np.asarray(next_obs)[:, None, :]).max(-1) < 1e-5
    assert match.any(1).all()
    counts = np.bincount(match.argmax(1), minlength=2)
    assert abs(counts[0] - counts[1]) <= 1  # 101 rows split 51/50 between the 2 elites


@pytest.mark.parametrize("options, message", [
    (["--random-steps", "60"], "multiple of --retrain-interval"),
    (["--real-ratio", "1.5"], "--real-ratio must be finite and in [0, 1]"),
    (["--k-min", "3", "--k-max", "2"], "--k-min (3) exceeds --k-max (2)"),
    (["--rollouts-per-step", "0"], "--rollouts-per-step must be finite and > 0"),
])
def test_bad_options_are_rejected(options, message, capsys):
    assert main(["train", "mbpo", "--env", "Pendulum-v1", "--steps", "500", *options, "--out", "/tmp/unused"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mbpo_trains_through_the_cli_with_two_seeds_and_resumes(tmp_path):
    out = tmp_path / "mbpo"
    tiny = ["--batch-size", "16", "--hidden", "16", "16", "--updates-per-step", "2", "--random-steps", "50",
            "--buffer-size", "400", "--retrain-interval", "50", "--rollouts-per-step", "2", "--epoch-length", "50",
            "--ensemble-members", "3", "--ensemble-elites", "2", "--model-hidden", "16", "16", "--model-batch-size",
            "32", "--model-max-epochs", "3"]
    args = ["train", "mbpo", "--env", "Pendulum-v1", "--steps", "100", *tiny, "--seeds", "2", "--eval-every", "50",
            "--eval-episodes", "1", "--checkpoint-every", "50", "--out", str(out), "--no-tensorboard"]
    assert main(args) == 0
    more = [a if a != "100" else "150" for a in args]
    assert main([*more, "--resume"]) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(r["step"]) for r in rows}) == [50, 100, 150] and {float(r["seed"]) for r in rows} == {0.0, 1.0}
    finals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    assert len(finals) == 6 and all(math.isfinite(v) for v in finals)
    learning = [r for r in rows if int(r["step"]) > 50]
    assert all(float(r["model_buffer_size"]) == 100 and float(r["model_epochs"]) >= 1 for r in learning)
    assert all(float(r["model_buffer_size"]) == 0 for r in rows if int(r["step"]) == 50)
