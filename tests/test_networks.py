"""Neural policies, critics and GAE against independent computations (NumPy/SciPy forward passes, closed forms,
numerical change of variables, naive loops)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

from mbpg.policies import CategoricalMLPPolicy, GaussianMLPPolicy, TanhGaussianMLPPolicy
from mbpg.values import TwinQNetwork, ValueNetwork, gae, soft_update

ACT = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


def numpy_forward(mlp, obs):
    """The MLP's output recomputed in float64 NumPy from its weights."""
    x = np.asarray(obs, np.float64)
    for i, layer in enumerate(mlp.layers):
        x = np.asarray(layer.weight, np.float64) @ x + np.asarray(layer.bias, np.float64)
        if i < len(mlp.layers) - 1:
            x = ACT[mlp.activation](x)
    return x


@eqx.filter_jit
def perturb(params, key, scale=0.5):
    """Random non-trivial parameters: the 0.01-scaled output layer makes a fresh policy nearly uniform, which
    would let a wrong log_prob pass by accident."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


def batched(fn):
    """vmap, then jit once: op-by-op eager execution of a vmapped network is several times slower here."""
    return jax.jit(jax.vmap(fn))


def batch_obs(seed, n, dim):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, dim)), jnp.float32)


# ---------------------------------------------------------------------------------------------------- categorical


def test_categorical_log_prob_entropy_mode_match_numpy():
    policy = CategoricalMLPPolicy(3, 4, hidden=(5, 6))
    params = perturb(policy.init(jax.random.key(0)), jax.random.key(1))
    observations = batch_obs(0, 7, 3)
    actions = jnp.arange(7) % 4
    log_probs = batched(lambda o, a: policy.log_prob(params, o, a))(observations, actions)
    entropies = batched(lambda o: policy.entropy(params, o))(observations)
    modes = batched(lambda o: policy.mode(params, o))(observations)
    all_logits = batched(lambda o: policy.logits(params, o))(observations)
    for i, obs in enumerate(np.asarray(observations)):
        logits = numpy_forward(params, obs)
        np.testing.assert_allclose(all_logits[i], logits, rtol=1e-5, atol=1e-5)
        probs = scipy.special.softmax(logits)
        assert probs.max() - probs.min() > 0.1, "test needs a non-uniform policy"
        np.testing.assert_allclose(log_probs[i], np.log(probs[int(actions[i])]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(entropies[i], scipy.stats.entropy(probs), rtol=1e-5)
        assert int(modes[i]) == int(np.argmax(probs))


def test_categorical_samples_follow_probs_and_kl_matches_scipy():
    policy = CategoricalMLPPolicy(2, 3, hidden=(8,))
    params = perturb(policy.init(jax.random.key(2)), jax.random.key(3))
    other = perturb(params, jax.random.key(4))
    obs = jnp.array([0.3, -1.2])
    n = 20_000
    samples = batched(lambda k: policy.sample(params, obs, k))(jax.random.split(jax.random.key(5), n))
    probs = scipy.special.softmax(numpy_forward(params, obs))
    counts = np.bincount(np.asarray(samples), minlength=3)
    standard_error = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(counts / n - probs) < 4.5 * standard_error)
    q = scipy.special.softmax(numpy_forward(other, obs))
    np.testing.assert_allclose(policy.kl(params, other, obs), scipy.stats.entropy(probs, q), rtol=1e-4)


def test_observation_batch_is_refused_with_a_fix():
    policy = CategoricalMLPPolicy(3, 2)
    params = policy.init(jax.random.key(0))
    with pytest.raises(ValueError, match="vmap"):
        policy.log_prob(params, jnp.zeros((5, 3)), 0)
    with pytest.raises(ValueError, match="activation"):
        CategoricalMLPPolicy(3, 2, activation="sigmoidal")


# ---------------------------------------------------------------------------------------------------- Gaussian


def gaussian_params(policy, seed):
    params = perturb(policy.init(jax.random.key(seed)), jax.random.key(seed + 1), scale=0.3)
    log_std = jnp.linspace(-0.7, 0.4, policy.action_dim)
    return eqx.tree_at(lambda p: p.log_std, params, log_std)


def test_gaussian_log_prob_and_entropy_match_scipy():
    policy = GaussianMLPPolicy(3, 2, hidden=(6, 5), log_std_init=-0.5)
    assert np.allclose(policy.init(jax.random.key(0)).log_std, -0.5)
    params = gaussian_params(policy, 0)
    observations = batch_obs(1, 6, 3)
    actions = jnp.asarray(np.random.default_rng(2).normal(size=(6, 2)), jnp.float32)
    log_probs = batched(lambda o, a: policy.log_prob(params, o, a))(observations, actions)
    modes = batched(lambda o: policy.mode(params, o))(observations)
    std = np.exp(np.asarray(params.log_std, np.float64))
    for i, obs in enumerate(np.asarray(observations)):
        mean = numpy_forward(params.mean, obs)
        np.testing.assert_allclose(modes[i], mean, rtol=1e-5, atol=1e-6)
        expected = scipy.stats.multivariate_normal(mean, np.diag(std**2)).logpdf(np.asarray(actions[i], np.float64))
        np.testing.assert_allclose(log_probs[i], expected, rtol=1e-5)
    np.testing.assert_allclose(policy.entropy(params, observations[0]), scipy.stats.norm(0, std).entropy().sum(),
                               rtol=1e-5)


def test_gaussian_sampling_reparameterisation_and_kl():
    policy = GaussianMLPPolicy(2, 2, hidden=(4,))
    params = gaussian_params(policy, 3)
    obs = jnp.array([0.5, -0.25])
    samples = batched(lambda k: policy.sample(params, obs, k))(jax.random.split(jax.random.key(0), 20_000))
    mean, std = numpy_forward(params.mean, obs), np.exp(np.asarray(params.log_std))
    np.testing.assert_allclose(samples.mean(0), mean, atol=4.5 * std.max() / np.sqrt(20_000))
    np.testing.assert_allclose(samples.std(0), std, rtol=0.03)

    noise = jnp.array([0.7, -1.3])
    action = policy.reparameterised(params, obs, noise)
    np.testing.assert_allclose(policy.infer_noise(params, obs, action), noise, rtol=1e-5)

    # KL against per-dimension numerical integration of p log(p/q).
    other = gaussian_params(policy, 7)
    mean_q, std_q = numpy_forward(other.mean, obs), np.exp(np.asarray(other.log_std, np.float64))
    kl = 0.0
    for d in range(2):
        p, q = scipy.stats.norm(mean[d], std[d]), scipy.stats.norm(mean_q[d], std_q[d])
        kl += scipy.integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30)[0]
    np.testing.assert_allclose(policy.kl(params, other, obs), kl, rtol=1e-4)
    assert abs(float(policy.kl(params, params, obs))) < 1e-6


def test_gaussian_reparameterised_gradient_reaches_every_parameter():
    policy = GaussianMLPPolicy(3, 2, hidden=(8, 8))
    params = policy.init(jax.random.key(0))
    observations = batch_obs(3, 16, 3)
    noise = jax.random.normal(jax.random.key(1), (16, 2))

    def objective(params):  # a pathwise objective: -|a - target|^2 through the sampled action
        actions = jax.vmap(lambda o, e: policy.reparameterised(params, o, e))(observations, noise)
        return -jnp.sum((actions - 1.0) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(objective))(params)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.any(np.abs(leaf) > 0)


# ---------------------------------------------------------------------------------------------------- tanh-Gaussian


LOW, HIGH = np.array([-2.0, 0.0]), np.array([1.0, 0.5])


def tanh_policy_and_params(seed=0, action_dim=2, low=LOW, high=HIGH, scale=0.3):
    policy = TanhGaussianMLPPolicy(3, action_dim, hidden=(16, 16), action_low=low, action_high=high)
    params = perturb(policy.init(jax.random.key(seed)), jax.random.key(seed + 1), scale=scale)
    return policy, params


def test_tanh_gaussian_log_prob_matches_numerical_change_of_variables():
    policy, params = tanh_policy_and_params()
    observations = batch_obs(4, 5, 3)
    rng = np.random.default_rng(5)
    centre, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    actions = centre + half * rng.uniform(-0.97, 0.97, size=(5, 8, 2))
    got = batched(lambda o, acts: jax.vmap(lambda a: policy.log_prob(params, o, a))(acts))(
        observations, jnp.asarray(actions, jnp.float32)
    )
    modes = batched(lambda o: policy.mode(params, o))(observations)
    for i, obs in enumerate(np.asarray(observations)):
        out = numpy_forward(params, obs)
        mean, std = out[:2], np.exp(np.clip(out[2:], -20, 2))
        for j, action in enumerate(actions[i]):
            # density of a: N(u; mean, std) / |da/du| with u = atanh((a - c) / h), the Jacobian da/du taken by
            # central differences rather than from the closed form.
            u = np.arctanh((action - centre) / half)
            step = 1e-6
            jacobian = (centre + half * np.tanh(u + step) - (centre + half * np.tanh(u - step))) / (2 * step)
            expected = np.sum(scipy.stats.norm(mean, std).logpdf(u) - np.log(jacobian))
            np.testing.assert_allclose(got[i, j], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(modes[i], centre + half * np.tanh(mean), rtol=1e-5, atol=1e-6)


def test_tanh_gaussian_density_integrates_to_one_and_matches_histogram():
    policy, params = tanh_policy_and_params(seed=2, action_dim=1, low=-3.0, high=1.0)
    # Pre-squash mean 0.7 (off-centre, so asymmetry errors show) and std 0.6: above std ~ 1 the density
    # diverges at the edges and quadrature cannot integrate it.
    last = params.layers[-1]
    params = eqx.tree_at(lambda p: (p.layers[-1].weight, p.layers[-1].bias), params,
                         (jnp.zeros_like(last.weight), jnp.array([0.7, math.log(0.6)])))
    obs = jnp.array([0.2, -0.4, 0.9])
    density = jax.jit(batched(lambda a: jnp.exp(policy.log_prob(params, obs, a[None]))))
    total = scipy.integrate.quad(lambda a: float(density(jnp.array([a]))[0]), -3.0, 1.0, limit=200)[0]
    np.testing.assert_allclose(total, 1.0, atol=2e-3)

    n = 200_000
    actions, _ = batched(lambda k: policy.sample_with_log_prob(params, obs, k))(jax.random.split(jax.random.key(9), n))
    counts, edges = np.histogram(np.asarray(actions[:, 0]), bins=20, range=(-3.0, 1.0))
    bin_probs = np.array([scipy.integrate.quad(lambda a: float(density(jnp.array([a]))[0]), lo, hi)[0]
                          for lo, hi in zip(edges[:-1], edges[1:])])
    expected = bin_probs * n
    assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected * (1 - bin_probs)) + 1)


def test_tanh_gaussian_sample_log_prob_agrees_with_log_prob_and_stays_in_bounds():
    policy, params = tanh_policy_and_params(seed=4)
    observations = batch_obs(6, 512, 3)
    keys = jax.random.split(jax.random.key(3), 512)
    actions, log_probs = batched(lambda o, k: policy.sample_with_log_prob(params, o, k))(observations, keys)
    assert np.all(actions >= LOW) and np.all(actions <= HIGH)
    recomputed = batched(lambda o, a: policy.log_prob(params, o, a))(observations, actions)
    # In float32, inverting tanh is ill-conditioned within ~1e-3 of a bound (documented in log_prob); compare
    # there in float64 below.
    inner = np.all(np.abs((np.asarray(actions) - (HIGH + LOW) / 2) / ((HIGH - LOW) / 2)) < 1 - 1e-3, axis=1)
    assert inner.mean() > 0.9
    np.testing.assert_allclose(log_probs[inner], recomputed[inner], rtol=1e-4, atol=1e-3)
    same_keys = batched(lambda o, k: policy.sample(params, o, k))(observations, keys)
    np.testing.assert_array_equal(same_keys, actions)


def test_tanh_gaussian_sample_log_prob_agrees_with_log_prob_into_saturation_in_float64(x64):
    policy, params = tanh_policy_and_params(seed=4)
    assert params.layers[0].weight.dtype == jnp.float64
    observations = jnp.asarray(np.random.default_rng(6).normal(size=(512, 3)))
    keys = jax.random.split(jax.random.key(3), 512)
    actions, log_probs = batched(lambda o, k: policy.sample_with_log_prob(params, o, k))(observations, keys)
    recomputed = batched(lambda o, a: policy.log_prob(params, o, a))(observations, actions)
    # Float64 resolves tanh to within ~1e-12 of the bounds (|u| up to ~13); beyond that (this policy's log-std
    # reaches the clip at 2, so |u| ~ 17 occurs) no inversion can recover u, which is why sample_with_log_prob
    # does not invert.
    distance = 1 - np.abs((np.asarray(actions) - (HIGH + LOW) / 2) / ((HIGH - LOW) / 2))
    inner = np.all(distance > 1e-12, axis=1)
    assert inner.mean() > 0.97 and np.any(distance[inner] < 1e-4), "the batch must reach far into saturation"
    np.testing.assert_allclose(log_probs[inner], recomputed[inner], rtol=1e-7, atol=1e-5)


def test_tanh_gaussian_saturated_samples_have_finite_log_prob():
    """With a huge mean, tanh(u) rounds to exactly +-1 in float32: the naive log(1 - tanh^2) would be -inf."""
    policy, params = tanh_policy_and_params(seed=6)
    last = params.layers[-1]
    params = eqx.tree_at(lambda p: p.layers[-1].bias, params, last.bias.at[:2].set(jnp.array([40.0, -40.0])))
    observations = batch_obs(7, 64, 3)
    keys = jax.random.split(jax.random.key(0), 64)
    actions, log_probs = batched(lambda o, k: policy.sample_with_log_prob(params, o, k))(observations, keys)
    assert np.all(actions >= LOW) and np.all(actions <= HIGH)
    np.testing.assert_allclose(actions[:, 0], HIGH[0])
    np.testing.assert_allclose(actions[:, 1], LOW[1])
    assert np.all(np.isfinite(log_probs))
    assert np.all(np.isfinite(batched(lambda o, a: policy.log_prob(params, o, a))(observations, actions)))


def test_tanh_gaussian_log_std_is_clipped():
    policy = TanhGaussianMLPPolicy(2, 1, hidden=(4,), log_std_min=-3.0, log_std_max=1.0)
    params = policy.init(jax.random.key(0))
    params = eqx.tree_at(lambda p: p.layers[-1].bias, params, jnp.array([0.0, 50.0]))
    _, log_std = policy.mean_log_std(params, jnp.zeros(2))
    assert float(log_std[0]) == 1.0
    with pytest.raises(ValueError, match="action_low < action_high"):
        TanhGaussianMLPPolicy(2, 2, action_low=[0.0, 1.0], action_high=[1.0, 1.0])


def test_tanh_gaussian_pathwise_gradient_reaches_every_parameter():
    policy, params = tanh_policy_and_params(seed=8, scale=0.1)
    observations = batch_obs(8, 32, 3)
    keys = jax.random.split(jax.random.key(1), 32)

    def sac_actor_loss(params):  # alpha log pi - Q with a fixed quadratic "critic"
        actions, log_probs = jax.vmap(lambda o, k: policy.sample_with_log_prob(params, o, k))(observations, keys)
        return jnp.mean(0.2 * log_probs + jnp.sum((actions - 0.3) ** 2, -1))

    grads = eqx.filter_jit(eqx.filter_grad(sac_actor_loss))(params)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.any(np.abs(leaf) > 0)


def test_policies_are_hashable_static_arguments_under_jit():
    for policy in (CategoricalMLPPolicy(3, 2, hidden=[4]), GaussianMLPPolicy(3, 2, hidden=[4]),
                   TanhGaussianMLPPolicy(3, 2, hidden=[4])):
        assert hash(policy) == hash(type(policy)(3, 2, hidden=(4,)))
        params = policy.init(jax.random.key(0))
        sample = jax.jit(lambda pol, p, o, k: pol.sample(p, o, k), static_argnums=0)
        action = sample(policy, params, jnp.ones(3), jax.random.key(1))
        assert np.all(np.isfinite(policy.log_prob(params, jnp.ones(3), action)))


# ---------------------------------------------------------------------------------------------------- critics


def test_critics_match_numpy_and_soft_update_interpolates():
    value = ValueNetwork(3, (8, 4), jax.random.key(0))
    obs = np.array([0.1, -0.5, 2.0])
    np.testing.assert_allclose(value(jnp.asarray(obs)), numpy_forward(value.net, obs)[0], rtol=1e-5, atol=1e-6)
    assert value(jnp.asarray(obs)).shape == ()

    critic = TwinQNetwork(3, 2, (8,), jax.random.key(1))
    action = np.array([0.3, -0.7])
    q1, q2 = critic(jnp.asarray(obs), jnp.asarray(action))
    x = np.concatenate([obs, action])
    np.testing.assert_allclose([q1, q2], [numpy_forward(critic.q1, x)[0], numpy_forward(critic.q2, x)[0]],
                               rtol=1e-5, atol=1e-6)
    assert abs(float(q1 - q2)) > 1e-3, "the two critics must be initialised independently"
    batch = jax.vmap(critic)(batch_obs(0, 5, 3), jnp.zeros((5, 2)))
    assert batch[0].shape == (5,) and batch[1].shape == (5,)

    online = TwinQNetwork(3, 2, (8,), jax.random.key(2))
    assert soft_update(critic, online, 0.0) == critic
    for tau in (0.25, 1.0):
        mixed = jax.jit(soft_update)(critic, online, tau)
        for m, t, o in zip(jax.tree.leaves(mixed), jax.tree.leaves(critic), jax.tree.leaves(online)):
            np.testing.assert_allclose(m, (1 - tau) * np.asarray(t) + tau * np.asarray(o), rtol=1e-6, atol=1e-7)
    assert eqx.tree_equal(jax.tree.structure(mixed), jax.tree.structure(critic))
    with pytest.raises(ValueError, match="tau"):
        soft_update(critic, online, 1.5)


def test_soft_update_keeps_non_float_leaves():
    target = {"w": jnp.ones(3), "steps": jnp.array(4), "name": "critic"}
    online = {"w": jnp.zeros(3), "steps": jnp.array(9), "name": "critic"}
    mixed = soft_update(target, online, 0.5)
    np.testing.assert_allclose(mixed["w"], 0.5)
    assert int(mixed["steps"]) == 4 and mixed["name"] == "critic"


# ---------------------------------------------------------------------------------------------------- GAE


def naive_gae(rewards, values, next_values, terminated, done, gamma, lam):
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l}, summed until the first episode end at or after t."""
    horizon = rewards.shape[0]
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    advantages = np.zeros_like(rewards)
    for column in np.ndindex(rewards.shape[1:]):
        for t in range(horizon):
            total = 0.0
            for k in range(t, horizon):
                total += (gamma * lam) ** (k - t) * deltas[(k, *column)]
                if done[(k, *column)]:
                    break
            advantages[(t, *column)] = total
    return advantages


def random_batch(seed, horizon=12, batch=(3,), consistent=False):
    rng = np.random.default_rng(seed)
    shape = (horizon, *batch)
    rewards = rng.normal(size=shape)
    values = rng.normal(size=shape)
    next_values = rng.normal(size=shape)
    terminated = rng.random(shape) < 0.15
    truncated = (rng.random(shape) < 0.15) & ~terminated
    done = terminated | truncated
    if consistent:  # within an episode V(s'_t) is V(s_{t+1}); only after an episode end do they differ
        next_values[:-1] = np.where(done[:-1], next_values[:-1], values[1:])
    return rewards, values, next_values, terminated, done


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_naive_double_loop(x64, seed, lam):
    rewards, values, next_values, terminated, done = random_batch(seed, batch=(3, 2))
    assert terminated.any() and (done & ~terminated).any(), "the batch must contain both kinds of episode end"
    gamma = 0.9
    advantages, returns = gae(rewards, values, next_values, terminated, done, gamma, lam)
    expected = naive_gae(rewards, values, next_values, terminated.astype(float), done, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-10, atol=1e-12)


def test_gae_special_cases(x64):
    rewards, values, next_values, terminated, done = random_batch(11, horizon=15, batch=(4,), consistent=True)
    gamma = 0.8
    _, returns = gae(rewards, values, next_values, terminated, done, gamma, 1.0)
    # lam = 1: discounted Monte-Carlo return to the episode end, plus gamma^k V(s') if it ended by truncation
    # or by the end of the batch.
    for b in range(4):
        for t in range(15):
            total, discount = 0.0, 1.0
            for k in range(t, 15):
                total += discount * rewards[k, b]
                discount *= gamma
                if terminated[k, b]:
                    break
                if done[k, b] or k == 14:
                    total += discount * next_values[k, b]
                    break
            np.testing.assert_allclose(returns[t, b], total, rtol=1e-10, atol=1e-12)
    advantages, returns = gae(rewards, values, next_values, terminated, done, gamma, 0.0)
    td_target = rewards + gamma * np.where(terminated, 0.0, next_values)
    np.testing.assert_allclose(returns, td_target, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(advantages, td_target - values, rtol=1e-12, atol=1e-12)


def test_gae_is_jittable_and_checks_shapes():
    rewards, values, next_values, terminated, done = (jnp.asarray(x) for x in random_batch(3))
    jitted = jax.jit(gae, static_argnums=(5, 6))
    advantages, _ = jitted(rewards, values, next_values, terminated, done, 0.99, 0.95)
    np.testing.assert_allclose(advantages, gae(rewards, values, next_values, terminated, done, 0.99, 0.95)[0],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="values has shape"):
        gae(rewards, values[:, :, None], next_values, terminated, done, 0.99, 0.95)


def test_gae_ends_an_episode_at_a_terminal_step_whatever_the_inputs_say():
    """A NaN value of a terminal observation reached the advantages (0 * nan), and terminated without done let
    the recursion run on into the next episode."""
    rewards, values = jnp.ones(3), jnp.zeros(3)
    next_values = jnp.array([0.0, jnp.nan, 0.0])
    terminated = jnp.array([False, True, False])
    advantages, _ = gae(rewards, values, next_values, terminated, terminated, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(advantages, [1.9, 1.0, 1.0], rtol=1e-6)
    no_done = jnp.zeros(3, bool)
    advantages, _ = gae(rewards, values, jnp.zeros(3), terminated, no_done, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(advantages, [1.9, 1.0, 1.0], rtol=1e-6)


def test_effective_horizon_and_the_score_function_form_refuse_what_they_cannot_mean():
    from mbpg.gradients.forms import score_function_gradient
    from mbpg.gradients.trajectories import Trajectory
    from mbpg.policies import SoftmaxPolicy
    from mbpg.values.returns import effective_horizon

    for gamma in (1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="0 <= gamma < 1"):
            effective_horizon(gamma)
    n = h = 4  # a signal [N] with N == H once broadcast along time into a wrong gradient
    batch = Trajectory(jnp.zeros((n, h), jnp.int32), jnp.zeros((n, h), jnp.int32), jnp.ones((n, h)),
                       jnp.zeros((n, h), jnp.int32))
    with pytest.raises(ValueError, match="signal of shape"):
        score_function_gradient(SoftmaxPolicy(), jnp.zeros((2, 2)), batch, jnp.ones(h), jnp.ones(n))
    with pytest.raises(ValueError, match="signal of shape"):
        score_function_gradient(SoftmaxPolicy(), jnp.zeros((2, 2)), batch, jnp.ones(1), jnp.ones((n, h)))
