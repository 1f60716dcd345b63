"""PILCO's math against Monte-Carlo, exact values and finite differences; the loop's invariants.

Every moment-matching formula is checked the same way: draw many Gaussian inputs, push each through the exact
function (for the GP: its posterior mean plus its own predictive noise), and require that each entry of the
sample mean of the mean, of (y - M)(y - M)^T and of (x - m)(y - M)^T lies within 4.5 standard errors of the
closed form (`assert_unbiased`). Centring at the closed-form mean M makes the expected outer product equal the
closed-form covariance exactly, so a wrong formula shows up as a bias of many standard errors.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos import pilco as P
from mbpg.envs import make
from mbpg.models.gp import fit_gp, gp_posterior, log_marginal_likelihood, moment_match, predict
from tests.conftest import assert_unbiased

N_MC = 100_000


def _check_moments(key, x, y, mean_in, mean, cov, c, cov_in):
    """x [n, D] inputs drawn from N(mean_in, cov_in), y [n, E] outputs; (mean, cov, c) the closed forms."""
    x, y = np.asarray(x), np.asarray(y)
    dy = y - np.asarray(mean)
    dx = x - np.asarray(mean_in)
    assert_unbiased(y, mean)
    assert_unbiased(dy[:, :, None] * dy[:, None, :], cov)
    assert_unbiased(dx[:, :, None] * dy[:, None, :], np.asarray(cov_in) @ np.asarray(c))


def _random_cov(rng, d, scale):
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T + 0.05 * scale**2 * np.eye(d)


@pytest.fixture(scope="module")
def toy_gp():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = np.stack([np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2], np.cos(x[:, 1]) * x[:, 0]], 1)
    y = y + 0.05 * rng.normal(size=y.shape)
    return x, y, fit_gp(x, y, maxiter=100)


def test_gp_fit_raises_the_evidence_and_interpolates(toy_gp):
    x, y, gp = toy_gp
    with jax.enable_x64(True):
        mask = jnp.ones(len(x), bool)
        xs, ys = jnp.asarray(x), jnp.asarray(y)
        fitted = sum(float(log_marginal_likelihood(xs, ys[:, a], mask, gp.log_lengthscales[a],
                                                   gp.log_signal_std[a], gp.log_noise_std[a])) for a in range(2))
        init = sum(float(log_marginal_likelihood(xs, ys[:, a], mask, jnp.log(xs.std(0)), jnp.log(ys[:, a].std()),
                                                 jnp.log(ys[:, a].std() / 10))) for a in range(2))
        assert fitted > init + 20
        mean, var = predict(gp, xs)
        # residuals at the training points are of the order of the noise (std 0.05), far below the signal (~1)
        assert np.sqrt(np.mean((np.asarray(mean) - y) ** 2)) < 0.06
        assert np.all(np.asarray(var) >= 0)


def test_padding_changes_nothing(toy_gp):
    x, y, gp = toy_gp
    with jax.enable_x64(True):
        pad = 14
        padded = gp_posterior(jnp.concatenate([jnp.asarray(x), jnp.zeros((pad, 3))]),
                              jnp.concatenate([jnp.asarray(y), jnp.ones((pad, 2))]),  # junk targets, masked out
                              jnp.arange(len(x) + pad) < len(x), gp.log_lengthscales, gp.log_signal_std,
                              gp.log_noise_std)
        m, s = jnp.array([0.1, 0.2, -0.3]), jnp.asarray(_random_cov(np.random.default_rng(1), 3, 0.4))
        # Padding changes the solves' sizes, so the rounding differs: 1.3e-9 relative in the predicted covariance
        # on a Zen 5 CPU (1e-9 held elsewhere); one junk row left unmasked moves the outputs by 8-79%.
        for a, b in zip(moment_match(gp, m, s), moment_match(padded, m, s)):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
        # the posterior variance is a difference of nearly equal numbers: agree to Cholesky rounding
        np.testing.assert_allclose(predict(gp, x[:7])[1], predict(padded, x[:7])[1], rtol=1e-5, atol=1e-12)


def test_gp_moment_matching_agrees_with_monte_carlo(toy_gp):
    _, _, gp = toy_gp
    with jax.enable_x64(True):
        m = jnp.array([0.2, -0.3, 0.1])
        s = jnp.asarray(_random_cov(np.random.default_rng(2), 3, 0.5))
        mean, cov, c = moment_match(gp, m, s)
        k_x, k_f = jax.random.split(jax.random.key(3))
        xs = jax.random.multivariate_normal(k_x, m, s, (N_MC,))
        mu, var = predict(gp, xs)
        f = mu + jnp.sqrt(var) * jax.random.normal(k_f, mu.shape)
        _check_moments(k_x, xs, f, m, mean, cov, c, s)
        # the expected posterior variance matters: without it the diagonal would be biased low
        assert float(jnp.mean(var)) > 1e-4


def test_moment_matching_at_a_point_input_is_the_gp_prediction(toy_gp):
    _, _, gp = toy_gp
    with jax.enable_x64(True):
        m = jnp.array([0.3, 0.1, -0.2])
        mean, cov, _ = moment_match(gp, m, 1e-12 * jnp.eye(3))
        mu, var = predict(gp, m)
        np.testing.assert_allclose(mean, mu, rtol=1e-6)
        np.testing.assert_allclose(np.diag(cov), var, rtol=1e-4, atol=1e-9)


def test_trig_moments_agree_with_monte_carlo():
    with jax.enable_x64(True):
        m = jnp.array([0.7, -2.0])
        s = jnp.asarray(_random_cov(np.random.default_rng(4), 2, 0.6))
        mean, cov, c = P.trig_moments(m, s)
        z = jax.random.multivariate_normal(jax.random.key(5), m, s, (N_MC,))
        y = jnp.concatenate([jnp.sin(z), jnp.cos(z)], 1)
        _check_moments(None, z, y, m, mean, cov, c, s)


def test_augment_trig_matches_monte_carlo_on_the_cartpole_state():
    with jax.enable_x64(True):
        m = jnp.array([0.1, -0.5, 2.5, 1.0])
        s = jnp.asarray(_random_cov(np.random.default_rng(6), 4, 0.4))
        aug_m, aug_s = P.augment_trig(m, s, (2,))
        x = jax.random.multivariate_normal(jax.random.key(7), m, s, (N_MC,))
        aug = np.asarray(P.augment_trig_point(x, (2,)))
        np.testing.assert_allclose(aug_m[:4], m)
        np.testing.assert_allclose(aug_s[:4, :4], s)
        assert_unbiased(aug, aug_m)
        d = aug - np.asarray(aug_m)
        assert_unbiased(d[:, :, None] * d[:, None, :], aug_s)


def test_sin_squash_agrees_with_monte_carlo():
    with jax.enable_x64(True):
        m, s = jnp.array([0.4]), jnp.array([[0.8]])
        mean, cov, c = P.squash_sin(m, s, 10.0)
        z = m + jnp.sqrt(s[0, 0]) * jax.random.normal(jax.random.key(8), (N_MC, 1))
        _check_moments(None, z, 10.0 * jnp.sin(z), m, mean, cov, c, s)


def test_rbf_and_linear_policy_moments_agree_with_monte_carlo():
    """The RBF network's own moments are exact; so is the squash of a *linear* policy (its pre-squash output is
    jointly Gaussian with x). The squash of the RBF output is applied to the Gaussian approximation of it (PILCO's
    one approximation), so it is not tested against Monte-Carlo."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(9)
        m = jnp.array([0.1, -0.2, 0.3])
        s = jnp.asarray(_random_cov(rng, 3, 0.5))
        rbf = P.RBFPolicy(jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(6, 2))),
                          jnp.log(jnp.array([0.8, 1.2, 0.6])))
        linear = P.LinearPolicy(jnp.asarray(rng.normal(size=(2, 3))), jnp.array([0.3, -0.1]))
        x = jax.random.multivariate_normal(jax.random.key(10), m, s, (N_MC,))
        _check_moments(None, x, rbf(x), m, *rbf.moments(m, s), s)
        mean, cov, c = P.policy_moments(linear, m, s, 2.0)
        _check_moments(None, x, P.policy_action(linear, x, 2.0), m, mean, cov, c, s)
        # the pseudo-training-set parametrisation interpolates its targets (up to the 0.01 noise)
        np.testing.assert_allclose(rbf(rbf.centers), rbf.targets, atol=0.05)


def test_expected_saturating_cost_agrees_with_monte_carlo():
    with jax.enable_x64(True):
        env = make("CartPoleSwingUp-v0")
        task = P.cartpole_task(env)
        m = jnp.array([0.2, -0.4, 0.3, 0.5])
        s = jnp.asarray(_random_cov(np.random.default_rng(11), 4, 0.3))
        x = jax.random.multivariate_normal(jax.random.key(12), m, s, (N_MC,))
        costs = np.asarray(P.state_cost(task, x))
        # the task's cost is exactly one minus the environment's reward
        np.testing.assert_allclose(costs[:100], 1 - np.asarray(env.reward(x[:100])), atol=1e-12)
        # exact for a Gaussian over (x, sin, cos): test the formula on that Gaussian directly
        z_m, z_s = jnp.array([0.1, 0.3, 0.8]), jnp.asarray(_random_cov(np.random.default_rng(13), 3, 0.3))
        z = jax.random.multivariate_normal(jax.random.key(14), z_m, z_s, (N_MC,))
        target, weight = jnp.asarray(task.cost_target), jnp.asarray(task.cost_weight)
        c_mean, c_var = P.saturating_cost_moments(z_m, z_s, target, weight)
        c = np.asarray(P.saturating_cost(z, target, weight))
        assert_unbiased(c[:, None], np.array([c_mean]))
        assert_unbiased(((c - float(c_mean)) ** 2)[:, None], np.array([c_var]))


def test_planned_cost_gradient_matches_finite_differences():
    """Autodiff through a 3-step propagation vs central differences, on a small cart-pole GP.

    The start belief is near upright so the saturating cost has O(1) gradients (hanging down it is flat to 1e-5
    and differences would measure rounding)."""
    import dataclasses

    with jax.enable_x64(True):
        env = make("CartPoleSwingUp-v0")
        task = dataclasses.replace(P.cartpole_task(env), start_mean=(0.0, 0.0, 0.3, 0.0))
        states, actions = P.rollout(env, task, None, jax.random.key(0), 20, random_actions=True)
        gp = fit_gp(*P.transitions(task, states, actions), maxiter=30)
        policy = P.init_policy(task, P.PILCOConfig(n_basis=3), jax.random.key(1))
        params, static = eqx.partition(policy, eqx.is_array)
        value, grad = P._planned_cost_and_grad(params, static, task, gp, 3)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
        cost = jax.jit(lambda v: P._planned_cost(unravel(v), static, task, gp, 3))
        # eps = 1e-4: the cost carries ~1e-13 of rounding noise (cancellations between the large, alternating GP
        # weights of a nearly noise-free model), so smaller steps measure noise, not slope (checked: 1e-5 and 1e-6
        # agree worse, 1e-3 is truncation-limited)
        eps, idx = 1e-4, np.arange(0, flat.shape[0], 3)
        fd = np.array([(cost(flat.at[i].add(eps)) - cost(flat.at[i].add(-eps))) / (2 * eps) for i in idx])
        np.testing.assert_allclose(g[idx], fd, rtol=1e-4, atol=1e-5 * np.abs(g).max())
        assert np.abs(g).max() > 1e-3 and 0 < float(value) < 3


def test_bad_inputs_raise_clear_errors(toy_gp):
    x, y, gp = toy_gp
    with pytest.raises(ValueError, match="same N"):
        fit_gp(x, y[:-1])
    with pytest.raises(ValueError, match="pad_to"):
        fit_gp(x, y, pad_to=10)
    with pytest.raises(ValueError, match="NaN"):
        fit_gp(np.where(x > 2, np.nan, x), y)
    with jax.enable_x64(True), pytest.raises(ValueError, match="moment_match expects"):
        moment_match(gp, jnp.zeros(2), jnp.eye(2))
    with pytest.raises(ValueError, match="'rbf' or 'linear'"):
        P.init_policy(P.cartpole_task(make("CartPoleSwingUp-v0")), P.PILCOConfig(policy="mlp"), jax.random.key(0))


def test_loop_is_deterministic_and_records_predictions():
    """Two tiny runs with the same key give identical numbers; the record has the documented shapes."""
    config = P.PILCOConfig(n_iterations=1, horizon=3, n_basis=2, policy_maxiter=3, gp_maxiter=5, pad_multiple=8)
    runs = [P.train_pilco(config, jax.random.key(7)) for _ in range(2)]
    (_, _, first), (_, _, second) = runs
    assert [ep.episode for ep in first] == [1, 2]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.predicted_mean, b.predicted_mean)
    assert first[1].real_cost.shape == first[1].predicted_mean.shape == (3,)
    assert np.all(np.isnan(first[0].predicted_mean)) and np.all(np.isfinite(first[1].predicted_std))
    with pytest.raises(ValueError, match="CartPoleSwingUp-v0 only"):
        P.train_pilco(P.PILCOConfig(env_id="Pendulum-v1"), jax.random.key(0))


TINY_CLI = ["--horizon", "3", "--n-basis", "2", "--policy-maxiter", "3", "--gp-maxiter", "5", "--pad-multiple", "8",
            "--no-tensorboard"]


def _episode_rows(run_dir):
    import csv

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_cli_train_pilco_resumes_to_the_uninterrupted_run(tmp_path, capsys):
    """`mbpg train pilco` writes the run directory; 1 episode + --resume to 2 equals 2 episodes straight, row for
    row and in the checkpointed state; bad input fails with a message and exit code 2."""
    from mbpg.cli import main
    from mbpg.train.checkpoint import read_metadata

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "pilco", "--env", "CartPoleSwingUp-v0", "--n-iterations", "2", "--out", str(straight),
                 *TINY_CLI]) == 0
    assert main(["train", "pilco", "--n-iterations", "1", "--out", str(split), *TINY_CLI]) == 0
    assert read_metadata(split / "checkpoint.eqx")["episodes"] == 2
    assert main(["train", "pilco", "--n-iterations", "1", "--out", str(split), *TINY_CLI]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "pilco", "--n-iterations", "2", "--out", str(split), "--resume", *TINY_CLI]) == 0
    rows = _episode_rows(straight)
    assert [r["episode"] for r in rows] == ["1.0", "2.0", "3.0"] and [r["step"] for r in rows] == ["3", "6", "9"]
    assert rows == _episode_rows(split)
    payload = [(d / "checkpoint.eqx").read_bytes().split(b"\n", 1)[1] for d in (straight, split)]
    assert payload[0] == payload[1]
    assert (straight / "config.json").exists() and (straight / "pilco_cost.png").exists()

    assert main(["train", "pilco", "--n-iterations", "3", "--out", str(split), "--resume", "--n-basis", "3",
                 *TINY_CLI[:2], *TINY_CLI[4:]]) == 2
    assert "n_basis" in capsys.readouterr().err
    (split / "checkpoint.eqx").write_bytes((split / "checkpoint.eqx").read_bytes()[:-7])
    assert main(["train", "pilco", "--n-iterations", "3", "--out", str(split), "--resume", *TINY_CLI]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["train", "pilco", "--env", "Pendulum-v1", "--out", str(tmp_path / "bad"), *TINY_CLI]) == 2
    assert "CartPoleSwingUp-v0 only" in capsys.readouterr().err


def test_gp_and_pilco_refuse_to_run_in_float32(toy_gp):
    """Outside jax.enable_x64 the GP algebra ran in float32 without a word (a variance of 1.5 where float64 gives
    2e-7); each entry point now names the fix."""
    x, _, gp = toy_gp
    with pytest.raises(ValueError, match="enable_x64"):
        predict(gp, x[:3])
    with pytest.raises(ValueError, match="enable_x64"):
        moment_match(gp, jnp.zeros(gp.input_dim), jnp.eye(gp.input_dim))
    with pytest.raises(ValueError, match="enable_x64"):
        P.pilco_start(P.PILCOConfig(), jax.random.key(0))


def test_random_episodes_give_the_env_a_key_of_its_own():
    """rollout drew the random action and stepped the env with the same key (harmless for CartPoleSwingUp, which
    ignores its key, but an env with noise would see noise equal to the actions)."""
    env = make("CartPoleSwingUp-v0")
    task = P.cartpole_task(env)

    class Noisy:  # its state's first entry is the noise it draws from its step key, as the action is drawn
        def reset(self, key):
            return env.reset(key)

        def step(self, x, u, key):
            noise = jax.random.uniform(key, (task.action_dim,), x.dtype, -task.u_max, task.u_max)
            return x.at[0].set(noise[0]), 0.0

    with jax.enable_x64(True):
        xs, us = P.rollout(Noisy(), task, None, jax.random.key(3), 20, random_actions=True)
    noise, actions = np.asarray(xs[1:, 0]), np.asarray(us[:, 0])
    assert abs(np.corrcoef(noise, actions)[0, 1]) < 0.8  # was exactly 1: the same numbers
