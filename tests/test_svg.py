"""SVG: noise inference re-simulates real transitions, the re-simulated path's gradient and SVG(1)'s actor
gradient match finite differences, SVG(inf) re-simulates whole episodes, every variant trains through the CLI."""

import csv
import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.algos.svg import SVG1, SVG1Config, SVGInf, SVGInfConfig, known_reward
from mbpg.cli import main
from mbpg.envs import make
from mbpg.envs.classic_control import Pendulum
from mbpg.gradients.noise import infer_noise, resimulate
from mbpg.models.ensemble import EnsembleConfig, init_ensemble, predict_all
from mbpg.policies.mlp import GaussianMLPPolicy, TanhGaussianMLPPolicy


def pendulum_transitions(n, key, dtype=jnp.float32):
    """Real Pendulum transitions (obs, action, reward, next_obs) from random states and actions."""
    env = Pendulum()
    key_s, key_a = jax.random.split(key)
    states = jax.random.uniform(key_s, (n, 2), dtype, jnp.array([-math.pi, -6.0]), jnp.array([math.pi, 6.0]))
    actions = jax.random.uniform(key_a, (n, 1), dtype, -1.8, 1.8)
    next_states, rewards = jax.vmap(lambda s, a: env.step(s, a, key))(states, actions)
    return env.observation(states), actions, rewards.astype(dtype), env.observation(next_states)


def random_model(key, predict_reward=True, members=2):
    """A fresh Gaussian model with non-trivial normalisation, so every part of the re-simulation is exercised."""
    config = EnsembleConfig(n_members=members, n_elites=members, hidden=(16, 16), predict_reward=predict_reward)
    model = init_ensemble(config, 3, 1, key)
    size = model.target_dim
    return dataclasses.replace(model, input_mean=jnp.full(4, 0.1, model.input_mean.dtype),
                               input_std=jnp.full(4, 2.0, model.input_std.dtype),
                               target_mean=jnp.full(size, -0.05, model.input_std.dtype),
                               target_std=jnp.full(size, 0.3, model.input_std.dtype))


POLICIES = {
    "tanh-gaussian": TanhGaussianMLPPolicy(3, 1, hidden=(16,), action_low=-2.0, action_high=2.0),
    "gaussian": GaussianMLPPolicy(3, 1, hidden=(16,), log_std_init=-0.5),
}


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@pytest.mark.parametrize("predict_reward", [True, False])
def test_resimulating_a_real_transition_with_inferred_noise_reproduces_it(policy_name, predict_reward):
    policy = POLICIES[policy_name]
    params = policy.init(jax.random.key(1))
    model = random_model(jax.random.key(2), predict_reward)
    obs, actions, rewards, next_obs = pendulum_transitions(32, jax.random.key(3))
    members = jnp.arange(32) % 2

    def one(s, a, r, s_next, m):
        eps, eta = infer_noise(policy, params, model, s, a, s_next, r, m)
        return resimulate(policy, params, model, s, eps, eta, m), eps

    r_axis = 0 if predict_reward else None
    (a_hat, log_prob, s_hat, r_hat), eps = jax.jit(jax.vmap(one, in_axes=(0, 0, r_axis, 0, 0)))(
        obs, actions, rewards if predict_reward else None, next_obs, members)
    np.testing.assert_allclose(a_hat, actions, atol=2e-5)
    np.testing.assert_allclose(s_hat, next_obs, atol=2e-5)
    if predict_reward:
        np.testing.assert_allclose(r_hat, rewards, rtol=1e-5, atol=1e-4)
    else:
        assert r_hat is None
    if log_prob is not None:  # the re-simulated log-density is that of the real action
        np.testing.assert_allclose(log_prob, jax.vmap(lambda s, a: policy.log_prob(params, s, a))(obs, actions),
                                   rtol=1e-4, atol=1e-4)
    # The real transitions are NOT what the model predicts: the inferred noise is far from zero.
    assert float(jnp.abs(eps).mean()) > 0.1


def test_a_model_that_predicts_the_reward_needs_it():
    policy = POLICIES["tanh-gaussian"]
    model = random_model(jax.random.key(2), predict_reward=True)
    obs, actions, _, next_obs = pendulum_transitions(1, jax.random.key(3))
    with pytest.raises(ValueError, match="needs the real reward"):
        infer_noise(policy, policy.init(jax.random.key(0)), model, obs[0], actions[0], next_obs[0])


def _directional_fd(function, params, direction, h=1e-5):
    plus = eqx.apply_updates(params, jax.tree.map(lambda v: h * v, direction))
    minus = eqx.apply_updates(params, jax.tree.map(lambda v: -h * v, direction))
    return (function(plus) - function(minus)) / (2 * h)


def _dot(grads, direction):
    return sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))


def _random_direction(params, key):
    arrays = eqx.filter(params, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(arrays)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_gradient_of_the_resimulated_path_matches_finite_differences():
    with jax.enable_x64(True):
        policy = POLICIES["tanh-gaussian"]
        params = policy.init(jax.random.key(1))
        model = random_model(jax.random.key(2))
        obs, actions, rewards, next_obs = pendulum_transitions(8, jax.random.key(3), jnp.float64)
        noise = jax.vmap(lambda s, a, r, s2: infer_noise(policy, params, model, s, a, s2, r, 1))(
            obs, actions, rewards, next_obs)
        weights = jax.random.normal(jax.random.key(4), (8, 5), jnp.float64)

        @eqx.filter_jit
        def path_value(params):  # any smooth scalar of the re-simulated path, noise held fixed
            a, _, s, r = jax.vmap(lambda o, e, w: resimulate(policy, params, model, o, e, w, 1))(obs, *noise)
            return jnp.sum(weights * jnp.concatenate([a, s, r[:, None]], axis=1))

        grads = eqx.filter_jit(eqx.filter_grad(path_value))(params)
        for seed in range(3):
            direction = _random_direction(params, jax.random.key(10 + seed))
            np.testing.assert_allclose(_dot(grads, direction), _directional_fd(path_value, params, direction),
                                       rtol=1e-6)
        assert float(jnp.abs(_dot(grads, direction))) > 1e-3


def test_svg1_actor_gradient_matches_finite_differences_of_the_value_with_fixed_noise():
    """The actor's ascent direction is d/dtheta of mean_i w_i [r(s_i, a_hat_i) + gamma V(s_hat'_i)] - alpha E[log pi]
    with the noise and weights fixed at theta: recomputed here from the parts, independently of the agent."""
    with jax.enable_x64(True):
        env = Pendulum()
        config = SVG1Config(hidden=(16,), model_hidden=(16,), model_members=2, max_importance_weight=1.5)
        agent = SVG1(config, env)
        state = eqx.filter_jit(agent.init)(jax.random.key(0))
        model = init_ensemble(EnsembleConfig(n_members=2, n_elites=2, hidden=(16,), predict_reward=False), 3, 1,
                              jax.random.key(5))
        state = dataclasses.replace(state, model=model)
        obs, actions, rewards, next_obs = pendulum_transitions(16, jax.random.key(3), jnp.float64)
        actor = state.actor
        behaviour = jax.vmap(lambda s, a: agent.policy.log_prob(actor, s, a))(obs, actions)
        shifts = jnp.linspace(-1.0, 1.0, 16)  # some weights above the truncation, some below 1
        batch = {"obs": obs, "action": actions, "reward": rewards, "next_obs": next_obs,
                 "terminated": (jnp.arange(16) == 3).astype(jnp.float64), "log_prob": behaviour + shifts}
        alpha, key = 0.2, jax.random.key(9)

        @eqx.filter_jit
        def agent_objective(actor):
            return agent.actor_objective(actor, state, batch, alpha, key)[0]

        grads = eqx.filter_jit(eqx.filter_grad(agent_objective))(actor)

        # Independent reconstruction: noise and weights at theta_0, then a function of theta alone.
        reward = known_reward(env)
        members = agent.members(jax.random.split(key)[0], 16)
        eps = jax.vmap(lambda s, a: agent.policy.infer_noise(actor, s, a))(obs, actions)
        means, variances = jax.vmap(lambda s, a, m: jax.tree.map(lambda x: x[m], predict_all(model, s, a)))(
            obs, actions, members)
        eta = (next_obs - means) / jnp.sqrt(variances)
        weights = jnp.minimum(jnp.exp(shifts * -1.0), 1.5)
        fresh_keys = jax.random.split(jax.random.split(key)[1], 16)

        @eqx.filter_jit
        def fixed_noise_objective(theta):
            def value(s, e, w, m, done):
                a = agent.policy.reparameterised(theta, s, e)
                mean, var = jax.tree.map(lambda x: x[m], predict_all(model, s, a))
                return reward(s, a) + config.gamma * (1 - done) * state.critic(mean + jnp.sqrt(var) * w)

            values = jax.vmap(value)(obs, eps, eta, members, batch["terminated"])
            log_probs = jax.vmap(lambda s, k: agent.policy.sample_with_log_prob(theta, s, k)[1])(obs, fresh_keys)
            return jnp.mean(weights * values) - alpha * jnp.mean(log_probs)

        np.testing.assert_allclose(agent_objective(actor), fixed_noise_objective(actor), rtol=1e-10)
        for seed in range(3):
            direction = _random_direction(actor, jax.random.key(20 + seed))
            np.testing.assert_allclose(_dot(grads, direction),
                                       _directional_fd(fixed_noise_objective, actor, direction), rtol=1e-5)


def test_svginf_resimulates_a_whole_real_segment_exactly():
    """At the current parameters the re-simulated episodes pass through the real states, so the objective with
    alpha = 0 is the real discounted return per episode (episodes restart after every real episode end)."""
    env = make("Pendulum-v1")
    agent = SVGInf(SVGInfConfig(hidden=(16,), model_hidden=(16,), chunk_steps=60, gamma=0.9), env)
    state = eqx.filter_jit(agent.init)(jax.random.key(0))
    actions = jax.random.uniform(jax.random.key(3), (3, 20, 1), minval=-2.0, maxval=2.0)
    starts = jnp.array([[-0.4, 0.3], [0.1, -1.0], [2.5, 0.0]])

    @jax.jit
    def episodes(starts, actions):  # three real episodes of 20 steps, flattened into one segment
        def step(s, a):
            next_s, r = env.step(s, a, None)
            return next_s, (env.observation(s), a, r, env.observation(next_s))

        return jax.vmap(lambda s, a: jax.lax.scan(step, s, a)[1])(starts, actions)

    obs, action, reward, next_obs = (x.reshape((60,) + x.shape[2:]) for x in episodes(starts, actions))
    segment = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
               "done": (jnp.arange(60) % 20) == 19}
    discounts = 0.9 ** (jnp.arange(60) % 20)
    for decay in (1.0, 0.5):  # the gradient decay changes the gradient, never the value
        objective, _ = eqx.filter_jit(agent.segment_return)(state.actor, state.model, segment, 0.0, 0,
                                                             gradient_decay=decay)
        np.testing.assert_allclose(objective, jnp.sum(discounts * segment["reward"]) / 3, rtol=1e-4)
    grads = eqx.filter_jit(eqx.filter_grad(lambda *a: agent.segment_return(*a)[0]))(
        state.actor, state.model, segment, 0.0, 0)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def _svginf_segment(agent, key, episodes=2, length=15):
    env = agent.env
    key_s, key_a = jax.random.split(key)
    starts = jax.random.uniform(key_s, (episodes, 2), minval=jnp.array([-3.0, -2.0]), maxval=jnp.array([3.0, 2.0]))
    actions = jax.random.uniform(key_a, (episodes, length, 1), minval=-1.9, maxval=1.9)

    def step(s, a):
        next_s, r = env.step(s, a, None)
        return next_s, (env.observation(s), a, r, env.observation(next_s))

    parts = jax.vmap(lambda s, a: jax.lax.scan(step, s, a)[1])(starts, actions)
    obs, action, reward, next_obs = (x.reshape((episodes * length,) + x.shape[2:]) for x in parts)
    return {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
            "done": (jnp.arange(episodes * length) % length) == length - 1}


def test_svginf_gradient_decay_scales_the_value_gradient_backpropagated_through_each_model_step():
    """lambda = 1 is the paper's recursion (the gradient of the re-simulated return, checked by finite differences);
    lambda -> 0 leaves each action only its own step's reward, from the real state: the per-step sum, rebuilt here
    from the parts. In between, the gradient is a polynomial in lambda whose lambda^k term is the credit for
    rewards k steps later (a nonzero lambda^1 term checked by a difference of decays)."""
    with jax.enable_x64(True):
        env = Pendulum()
        agent = SVGInf(SVGInfConfig(hidden=(16,), model_hidden=(16,), gamma=0.9), env)
        state = eqx.filter_jit(agent.init)(jax.random.key(0))
        model = init_ensemble(EnsembleConfig(n_members=1, n_elites=1, hidden=(16,), predict_reward=False), 3, 1,
                              jax.random.key(5))
        segment = _svginf_segment(agent, jax.random.key(3))
        actor = state.actor
        noise = jax.vmap(lambda s, a, r, s2: infer_noise(agent.policy, actor, model, s, a, s2, r, 0))(
            segment["obs"], segment["action"], segment["reward"], segment["next_obs"])

        def grad(decay):
            return eqx.filter_jit(eqx.filter_grad(lambda ac: agent.segment_return(
                ac, model, segment, 0.0, 0, gradient_decay=decay)[0]))(actor)

        @eqx.filter_jit
        def myopic(theta):  # every step from its real state, its own reward only
            actions = jax.vmap(lambda s, e: agent.policy.reparameterised(theta, s, e))(segment["obs"], noise[0])
            rewards = jax.vmap(agent.reward_fn)(segment["obs"], actions)
            return jnp.sum(0.9 ** (jnp.arange(30) % 15) * rewards) / 2

        @eqx.filter_jit
        def full(theta):  # re-simulated return with the noise held fixed, full recursion
            def episode(obs, eps, eta):
                def step(s, xs):
                    a, _, s_next, _ = resimulate(agent.policy, theta, model, s, *xs)
                    return s_next, agent.reward_fn(s, a)
                return jax.lax.scan(step, obs[0], (eps, eta))[1]
            rewards = jax.vmap(episode)(*(x.reshape((2, 15) + x.shape[1:]) for x in (segment["obs"], *noise)))
            return jnp.sum(0.9 ** jnp.arange(15) * rewards) / 2

        small, half, one = grad(1e-12), grad(0.5), grad(1.0)
        for seed in range(2):
            direction = _random_direction(actor, jax.random.key(30 + seed))
            np.testing.assert_allclose(_dot(small, direction), _directional_fd(myopic, actor, direction), rtol=1e-6)
            np.testing.assert_allclose(_dot(one, direction), _directional_fd(full, actor, direction), rtol=1e-6)
            assert abs(float(_dot(half, direction) - _dot(small, direction))) > 1e-6
            assert abs(float(_dot(half, direction) - _dot(one, direction))) > 1e-6


def test_svginf_entropy_and_temperature_use_fresh_samples_not_the_stale_actions():
    """The temperature must see the policy's entropy. The log-density of a replayed action is a cross-entropy that
    grows without bound once the policy has moved away from it (here: a narrow policy and actions it did not
    draw), which drove the temperature down before the fix."""
    env = Pendulum()
    agent = SVGInf(SVGInfConfig(hidden=(16,), model_hidden=(16,)), env)
    state = eqx.filter_jit(agent.init)(jax.random.key(0))
    # A narrow policy: log-std -8 everywhere (the last layer's log-std bias).
    last = state.actor.layers[-1]
    actor = eqx.tree_at(lambda a: a.layers[-1].bias, state.actor, last.bias.at[1].set(-8.0))
    segment = _svginf_segment(agent, jax.random.key(3))
    key = jax.random.key(11)
    _, log_probs = eqx.filter_jit(agent.segment_return)(actor, state.model, segment, 0.1, 0, key)
    # At the current parameters the path's states are the real ones, so these are fresh samples' log-densities.
    fresh = jax.vmap(lambda s, k: agent.policy.sample_with_log_prob(actor, s, k)[1])(
        segment["obs"], jax.random.split(key, 30))
    np.testing.assert_allclose(log_probs, fresh, rtol=1e-3, atol=1e-3)
    stale = jax.vmap(lambda s, a: agent.policy.log_prob(actor, s, a))(segment["obs"], segment["action"])
    assert float(stale.mean()) < -1e4 < float(log_probs.mean())


TINY = {
    "svg0": ["--steps", "100", "--chunk-steps", "50", "--learning-starts", "20", "--batch-size", "16", "--hidden",
             "16", "16", "--buffer-size", "1000"],
    "svg1": ["--steps", "100", "--chunk-steps", "50", "--learning-starts", "20", "--batch-size", "16", "--hidden",
             "16", "16", "--model-hidden", "16", "16", "--buffer-size", "1000"],
    "svginf": ["--steps", "100", "--chunk-steps", "50", "--model-updates", "2", "--policy-updates", "2",
               "--batch-size", "16", "--hidden", "16", "--model-hidden", "16", "--buffer-size", "1000"],
}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_every_svg_variant_trains_through_the_cli(algo, tmp_path):
    out = tmp_path / algo
    args = ["train", algo, "--env", "Pendulum-v1", *TINY[algo], "--seeds", "2", "--eval-every", "50",
            "--eval-episodes", "1", "--checkpoint-every", "50", "--out", str(out), "--no-tensorboard"]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    finals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    assert len(finals) == 4 and all(math.isfinite(v) for v in finals)
    assert {float(r["seed"]) for r in rows} == {0.0, 1.0}
    assert main([a if a != "100" else "200" for a in args] + ["--resume"]) == 0
    with open(out / "metrics.csv", newline="") as handle:
        assert max(int(r["step"]) for r in csv.DictReader(handle)) == 200
    assert main(args) == 2  # the same directory without --resume is refused


def test_the_registry_names_each_variant_with_its_gradient_type():
    from mbpg.algos import ALGORITHMS, get_algorithm

    assert {name: get_algorithm(name)[2] for name in ("svg0", "svg1", "svginf")} == {
        "svg0": "MFG", "svg1": "MVG", "svginf": "MVG"}
    assert {"svg0", "svg1", "svginf"} <= set(ALGORITHMS)


@pytest.mark.parametrize("args, message", [
    (["train", "svg1", "--env", "MountainCarContinuous-v0"], "pass --reward learned"),
    (["train", "svginf", "--env", "CartPole-v1"], "continuous actions"),
    (["train", "svg0", "--env", "Pendulum-v1", "--max-importance-weight", "0"], "--max-importance-weight must be"),
    (["train", "svg1", "--env", "Pendulum-v1", "--model-members", "0"], "--model-members must be"),
    (["train", "svginf", "--env", "Pendulum-v1", "--gradient-decay", "0"], "--gradient-decay must be"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_policies_refuse_a_batch_where_one_action_belongs():
    """A batch of actions once broadcast into a scalar log-density that was none of theirs (log_prob of 3 actions
    gave -2.515, their sum being -8.96); an action of the wrong size broadcast to [a, a]."""
    for policy in (TanhGaussianMLPPolicy(3, 2, hidden=(8,), action_low=-2.0, action_high=2.0),
                   GaussianMLPPolicy(3, 2, hidden=(8,))):
        params, obs = policy.init(jax.random.key(0)), jnp.zeros(3)
        for bad in (jnp.zeros((3, 2)), jnp.zeros(1), jnp.zeros(())):
            with pytest.raises(ValueError, match=r"ONE action of shape \(2,\)"):
                policy.log_prob(params, obs, bad)
            with pytest.raises(ValueError, match=r"ONE action of shape \(2,\)"):
                policy.infer_noise(params, obs, bad)
        assert policy.log_prob(params, obs, jnp.array([0.5, -0.5])).shape == ()
    one = TanhGaussianMLPPolicy(3, 1, hidden=(8,), action_low=-2.0, action_high=2.0)
    params = one.init(jax.random.key(0))
    # a scalar is one one-dimensional action
    obs = jnp.zeros(3)
    np.testing.assert_allclose(one.log_prob(params, obs, 0.5), one.log_prob(params, obs, jnp.array([0.5])))
