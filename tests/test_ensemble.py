import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.envs import Pendulum, autoreset
from mbpg.envs.classic_control import angle_normalize
from mbpg.models import (
    EnsembleConfig,
    ModelDivergenceError,
    ModelEnv,
    fit_ensemble,
    init_ensemble,
    predict_ensemble,
    predict_ensemble_all,
)
from mbpg.models.ensemble import bootstrap_indices, epoch_batches, predict_batch

SMALL = EnsembleConfig(n_members=3, n_elites=2, hidden=(32, 32))


def pendulum_transitions(key, n):
    """Random states and torques over Pendulum's whole range, one real step each (generative access)."""
    env = Pendulum()
    key_s, key_a = jax.random.split(key)
    states = jax.random.uniform(key_s, (n, 2), minval=jnp.array([-jnp.pi, -8.0]), maxval=jnp.array([jnp.pi, 8.0]))
    actions = jax.random.uniform(key_a, (n, 1), minval=-2.0, maxval=2.0)
    next_states, rewards = jax.vmap(env.step)(states, actions, jax.random.split(key, n))
    return tuple(np.asarray(a) for a in (env.observation(states), actions, env.observation(next_states), rewards))


def pendulum_reward(obs, action, next_obs):
    theta = jnp.arctan2(obs[1], obs[0])
    torque = jnp.clip(action[0], -2.0, 2.0)
    return -(angle_normalize(theta) ** 2 + 0.1 * obs[2] ** 2 + 0.001 * torque**2)


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


@pytest.fixture(scope="module")
def data():
    return pendulum_transitions(jax.random.key(0), 3000)


@pytest.fixture(scope="module")
def fitted(data):
    model = init_ensemble(SMALL, 3, 1, jax.random.key(1))
    fitted_model, report = fit_ensemble(model, *data, jax.random.key(2))
    return model, fitted_model, report


def holdout_predictions(model, data, report):
    obs, actions, next_obs, rewards = (a[report.holdout_indices] for a in data)
    means, variances = jax.vmap(predict_ensemble_all, in_axes=(None, 0, 0))(model, obs, actions)
    targets = np.concatenate([next_obs, rewards[:, None]], 1)
    return np.asarray(means), np.asarray(variances), targets, obs


def test_fit_learns_the_pendulum_dynamics(data, fitted):
    _, model, report = fitted
    means, _, targets, obs = holdout_predictions(model, data, report)
    change = targets[:, :3] - obs
    relative_mse = ((means[:, :, :3] - targets[:, None, :3]) ** 2).mean((0, 1)) / change.var(0)
    assert np.all(relative_mse < 0.05), relative_mse
    assert report.epochs == report.train_nll.shape[0] == report.holdout_mse_history.shape[0] >= 2
    assert np.all(report.train_nll[-1] < report.train_nll[0] - 1.0)
    assert np.all(report.holdout_nll[-1] < report.holdout_nll[0])
    assert report.stopped_early or report.epochs == SMALL.max_epochs  # patience may also run out in the last


def test_members_disagree_a_little_and_do_not_collapse(data, fitted):
    _, model, report = fitted
    means, _, targets, _ = holdout_predictions(model, data, report)
    spread = means.std(1).mean(0) / targets.std(0)  # disagreement between members, per output, relative
    assert np.all(spread > 1e-4), spread
    assert np.all(spread < 0.2), spread
    first = model.members.net.layers[0].weight
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])


def test_bootstrap_is_drawn_once_and_only_reshuffled_between_epochs():
    key, n, members = jax.random.key(3), 50, 3
    bootstrap = np.asarray(bootstrap_indices(key, members, n))
    assert bootstrap.shape == (members, n) and bootstrap.min() >= 0 and bootstrap.max() < n
    np.testing.assert_array_equal(bootstrap, np.asarray(bootstrap_indices(key, members, n)))
    assert not np.array_equal(bootstrap[0], bootstrap[1])
    assert len(np.unique(bootstrap[0])) < n  # drawn with replacement
    orders = []
    for epoch in range(2):
        batches = np.asarray(epoch_batches(jax.random.fold_in(key, epoch), jnp.asarray(bootstrap), 16))
        assert batches.shape == (4, members, 16)  # ceil(50 / 16) batches of a static size
        order = batches.transpose(1, 0, 2).reshape(members, -1)
        for m in range(members):  # one epoch shows member m exactly its own resample
            np.testing.assert_array_equal(np.sort(order[m, :n]), np.sort(bootstrap[m]))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])


def test_fit_trains_every_epoch_on_the_same_per_member_resample(data, monkeypatch):
    """The resample is drawn once per fit (redrawing it every epoch collapses the members, the bug ALGORITHMS.md
    warns of): the bootstrap that fit hands each epoch is recorded and must never change."""
    import mbpg.models.ensemble as ensemble

    seen, original = [], ensemble._epoch

    def recording(members, opt_state, best_members, best_mse, key, bootstrap, *rest, **kwargs):
        seen.append(np.asarray(bootstrap))
        return original(members, opt_state, best_members, best_mse, key, bootstrap, *rest, **kwargs)

    monkeypatch.setattr(ensemble, "_epoch", recording)
    config = dataclasses.replace(SMALL, max_epochs=3, patience=10)
    fit_ensemble(init_ensemble(config, 3, 1, jax.random.key(1)), *(a[:600] for a in data), jax.random.key(2))
    assert len(seen) == 3
    assert all(np.array_equal(seen[0], later) for later in seen[1:])
    assert not np.array_equal(seen[0][0], seen[0][1])


def test_elites_are_the_members_with_the_lowest_holdout_mse(data, fitted):
    _, model, report = fitted
    means, _, targets, _ = holdout_predictions(model, data, report)
    std = np.asarray(model.target_std)
    mse = (((means - targets[:, None]) / std) ** 2).mean((0, 2))
    np.testing.assert_allclose(mse, report.holdout_mse, rtol=1e-3)
    expected = np.argsort(mse)[: SMALL.n_elites]
    np.testing.assert_array_equal(np.sort(report.elites), np.sort(expected))
    np.testing.assert_array_equal(np.asarray(model.elites), report.elites)
    assert len(set(report.holdout_indices)) == report.holdout_indices.size == int(0.2 * len(data[0]))


def test_log_variance_stays_inside_its_soft_bounds_far_from_the_data(fitted):
    _, model, _ = fitted
    far_obs = jnp.array([[30.0, -30.0, 800.0], [-1e3, 1e3, -1e4], [0.0, 0.0, 0.0]])
    far_actions = jnp.array([[200.0], [-1e3], [0.0]])
    _, variances = jax.vmap(predict_ensemble_all, in_axes=(None, 0, 0))(model, far_obs, far_actions)
    log_var = np.log(np.asarray(variances) / np.asarray(model.target_std) ** 2)  # back to normalised units
    upper, lower = np.asarray(model.members.max_log_var), np.asarray(model.members.min_log_var)
    assert np.all(np.isfinite(log_var))
    assert np.all(log_var <= upper + 1e-3) and np.all(log_var >= lower - 1e-3)
    assert np.all(upper - lower > 1.0)  # the penalty pulls the bounds together but they still bound a range


def first_batch_holding(row: int, n: int, key: jax.Array):
    """(members, epoch, batch) of the first training batch that contains `row`, or None if `row` is in the
    holdout: fit's key use (split, one bootstrap per fit, a reshuffle per epoch) rebuilt from its parts."""
    n_hold = min(int(n * SMALL.holdout_fraction), SMALL.max_holdout)
    key_split, key_boot, key_epochs = jax.random.split(key, 3)
    train_rows = np.asarray(jax.random.permutation(key_split, n))[n_hold:]
    if row not in train_rows:
        return None
    position = int(np.flatnonzero(train_rows == row)[0])
    boot = bootstrap_indices(key_boot, SMALL.n_members, n - n_hold)
    for epoch in range(SMALL.max_epochs):
        hits = (np.asarray(epoch_batches(jax.random.fold_in(key_epochs, epoch), boot, SMALL.batch_size))
                == position).any(-1)  # [batches, members]
        if hits.any():
            batch = int(np.flatnonzero(hits.any(1))[0])
            return tuple(int(m) for m in np.flatnonzero(hits[batch])), epoch, batch
    return None


@pytest.mark.parametrize("row, split", [(5, "train"), (123, "holdout")])  # where key 2 puts the row
def test_nan_in_a_target_raises_naming_the_member(data, row, split):
    obs, actions, next_obs, rewards = (a.copy() for a in data)
    rewards[row] = np.nan
    model = init_ensemble(SMALL, 3, 1, jax.random.key(1))
    with pytest.raises(ModelDivergenceError, match=rf"epoch 0.*row\(s\) \[{row}\]") as caught:
        fit_ensemble(model, obs, actions, next_obs, rewards, jax.random.key(2))
    error = caught.value
    expected = first_batch_holding(row, len(obs), jax.random.key(2))
    assert (expected is None) == (split == "holdout")
    if expected is None:  # the holdout is scored with every member
        assert (error.members, error.epoch, error.batch) == ((0, 1, 2), 0, None)
        assert "holdout evaluation" in str(error)
    else:
        assert (error.members, error.epoch, error.batch) == expected
        named = ", ".join(map(str, expected[0]))
        assert f"member{'s' if len(expected[0]) > 1 else ''} {named} (of 3)" in str(error)
        assert f"batch {expected[2]}" in str(error)
    assert isinstance(error, ValueError)
    assert all_finite(error.last_good_model)


def test_diverging_learning_rate_raises_and_keeps_finite_parameters(data):
    config = dataclasses.replace(SMALL, learning_rate=1e6, max_epochs=3)
    model = init_ensemble(config, 3, 1, jax.random.key(1))
    with pytest.raises(ModelDivergenceError, match=r"member.*lower learning_rate") as caught:
        fit_ensemble(model, *(a[:600] for a in data), jax.random.key(2))
    assert caught.value.members and all_finite(caught.value.last_good_model)


def test_same_seed_gives_identical_parameters(data, fitted):
    start, model, report = fitted
    again, again_report = fit_ensemble(start, *data, jax.random.key(2))
    assert bool(eqx.tree_equal(model, again))
    np.testing.assert_array_equal(report.holdout_mse, again_report.holdout_mse)
    other, _ = fit_ensemble(start, *data, jax.random.key(5))
    assert not bool(eqx.tree_equal(model, other))


def test_predict_is_jittable_vmappable_and_samples_an_elite(data, fitted):
    _, model, _ = fitted
    obs, actions = data[0][:64], data[1][:64]
    keys = jax.random.split(jax.random.key(7), 64)
    batched = jax.jit(jax.vmap(predict_ensemble, in_axes=(None, 0, 0, 0)))
    next_obs, rewards = batched(model, obs, actions, keys)
    assert next_obs.shape == (64, 3) and rewards.shape == (64,)
    mean_obs, mean_rewards = jax.vmap(lambda o, a, k: predict_ensemble(model, o, a, k, deterministic=True))(
        obs, actions, keys)
    means, _ = jax.vmap(predict_ensemble_all, in_axes=(None, 0, 0))(model, obs, actions)
    elite_means = np.asarray(means)[:, np.asarray(model.elites)]
    gaps = np.abs(elite_means - np.concatenate([mean_obs, mean_rewards[:, None]], 1)[:, None]).max(-1)
    assert np.all(gaps.min(1) < 1e-5)  # the deterministic prediction is one elite's mean
    assert not np.allclose(next_obs, mean_obs)  # the default samples


@pytest.mark.parametrize("n", [6, 7, 10])
def test_predict_batch_balances_the_elites_and_gives_each_row_a_uniform_one(n):
    """Whatever N, every call splits the rows over the elites as evenly as possible, and over many calls each row
    is served by each elite 1/n_elites of the time (cutting the permutation into consecutive groups left two of 5
    elites idle at N = 6). Untrained members suffice: their means differ, which identifies the elite per row."""
    model = init_ensemble(EnsembleConfig(n_members=7, n_elites=5, hidden=(8,)), 3, 1, jax.random.key(0))
    obs, actions = jax.random.normal(jax.random.key(1), (n, 3)), jax.random.normal(jax.random.key(2), (n, 1))
    draws = 1000
    next_obs, rewards = jax.jit(jax.vmap(lambda k: predict_batch(model, obs, actions, k, deterministic=True)))(
        jax.random.split(jax.random.key(3), draws))
    means, _ = jax.vmap(predict_ensemble_all, in_axes=(None, 0, 0))(model, obs, actions)
    elite_means = np.asarray(means)[:, np.asarray(model.elites)]  # [n, 5, 4]
    predictions = np.concatenate([np.asarray(next_obs), np.asarray(rewards)[..., None]], -1)  # [draws, n, 4]
    gaps = np.abs(elite_means[None] - predictions[:, :, None]).max(-1)  # [draws, n, 5]
    assert (gaps.min(-1) < 1e-5).all()  # each row is one elite's prediction
    which = gaps.argmin(-1)
    per_call = np.stack([np.bincount(w, minlength=5) for w in which])
    assert per_call.max() - per_call.min(1).min() <= 1 and (per_call.max(1) - per_call.min(1) <= 1).all()
    share = np.stack([(which == e).mean(0) for e in range(5)])  # [5, n]: how often elite e served row i
    # Binomial(1000, 0.2) per entry: 4.5 standard errors is 0.057.
    assert np.abs(share - 0.2).max() < 4.5 * np.sqrt(0.2 * 0.8 / draws), np.round(share, 3)


def test_model_env_steps_under_jit_and_with_autoreset(data, fitted):
    _, model, _ = fitted
    real = Pendulum()
    env = ModelEnv.like(real, model, data[0][:100], deterministic=True)
    assert env.observation_space.shape == (3,) and env.max_episode_steps == 200
    state = eqx.filter_jit(env.reset)(jax.random.key(0))
    assert any(np.allclose(state, s) for s in data[0][:100])
    next_obs, reward = jax.jit(lambda s, a, k: env.step(s, a, k))(state, jnp.array([1.0]), jax.random.key(1))
    assert next_obs.shape == (3,) and reward.shape == ()
    theta = jnp.arctan2(state[1], state[0])
    true_next, true_reward = real.step(jnp.array([theta, state[2]]), jnp.array([1.0]), None)
    assert np.allclose(next_obs, real.observation(true_next), atol=0.1)
    assert abs(float(reward - true_reward)) < 0.5

    @jax.jit
    def rollout(key):
        def body(env_state, key):
            key_a, key_s = jax.random.split(key)
            action = jax.random.uniform(key_a, (1,), minval=-2.0, maxval=2.0)
            return autoreset.step(env, env_state, action, key_s, limit=5)

        return jax.lax.scan(body, autoreset.reset(env, key), jax.random.split(key, 12))

    final, transitions = rollout(jax.random.key(2))
    assert transitions.obs.shape == (12, 3) and np.all(np.isfinite(transitions.next_obs))
    np.testing.assert_array_equal(transitions.truncated, np.arange(1, 13) % 5 == 0)
    assert not transitions.terminated.any() and int(final.t) == 2


def test_model_env_uses_a_known_reward_and_requires_one_without_reward_prediction():
    config = dataclasses.replace(SMALL, predict_reward=False)
    model = init_ensemble(config, 3, 1, jax.random.key(0))
    starts = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    with pytest.raises(ValueError, match="does not predict the reward.*reward_fn"):
        ModelEnv.like(Pendulum(), model, starts)
    env = ModelEnv.like(Pendulum(), model, starts, reward_fn=pendulum_reward,
                        termination_fn=lambda obs: obs[2] > 100.0)
    state = starts[1]
    _, reward = eqx.filter_jit(env.step)(jnp.asarray(state), jnp.array([5.0]), jax.random.key(0))
    theta = np.arctan2(state[1], state[0])
    np.testing.assert_allclose(reward, -(theta**2 + 0.1 * 4.0 + 0.001 * 4.0), rtol=1e-5)  # torque clipped to 2
    assert env.is_terminal(jnp.array([0.0, 0.0, 101.0])) and not env.is_terminal(jnp.asarray(state))


def test_config_and_data_errors_name_the_fix():
    with pytest.raises(ValueError, match="n_elites"):
        EnsembleConfig(n_members=2, n_elites=3)
    with pytest.raises(ValueError, match="one non-negative value per layer"):
        EnsembleConfig(hidden=(8, 8), weight_decay=(1e-5, 1e-5))
    model = init_ensemble(SMALL, 3, 1, jax.random.key(0))
    with pytest.raises(ValueError, match=r"next_obs must have shape \[4, 3\]"):
        fit_ensemble(model, np.zeros((4, 3)), np.zeros((4, 1)), np.zeros((4, 2)), np.zeros(4), jax.random.key(0))
    with pytest.raises(ValueError, match="collect more data"):
        fit_ensemble(model, np.zeros((3, 3)), np.zeros((3, 1)), np.zeros((3, 3)), np.zeros(3), jax.random.key(0))


def test_a_model_env_is_a_gymnasium_env_starting_from_the_buffer_or_the_initial_distribution(data, fitted):
    from gymnasium.utils.env_checker import check_env

    from mbpg.envs import as_gymnasium

    _, model, _ = fitted
    real = Pendulum()
    from_buffer = ModelEnv.like(real, model, data[0][:50], reward_fn=pendulum_reward)
    from_initial = ModelEnv.like(real, model, reward_fn=pendulum_reward, from_initial=True)
    for env in (from_buffer, from_initial):
        wrapped = as_gymnasium(env)
        check_env(wrapped, skip_render_check=True)
        obs, _ = wrapped.reset(seed=0)
        next_obs, reward, terminated, truncated, _ = wrapped.step(np.array([0.5], np.float32))
        assert obs.shape == next_obs.shape == (3,) and np.isfinite(reward) and not terminated and not truncated
    starts = np.asarray(jax.vmap(from_initial.reset)(jax.random.split(jax.random.key(0), 500)))
    # Pendulum-v1 starts with theta ~ U(-pi, pi) and theta_dot ~ U(-1, 1): the buffer's states range over +-8.
    assert np.allclose(np.hypot(starts[:, 0], starts[:, 1]), 1.0, atol=1e-5) and np.abs(starts[:, 2]).max() <= 1.0
    assert np.abs(starts[:, 2]).max() > 0.9
    with pytest.raises(ValueError, match="needs start states"):
        ModelEnv.like(real, model, reward_fn=pendulum_reward)
