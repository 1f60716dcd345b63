"""Shared update rules: conjugate gradient, Fisher-vector products, the TRPO step and PPO's clipped loss."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mbpg.optim import conjugate_gradient, fisher_vector_product, ppo_clip_loss, trust_region_step
from mbpg.policies import CategoricalMLPPolicy

# ---------------------------------------------------------------------------------------------------- CG


def random_spd(rng, n, condition=50.0):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q @ np.diag(np.geomspace(1.0, condition, n)) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_gradient_solves_spd_systems_on_pytrees(x64, seed):
    rng = np.random.default_rng(seed)
    n = 9
    matrix = random_spd(rng, n)
    b = rng.normal(size=n)
    tree_b = {"w": jnp.asarray(b[:6].reshape(2, 3)), "v": jnp.asarray(b[6:])}
    _, unravel = ravel_pytree(tree_b)

    def matvec(tree):
        flat, _ = ravel_pytree(tree)
        return unravel(jnp.asarray(matrix) @ flat)

    solve = jax.jit(lambda b: conjugate_gradient(matvec, b, iterations=2 * n, tolerance=1e-20))
    x, _ = ravel_pytree(solve(tree_b))
    expected = np.linalg.solve(matrix, ravel_pytree(tree_b)[0])
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-10)
    # Fewer iterations than the dimension leave a visible error: the iteration limit is respected.
    few, _ = ravel_pytree(conjugate_gradient(matvec, tree_b, iterations=2))
    assert np.linalg.norm(few - expected) > 1e-3 * np.linalg.norm(expected)


def test_conjugate_gradient_stops_at_tolerance_and_handles_zero_rhs():
    b = jnp.array([3.0, -6.0])
    np.testing.assert_allclose(conjugate_gradient(lambda x: 3.0 * x, b, iterations=10), [1.0, -2.0], rtol=1e-6)
    # |b|^2 = 45 is already below the tolerance: no iteration runs and x stays at its start, 0.
    np.testing.assert_array_equal(conjugate_gradient(lambda x: 3.0 * x, b, iterations=10, tolerance=50.0), 0.0)
    np.testing.assert_array_equal(conjugate_gradient(lambda v: 2.0 * v, jnp.zeros(4), iterations=5), 0.0)
    with pytest.raises(ValueError, match="iterations"):
        conjugate_gradient(lambda x: x, b, iterations=-1)


# ---------------------------------------------------------------------------------------------------- Fisher


def tiny_policy(key=0):
    policy = CategoricalMLPPolicy(2, 3, hidden=(4,))
    params = policy.init(jax.random.key(key))
    # Larger output weights than the 0.01 init so that the policy is far from uniform.
    params = eqx.tree_at(lambda p: p.layers[-1].weight, params, params.layers[-1].weight * 100.0)
    return policy, params


def mean_kl_fn(policy, old_params, observations):
    old = jax.lax.stop_gradient(old_params)
    return lambda params: jnp.mean(jax.vmap(lambda o: policy.kl(old, params, o))(observations))


@pytest.mark.parametrize("at_old_params", [True, False])
def test_fisher_vector_product_equals_explicit_hessian_of_the_kl(x64, at_old_params):
    policy, old_params = tiny_policy()
    observations = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
    kl_fn = mean_kl_fn(policy, old_params, observations)
    flat, unravel = ravel_pytree(old_params)
    point = flat if at_old_params else flat + 0.3 * jnp.asarray(np.random.default_rng(1).normal(size=flat.shape))
    hessian = np.asarray(jax.jit(jax.hessian(lambda f: kl_fn(unravel(f))))(point))
    vector = np.random.default_rng(2).normal(size=flat.shape)
    damping = 0.1
    product = fisher_vector_product(kl_fn, unravel(point), unravel(jnp.asarray(vector)), damping)
    np.testing.assert_allclose(ravel_pytree(product)[0], hessian @ vector + damping * vector, rtol=1e-9, atol=1e-12)

    if at_old_params:  # there the Hessian is the Fisher information: E_s E_{a~pi} [score score^T]
        def score(obs, action):
            return ravel_pytree(jax.grad(lambda p: policy.log_prob(p, obs, action))(old_params))[0]

        actions = jnp.arange(3)
        scores = np.asarray(jax.jit(jax.vmap(lambda o: jax.vmap(lambda a: score(o, a))(actions)))(observations))
        probs = np.asarray(jax.vmap(lambda o: policy.probs(old_params, o))(observations))
        fisher = np.einsum("sa,sai,saj->ij", probs, scores, scores) / len(observations)
        np.testing.assert_allclose(hessian, fisher, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------------- TRPO step


def surrogate_problem(seed, n_states=6, n_actions=4, zero_advantage=False):
    """A categorical policy pushed toward a fixed advantage table: the exact surrogate
    E_{a ~ pi_old}[pi/pi_old A] = sum_a pi(a|s) A(s, a), averaged over states."""
    policy = CategoricalMLPPolicy(n_states, n_actions, hidden=(8,))
    params = policy.init(jax.random.key(seed))
    observations = jnp.eye(n_states)
    rng = np.random.default_rng(seed)
    advantages = jnp.asarray(rng.normal(size=(n_states, n_actions)), jnp.float32) * (0.0 if zero_advantage else 1.0)

    def loss_fn(p):
        probs = jax.vmap(lambda o: policy.probs(p, o))(observations)
        return -jnp.mean(jnp.sum(probs * advantages, -1))

    def kl_between(old, new):
        return jnp.mean(jax.vmap(lambda o: policy.kl(old, new, o))(observations))

    return params, loss_fn, kl_between


@pytest.mark.parametrize("max_kl", [0.001, 0.01, 0.1, 1.0])
def test_trust_region_step_improves_within_the_kl_ball(max_kl):
    params, loss_fn, kl_between = surrogate_problem(0)

    @eqx.filter_jit
    def step(params):
        old = jax.lax.stop_gradient(params)
        return trust_region_step(loss_fn, lambda p: kl_between(old, p), params, max_kl=max_kl)

    losses = [float(loss_fn(params))]
    for _ in range(5):
        new_params, info = step(params)
        kl = float(kl_between(params, new_params))
        assert bool(info["accepted"])
        assert kl <= max_kl * (1 + 1e-5)
        np.testing.assert_allclose(float(info["kl"]), kl, rtol=1e-3, atol=1e-7)
        losses.append(float(loss_fn(new_params)))
        np.testing.assert_allclose(float(info["improvement"]), losses[-2] - losses[-1], rtol=1e-3, atol=1e-6)
        assert losses[-1] < losses[-2]
        params = new_params
    # Small steps use most of the ball: the quadratic KL model is accurate there and the full step is accepted.
    if max_kl <= 0.01:
        assert float(info["step_fraction"]) == 1.0 and kl > 0.5 * max_kl


def test_trust_region_step_backtracks_exactly_as_far_as_the_kl_requires(x64):
    """KL = |d|^2 / 2 + 10 |d|^4 (d = theta - theta0): the quadratic model misses the quartic term, so the full
    step lands outside the ball and the line search must shrink it to the first fraction 0.8^k that fits."""
    theta0 = jnp.array([0.3, -0.2, 0.1])
    a = jnp.array([1.0, -2.0, 0.5])
    max_kl = 0.05

    def kl_fn(theta):
        d2 = jnp.sum((theta - theta0) ** 2)
        return 0.5 * d2 + 10.0 * d2**2

    new_theta, info = eqx.filter_jit(trust_region_step)(lambda th: -a @ th, kl_fn, theta0, max_kl=max_kl, damping=0.0)
    # Hessian of the KL at theta0 is I, so the natural direction is a and the full step sqrt(2 max_kl)/|a| a.
    full = np.sqrt(2 * max_kl) / np.linalg.norm(a) * np.asarray(a)
    fractions = [0.8**k for k in range(10)]
    fits = [f for f in fractions if 0.5 * (f * f * full @ full) + 10 * (f * f * full @ full) ** 2 <= max_kl]
    assert fits and fits[0] < 1.0
    assert bool(info["accepted"]) and int(info["backtracks"]) == fractions.index(fits[0]) + 1
    np.testing.assert_allclose(info["step_fraction"], fits[0], rtol=1e-12)
    np.testing.assert_allclose(new_theta, np.asarray(theta0) + fits[0] * full, rtol=1e-9)
    assert float(kl_fn(new_theta)) <= max_kl
    np.testing.assert_allclose(info["expected_improvement"], np.asarray(a) @ full, rtol=1e-9)


def test_trust_region_step_rejects_when_the_surrogate_cannot_improve():
    # Zero advantages: the surrogate is identically 0, so no step can improve it. (Equal non-zero advantages
    # would be the same in exact arithmetic, but their gradient is rounding noise and a noise step can "improve"
    # the rounded loss by 1e-8: info["grad_norm"] is there to spot that case.)
    params, loss_fn, kl_between = surrogate_problem(1, zero_advantage=True)
    old = jax.lax.stop_gradient(params)
    new_params, info = eqx.filter_jit(trust_region_step)(loss_fn, lambda p: kl_between(old, p), params)
    assert not bool(info["accepted"])
    assert float(info["step_fraction"]) == 0.0 and float(info["improvement"]) == 0.0
    assert float(info["grad_norm"]) == 0.0
    assert eqx.tree_equal(new_params, params)

    # A misleading gradient: the loss is |t| - t with t = a . (theta - theta0), whose derivative at theta0 points
    # along a, yet every step along it (t != 0) makes the loss >= 0 = loss(theta0) worse or no better.
    theta0 = jnp.array([0.5, -1.0, 2.0])
    a = jnp.array([1.0, 2.0, -1.0])

    def kinked(theta):
        t = a @ (theta - theta0)
        return jnp.abs(t) - t

    new_theta, info = eqx.filter_jit(trust_region_step)(kinked, lambda th: 0.5 * jnp.sum((th - theta0) ** 2), theta0)
    assert not bool(info["accepted"]) and int(info["backtracks"]) == 10
    np.testing.assert_array_equal(new_theta, theta0)


def test_trust_region_step_handles_modules_with_non_array_leaves():
    """eqx.nn.MLP stores its activation functions as leaves: they must pass through untouched."""
    net = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0))
    observations = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)), jnp.float32)
    advantages = jnp.asarray(np.random.default_rng(1).normal(size=(10, 2)), jnp.float32)
    old_log_probs = jax.lax.stop_gradient(jax.nn.log_softmax(jax.vmap(net)(observations)))

    def loss_fn(net):
        log_probs = jax.nn.log_softmax(jax.vmap(net)(observations))
        return -jnp.mean(jnp.sum(jnp.exp(log_probs) * advantages, -1))

    def kl_fn(net):
        log_probs = jax.nn.log_softmax(jax.vmap(net)(observations))
        return jnp.mean(jnp.sum(jnp.exp(old_log_probs) * (old_log_probs - log_probs), -1))

    new_net, info = eqx.filter_jit(trust_region_step)(loss_fn, kl_fn, net, max_kl=0.02)
    assert bool(info["accepted"]) and float(kl_fn(new_net)) <= 0.02
    assert float(loss_fn(new_net)) < float(loss_fn(net))
    assert new_net.activation is net.activation
    with pytest.raises(ValueError, match="max_kl"):
        trust_region_step(loss_fn, kl_fn, net, max_kl=-1.0)


# ---------------------------------------------------------------------------------------------------- PPO


def test_ppo_clip_loss_matches_hand_computation_and_stops_clipped_gradients():
    ratios = np.array([0.5, 0.9, 1.1, 1.5, 1.5, 0.5])
    advantages = np.array([1.0, -1.0, 2.0, 3.0, -2.0, -1.0])
    log_old = np.array([-1.0, -0.5, -2.0, -0.3, -1.2, -0.7])
    log_new = jnp.asarray(log_old + np.log(ratios), jnp.float32)
    # Per sample min(r A, clip(r, 0.8, 1.2) A): 0.5, -0.9, 2.2, 3.6 (clipped), -3.0, -0.8 (clipped).
    objective = np.array([0.5, -0.9, 2.2, 3.6, -3.0, -0.8])
    loss, info = ppo_clip_loss(log_new, jnp.asarray(log_old), jnp.asarray(advantages), clip=0.2)
    np.testing.assert_allclose(loss, -objective.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["clip_fraction"], 4 / 6, rtol=1e-6)  # |r - 1| > 0.2: samples 0, 3, 4, 5
    np.testing.assert_allclose(info["approx_kl"], np.mean(ratios - 1 - np.log(ratios)), rtol=1e-5)

    grad = jax.grad(lambda lp: ppo_clip_loss(lp, log_old, advantages, 0.2)[0])(log_new)
    clipped = np.array([False, False, False, True, False, True])
    np.testing.assert_array_equal(np.asarray(grad)[clipped], 0.0)
    # d/d log pi_new of -r A / n is -r A / n where the unclipped term is active.
    np.testing.assert_allclose(np.asarray(grad)[~clipped], (-ratios * advantages / 6)[~clipped], rtol=1e-5)
    # No gradient leaks into the data.
    old_grad = jax.grad(lambda lo: ppo_clip_loss(log_new, lo, advantages)[0])(jnp.asarray(log_old, jnp.float32))
    np.testing.assert_array_equal(old_grad, 0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        ppo_clip_loss(log_new, log_old[:3], advantages)


def test_trust_region_step_rejects_a_zero_step_whatever_the_rounding():
    """With a tiny gradient (|g|^2 <= 1e-10) CG returns 0 and every trial is the current point; the loss from
    value_and_grad and the line search's re-evaluation differ in rounding, and the zero step was reported as
    accepted with a positive 'improvement'."""
    from mbpg.policies.mlp import GaussianMLPPolicy

    rng = np.random.default_rng(0)
    policy = GaussianMLPPolicy(4, 2, hidden=())
    old = policy.init(jax.random.key(1))
    obs = jnp.asarray(rng.normal(size=(200, 4)) * np.array([1, 5, 0.2, 3]), jnp.float32)
    actions = jax.vmap(policy.sample, in_axes=(None, 0, 0))(old, obs, jax.random.split(jax.random.key(2), 200))
    advantages = jnp.asarray(rng.normal(size=200), jnp.float32)
    log_prob = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))
    old_log_probs = log_prob(old, obs, actions)

    def loss(p):
        return -1e-5 * jnp.mean(jnp.exp(log_prob(p, obs, actions) - old_log_probs) * advantages)

    def kl(p):
        return jnp.mean(jax.vmap(policy.kl, in_axes=(None, None, 0))(old, p, obs))

    new, info = eqx.filter_jit(trust_region_step)(loss, kl, old)
    assert float(info["grad_norm"]) ** 2 <= 1e-10  # the case: CG's direction is exactly zero
    assert not bool(info["accepted"]) and float(info["improvement"]) == 0.0
    assert eqx.tree_equal(new, old)
