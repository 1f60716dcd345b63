"""ME-TRPO and SLBO: the deterministic ensemble's losses and fit, the pieces of each algorithm, and CLI smoke runs."""

import csv
import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos.metrpo import METRPO, METRPOConfig, ImaginedEnv, validation_verdict
from mbpg.algos.slbo import SLBO, SLBOConfig, ou_step
from mbpg.cli import main
from mbpg.envs import MountainCarContinuous, Pendulum
from mbpg.models.deterministic import (
    TrajectoryBuffer,
    fit_one_step,
    init_deterministic_ensemble,
    init_multi_step_state,
    member_multi_step_loss,
    multi_step_optimizer,
    normalise,
    member_step,
    multi_step_loss,
    one_step_loss,
    predict,
    train_multi_step,
    validation_split,
    window_starts,
)

# A known linear system s' = A s + B a (2 states, 1 action).
A = jnp.array([[1.0, 0.1], [0.0, 0.9]])
B = jnp.array([[0.0], [0.5]])


def linear(a_matrix, b_matrix):
    return lambda s, a: a_matrix @ s + b_matrix @ a


def true_window(s0, actions):
    states = [s0]
    for a in actions:
        states.append(A @ states[-1] + B @ a)
    return jnp.stack(states)


# --------------------------------------------------------------------------------------------------------------
# The multi-step loss


def test_multi_step_loss_is_zero_for_the_true_model():
    actions = jnp.array([[1.0], [-0.5], [0.3]])
    obs = true_window(jnp.array([0.2, -1.0]), actions)
    assert float(multi_step_loss(linear(A, B), obs, actions, jnp.array([0.5, 2.0]))) == pytest.approx(0.0, abs=1e-6)
    # and its gradient there is zero, not NaN (the norm is not differentiable at 0 without care)
    grad = jax.grad(lambda m: multi_step_loss(linear(m, B), obs, actions, jnp.ones(2)))(A)
    assert np.all(np.isfinite(grad)) and np.allclose(grad, 0.0)


def test_multi_step_loss_matches_a_hand_computed_value_for_a_wrong_linear_model():
    # Truth from s0 = (1, 0) with a0 = 1, a1 = 0:
    #   s1 = (1 + 0.1*0, 0.9*0 + 0.5) = (1, 0.5);  s2 = (1 + 0.05, 0.45) = (1.05, 0.45)
    # Wrong model s' = 2 I s (no action term), rolled from s^0 = s0:
    #   s^1 = (2, 0), s^2 = (4, 0)
    # Step 1: (s^1 - s^0) - (s1 - s0) = (1, 0) - (0, 0.5) = (1, -0.5); scaled by (0.5, 0.25): (2, -2)   -> norm sqrt(8)
    # Step 2: (s^2 - s^1) - (s2 - s1) = (2, 0) - (0.05, -0.05) = (1.95, 0.05); scaled: (3.9, 0.2)  -> sqrt(15.25)
    # L = (sqrt(8) + sqrt(15.25)) / 2
    actions = jnp.array([[1.0], [0.0]])
    obs = true_window(jnp.array([1.0, 0.0]), actions)
    np.testing.assert_allclose(obs, [[1.0, 0.0], [1.0, 0.5], [1.05, 0.45]], rtol=1e-6)
    loss = multi_step_loss(linear(2.0 * jnp.eye(2), jnp.zeros((2, 1))), obs, actions, jnp.array([0.5, 0.25]))
    assert float(loss) == pytest.approx((math.sqrt(8.0) + math.sqrt(15.25)) / 2, rel=1e-6)


def test_multi_step_loss_gradient_matches_finite_differences():
    actions = jnp.array([[1.0], [-0.5], [0.3]])
    obs = true_window(jnp.array([0.2, -1.0]), actions)
    scale = jnp.array([0.5, 2.0])
    with jax.enable_x64(True):
        obs64, actions64, scale64 = (jnp.asarray(x, jnp.float64) for x in (obs, actions, scale))
        wrong = jnp.array([[0.9, 0.3], [-0.2, 1.1]], jnp.float64)
        b64 = jnp.asarray(B, jnp.float64) * 1.5

        def loss(m):
            return multi_step_loss(linear(m, b64), obs64, actions64, scale64)

        grad = np.asarray(jax.grad(loss)(wrong))
        eps = 1e-6
        fd = np.zeros((2, 2))
        for i in range(2):
            for j in range(2):
                bump = jnp.zeros((2, 2), jnp.float64).at[i, j].set(eps)
                fd[i, j] = (float(loss(wrong + bump)) - float(loss(wrong - bump))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_multi_step_loss_rejects_mismatched_windows():
    with pytest.raises(ValueError, match=r"obs \[H \+ 1, obs_dim\] and actions \[H, action_dim\]"):
        multi_step_loss(linear(A, B), jnp.zeros((3, 2)), jnp.zeros((3, 1)), jnp.ones(2))


def test_ensemble_losses_agree_with_their_definitions():
    model = init_deterministic_ensemble(3, 2, 1, (8,), jax.random.key(0))
    model = eqx.tree_at(lambda m: (m.delta_mean, m.delta_std, m.input_mean), model,
                        (jnp.array([0.1, -0.2]), jnp.array([0.5, 2.0]), jnp.array([0.3, 0.0, -1.0])))
    net = model.member(1)
    s, a = jnp.array([0.4, -0.7]), jnp.array([0.25])
    expected = s + model.delta_mean + model.delta_std * net((jnp.concatenate([s, a]) - model.input_mean)
                                                           / model.input_std)
    np.testing.assert_allclose(member_step(model, net, s, a), expected, rtol=1e-6)
    np.testing.assert_allclose(predict(model, 1, s, a), expected, rtol=1e-6)
    # H = 1: the multi-step loss is the norm, the one-step loss its square, of the same normalised error.
    s1 = A @ s + B @ a
    window = member_multi_step_loss(model, net, jnp.stack([s, s1]), a[None])
    single = one_step_loss(model, net, s[None], a[None], s1[None])
    assert float(single) == pytest.approx(float(window) ** 2, rel=1e-5)
    assert float(single) == pytest.approx(float(jnp.sum(((expected - s1) / model.delta_std) ** 2)), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Data and fitting


def test_window_starts_never_cross_an_episode_end():
    buffer = TrajectoryBuffer.create(3, 5, 2, 1)
    done = jnp.zeros((2, 5), bool).at[0, 2].set(True)
    buffer = buffer.add(jnp.zeros((2, 5, 2)), jnp.zeros((2, 5, 1)), jnp.zeros((2, 5, 2)), done, jnp.array([0, 1], bool))
    starts = np.asarray(window_starts(buffer, 2))
    # H = 2 windows start at t = 0..3; in segment 0 the one starting at t = 2 would run into a new episode
    np.testing.assert_array_equal(starts, [[1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="exceeds the stored segment length"):
        window_starts(buffer, 6)


def test_trajectory_buffer_overwrites_the_oldest_segments():
    buffer = TrajectoryBuffer.create(3, 2, 1, 1)
    for value in (1.0, 2.0):
        obs = jnp.full((2, 2, 1), value)
        buffer = buffer.add(obs, obs, obs, jnp.zeros((2, 2), bool), jnp.array([value == 2.0, False]))
    np.testing.assert_array_equal(buffer.obs[:, 0, 0], [2.0, 1.0, 2.0])  # slots 0, 1 then 2, 0
    np.testing.assert_array_equal(buffer.validation, [False, False, True])
    assert int(buffer.position) == 1 and bool(buffer.filled.all())


def test_validation_split_is_per_trajectory_and_never_empty():
    for n, expected in ((2, 1), (3, 1), (6, 2), (10, 3)):
        mask = np.asarray(validation_split(jax.random.key(n), n, 1 / 3))
        assert mask.shape == (n,) and mask.sum() == expected
    with pytest.raises(ValueError, match="at least 2 segments"):
        validation_split(jax.random.key(0), 1, 1 / 3)


def test_early_stopping_keeps_each_members_best_validation_epoch():
    # Pure-noise targets and a large step size: the members memorise the training segments and the validation
    # loss rises after a few epochs, so the best epoch is not the last one.
    key_data, key_model, key_split, key_fit = jax.random.split(jax.random.key(3), 4)
    obs = jax.random.normal(key_data, (4, 6, 2))
    next_obs = obs + jax.random.normal(jax.random.fold_in(key_data, 1), obs.shape)
    actions = jax.random.normal(jax.random.fold_in(key_data, 2), (4, 6, 1))
    validation = jnp.array([True, False, False, True])
    buffer = TrajectoryBuffer.create(5, 6, 2, 1).add(obs, actions, next_obs, jnp.zeros((4, 6), bool), validation)
    model = init_deterministic_ensemble(3, 2, 1, (32, 32), key_model)
    patience, max_epochs = 4, 30
    fitted, fit = jax.jit(lambda m, b, k: fit_one_step(m, b, k, learning_rate=3e-2, batch_size=4,
                                                        max_epochs=max_epochs, patience=patience))(model, buffer, key_fit)
    epochs = int(fit.epochs)
    history = np.asarray(fit.history)[:epochs]
    assert np.all(np.isnan(np.asarray(fit.history)[epochs:]))
    # the kept parameters are each member's best epoch (or the starting ones, if no epoch beat them) ...
    rows = np.asarray(validation).repeat(6)
    flat = lambda x: np.asarray(x).reshape(-1, x.shape[-1])  # noqa: E731
    kept = [float(one_step_loss(fitted, fitted.member(k), flat(obs)[rows], flat(actions)[rows], flat(next_obs)[rows]))
            for k in range(3)]
    np.testing.assert_allclose(kept, np.asarray(fit.validation_loss), rtol=1e-4)
    with_start = np.concatenate([np.asarray(fit.initial_validation_loss)[None], history])
    np.testing.assert_allclose(np.asarray(fit.validation_loss), with_start.min(0), rtol=1e-6)
    assert np.any(history.argmin(0) < epochs - 1), "the test needs a member whose best epoch is not its last"
    # ... and the fit stopped `patience` epochs after the last epoch in which some member improved.
    best_so_far = np.minimum.accumulate(with_start, axis=0)
    improved_any = np.any(best_so_far[1:] < best_so_far[:-1], axis=1)
    last_improvement = int(np.flatnonzero(improved_any)[-1]) + 1 if improved_any.any() else 0
    assert epochs == min(max_epochs, last_improvement + patience)


def test_multi_step_training_of_one_member_ignores_the_others():
    """Each member is clipped by its own gradient norm and skips only its own non-finite steps: member 0 ends
    bit for bit the same whatever member 1 holds (a clip by the stacked members' global norm moved member 0 by
    0.09, about its whole movement, when member 1's weights were tripled)."""
    key_data, key_model, key_fit = jax.random.split(jax.random.key(5), 3)
    obs = jax.random.normal(key_data, (4, 8, 2))
    actions = jax.random.normal(jax.random.fold_in(key_data, 1), (4, 8, 1))
    next_obs = obs + 0.3 * jax.random.normal(jax.random.fold_in(key_data, 2), obs.shape)
    buffer = TrajectoryBuffer.create(4, 8, 2, 1).add(obs, actions, next_obs, jnp.zeros((4, 8), bool),
                                                     jnp.zeros(4, bool))
    model = normalise(init_deterministic_ensemble(2, 2, 1, (16, 16), key_model), buffer, jnp.ones(32))
    optimizer = multi_step_optimizer(1e-2, 1e-5, max_grad_norm=0.5)  # small enough to clip every step
    train = jax.jit(lambda m: train_multi_step(m, init_multi_step_state(optimizer, m), optimizer, buffer, key_fit,
                                               horizon=3, n_steps=40, batch_size=8)[0])

    def with_member_1(change):
        return eqx.tree_at(lambda m: m.members, model, jax.tree.map(lambda x: x.at[1].set(change(x[1])),
                                                                     model.members))

    base = train(model)
    member_0 = lambda m: [np.asarray(leaf[0]) for leaf in jax.tree.leaves(m.members)]  # noqa: E731
    moved = max(np.abs(a - b).max() for a, b in zip(member_0(base), member_0(model)))
    assert moved > 1e-2
    for change in (lambda x: 3.0 * x, lambda x: jnp.full_like(x, jnp.nan)):
        trained = train(with_member_1(change))
        for a, b in zip(member_0(trained), member_0(base)):
            np.testing.assert_array_equal(a, b)
    nan_member = train(with_member_1(lambda x: jnp.full_like(x, jnp.nan)))
    assert all(bool(jnp.isnan(leaf[1]).all()) for leaf in jax.tree.leaves(nan_member.members))  # its steps skipped


def test_trajectory_buffer_names_the_fix_for_each_bad_add():
    buffer = TrajectoryBuffer.create(2, 6, 1, 1)
    segments = lambda n, length: (jnp.zeros((n, length, 1)),) * 3 + (jnp.zeros((n, length), bool),  # noqa: E731
                                                                      jnp.zeros(n, bool))
    with pytest.raises(ValueError, match="length 5 for a buffer of segments of length 6; store segments of 6"):
        buffer.add(*segments(1, 5))
    with pytest.raises(ValueError, match="3 segments for a buffer of 2; raise the buffer size"):
        buffer.add(*segments(3, 6))


# --------------------------------------------------------------------------------------------------------------
# Algorithm pieces


def test_policy_validation_stops_below_seventy_percent_of_members_improving():
    reference = jnp.array([0.0, 0.0, 0.0, 0.0, 10.0])
    share, stop = validation_verdict(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), reference, 0.7)
    assert float(share) == pytest.approx(0.8) and not bool(stop)
    share, stop = validation_verdict(jnp.array([1.0, 2.0, 3.0, -1.0, 5.0]), reference, 0.7)
    assert float(share) == pytest.approx(0.6) and bool(stop)
    share, stop = validation_verdict(jnp.array([1.0, 2.0, 3.0, 0.0, 5.0]), reference, 0.7)  # a tie is no gain
    assert float(share) == pytest.approx(0.6) and bool(stop)


def test_imagined_env_uses_the_known_reward_and_the_real_start_distribution():
    env = Pendulum()
    agent = METRPO(METRPOConfig(ensemble_size=2, model_hidden=(8,), hidden=(8,)), env)
    model = init_deterministic_ensemble(2, 3, 1, (8,), jax.random.key(1))
    imagined = agent.imagined_env(model)
    key = jax.random.key(7)
    np.testing.assert_allclose(imagined.reset(key), env.observation(env.reset(key)), rtol=1e-6)
    state = jnp.array([2.5, -0.7])
    obs = env.observation(state)
    action = jnp.array([3.0])  # outside the box: the reward charges the clipped torque, as the real env does
    next_obs, reward = imagined.step(obs, action, key)
    assert float(reward) == pytest.approx(float(env.step(state, action, key)[1]), rel=1e-5)
    # member None: the member is drawn from the step's key; a fixed member reproduces that draw's prediction
    index = jax.random.randint(key, (), 0, 2)
    fixed = ImaginedEnv(model, index, env, agent.reward_fn, agent.termination_fn, 200)
    np.testing.assert_allclose(next_obs, fixed.step(obs, action, key)[0], rtol=1e-6)
    np.testing.assert_allclose(next_obs, predict(model, index, obs, action), rtol=1e-6)


@pytest.mark.parametrize("terminal", [False, True])
def test_member_returns_are_each_members_own_rollout_return(terminal):
    """Each member's return under the deterministic policy against a plain loop; with a (test-made) terminal set,
    an episode stops at its first terminal state, the reward of the step into it counted."""
    env = Pendulum()
    agent = METRPO(METRPOConfig(ensemble_size=2, model_hidden=(8,), hidden=(8,), imagined_horizon=5), env)
    model = init_deterministic_ensemble(2, 3, 1, (8,), jax.random.key(1))
    params = agent.policy.init(jax.random.key(2))
    starts = jnp.stack([env.observation(env.reset(jax.random.key(i))) for i in range(6)])

    def episodes(ends):
        """Per member and start: the loop's return and the step (1-based) its episode ended at, or None."""
        out = []
        for k in range(2):
            for start in starts:
                obs, total, ended = start, 0.0, None
                for t in range(5):
                    action = jnp.clip(agent.policy.mode(params, obs), -2.0, 2.0)
                    next_obs = predict(model, k, obs, action)
                    total += float(agent.reward_fn(obs, action, next_obs))
                    obs = next_obs
                    if ends(obs):
                        ended = t + 1
                        break
                out.append((k, total, ended))
        return out

    threshold = None
    if terminal:  # a velocity that the model's rollouts cross at some steps, not at others
        speeds = []
        episodes(lambda obs: speeds.append(float(obs[2])) and False)
        threshold = float(np.quantile(speeds, 0.7))
        agent.termination_fn = lambda obs: obs[2] > threshold
    reference = episodes(lambda obs: terminal and float(obs[2]) > threshold)
    if terminal:
        assert any(ended is not None and ended < 5 for _, _, ended in reference)
        assert any(ended is None for _, _, ended in reference)
    returns = np.asarray(agent.member_returns(params, model, starts))
    for k in range(2):
        totals = [total for member, total, _ in reference if member == k]
        assert returns[k] == pytest.approx(np.mean(totals), rel=1e-5)


def test_ou_noise_reverts_to_zero_mean():
    key = jax.random.key(0)
    noise = jnp.array([1.0, -2.0])
    expected = noise - 0.15 * noise + 0.3 * jax.random.normal(key, (2,))
    np.testing.assert_allclose(ou_step(noise, key, 0.15, 0.3), expected, rtol=1e-6)
    np.testing.assert_allclose(ou_step(noise, key, 0.15, 0.0), 0.85 * noise, rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: METRPO(METRPOConfig(n_envs=1), Pendulum()), "--n-envs must be >= 2"),
    (lambda: METRPO(METRPOConfig(validation_fraction=1.0), Pendulum()), "--validation-fraction"),
    (lambda: SLBO(SLBOConfig(n_steps=2, model_horizon=3), Pendulum()), "--model-horizon"),
    (lambda: SLBO(SLBOConfig(), MountainCarContinuous()), "slbo steps its learned model with the env's known "
     "reward, and MountainCarContinuous's reward is not a function of the observations.*Pendulum-v1"),
])
def test_bad_configurations_are_refused_with_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_discrete_actions_are_refused():
    from mbpg.envs import CartPole

    with pytest.raises(ValueError, match="continuous actions"):
        SLBO(SLBOConfig(), CartPole())


# --------------------------------------------------------------------------------------------------------------
# CLI smoke runs (2 seeds, then --resume), the pattern of tests/test_algos.py

SMALL = ["--hidden", "8", "--model-hidden", "8", "--imagined-envs", "2", "--imagined-horizon", "8",
         "--value-minibatches", "2", "--value-epochs", "1", "--cg-iterations", "2"]
TINY = {
    "metrpo": ["--env", "Pendulum-v1", "--steps", "40", "--n-envs", "2", "--n-steps", "10", "--buffer-size", "60",
               "--ensemble-size", "2", "--model-max-epochs", "2", "--policy-iterations", "2", "--validate-every", "1",
               "--validation-starts", "2", *SMALL],
    "slbo": ["--env", "Pendulum-v1", "--steps", "40", "--n-envs", "2", "--n-steps", "10", "--buffer-size", "60",
             "--model-steps", "2", "--alternations", "2", "--policy-iterations", "1", "--model-batch-size", "4",
             *SMALL],
}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_cli_trains_resumes_and_refuses_a_second_run(algo, tmp_path):
    out = tmp_path / algo
    args = ["train", algo, *TINY[algo], "--seeds", "2", "--eval-every", "20", "--eval-episodes", "1",
            "--checkpoint-every", "20", "--out", str(out), "--no-tensorboard"]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"step", "seed", "eval_return", "imagined_return", "kl"} <= set(rows[0])
    assert sorted({int(r["step"]) for r in rows}) == [20, 40] and {float(r["seed"]) for r in rows} == {0.0, 1.0}
    assert all(math.isfinite(float(r["eval_return"])) for r in rows if r["eval_return"])
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == algo and config["n_seeds"] == 2
    more = [a if a != "40" else "60" for a in args]
    assert main([*more, "--resume"]) == 0
    with open(out / "metrics.csv", newline="") as handle:
        assert max(int(r["step"]) for r in csv.DictReader(handle)) == 60
    assert main(args) == 2
