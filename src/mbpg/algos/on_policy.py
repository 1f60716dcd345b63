"""What every on-policy agent shares: a batch of vectorised real environments, rollouts, and advantages.

REINFORCE, PPO and TRPO are all MFG in the seed's terms (d and Q from the real environment); they differ only in
the update rule applied to the batch built here.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from mbpg.algos.spaces import EnvSpec, env_spec
from mbpg.envs import autoreset
from mbpg.envs.gym_adapter import GymnasiumEnv
from mbpg.policies.mlp import CategoricalMLPPolicy, GaussianMLPPolicy
from mbpg.values import gae


class Rollout(NamedTuple):
    """Time-major arrays [T, n_envs, ...]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    episode_return: jax.Array


def make_policy(spec: EnvSpec, hidden: tuple[int, ...]):
    if spec.discrete:
        return CategoricalMLPPolicy(spec.obs_dim, spec.n_actions, hidden=hidden)
    return GaussianMLPPolicy(spec.obs_dim, spec.action_dim, hidden=hidden)


def is_host_env(env) -> bool:
    """Host-side Gymnasium envs step outside jit; everything else here is a functional JAX env."""
    return isinstance(env, GymnasiumEnv)


def reset_envs(env, key: jax.Array, n_envs: int) -> autoreset.EnvState:
    return jax.vmap(lambda k: autoreset.reset(env, k))(jax.random.split(key, n_envs))


def collect(env, spec: EnvSpec, policy, params, env_states, key, n_steps: int, limit: int):
    """n_steps of every environment under the current policy; returns the new env states and the rollout."""

    def one_step(env_states, key):
        key_act, key_env = jax.random.split(key)
        n_envs = env_states.obs.shape[0]
        act_keys = jax.random.split(key_act, n_envs)
        actions = jax.vmap(policy.sample, in_axes=(None, 0, 0))(params, env_states.obs, act_keys)
        log_probs = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(params, env_states.obs, actions)
        env_keys = jax.random.split(key_env, n_envs)
        env_states, transition = jax.vmap(lambda s, a, k: autoreset.step(env, s, spec.clip(a), k, limit))(
            env_states, actions, env_keys)
        return env_states, Rollout(transition.obs, actions, log_probs, transition.reward, transition.next_obs,
                                   transition.terminated, transition.truncated, transition.episode_return)

    return jax.lax.scan(one_step, env_states, jax.random.split(key, n_steps))


def finished_episode_return(rollout: Rollout) -> jax.Array:
    """Mean return of the episodes that ended in this rollout (NaN when none did)."""
    done = rollout.terminated | rollout.truncated
    count = done.sum()
    return jnp.where(count > 0, rollout.episode_return.sum() / jnp.maximum(count, 1), jnp.nan)


def advantages_and_returns(rollout: Rollout, value, gamma: float, lam: float):
    """GAE(gamma, lambda) on a rollout with the critic `value`; lam = 1 is the reward-to-go minus V (GPOMDP with a
    learned baseline), bootstrapped only where an episode was cut (time limit or batch end)."""
    values = jax.vmap(jax.vmap(value))(rollout.obs)
    next_values = jax.vmap(jax.vmap(value))(rollout.next_obs)
    return gae(rollout.reward, values, next_values, rollout.terminated, rollout.terminated | rollout.truncated,
               gamma, lam)


def flatten_time(tree):
    """[T, n_envs, ...] -> [T * n_envs, ...] on every leaf."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def minibatch_epochs(step, carry, data, key, epochs: int, minibatches: int):
    """Run `step(carry, minibatch) -> (carry, info)` over `epochs` shuffled passes of `minibatches` each; the
    size % minibatches samples left over by each shuffle sit that epoch out."""
    size = jax.tree.leaves(data)[0].shape[0]
    if size < minibatches:  # empty minibatches: NaN losses, zero gradients, a value net that never trains
        raise ValueError(f"a batch of {size} samples cannot fill {minibatches} minibatches; collect more per "
                         "update (n_envs * n_steps) or use fewer minibatches.")
    batch = size // minibatches

    def epoch(carry, key):
        order = jax.random.permutation(key, size)[: batch * minibatches].reshape(minibatches, batch)
        return jax.lax.scan(lambda c, idx: step(c, jax.tree.map(lambda x: x[idx], data)), carry, order)

    carry, infos = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return carry, jax.tree.map(jnp.mean, infos)


def fit_value(value, optimizer, opt_state, obs, returns, key, epochs: int, minibatches: int):
    """Regress V on the returns by minibatch Adam; returns (value, opt_state, mean loss)."""

    def step(carry, batch):
        value, opt_state = carry
        batch_obs, batch_returns = batch
        loss, grads = eqx.filter_value_and_grad(
            lambda v: 0.5 * jnp.mean((jax.vmap(v)(batch_obs) - batch_returns) ** 2))(value)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(value, eqx.is_array))
        return (eqx.apply_updates(value, updates), opt_state), loss

    (value, opt_state), loss = minibatch_epochs(step, (value, opt_state), (obs, returns), key, epochs, minibatches)
    return value, opt_state, loss


class OnPolicyAgent:
    """The set-up REINFORCE, PPO and TRPO share: spaces, the policy class, the batch shape, and acting."""

    name = "on-policy"

    def __init__(self, config, env):
        self.config, self.env = config, env
        self.spec = env_spec(env)
        self.policy = make_policy(self.spec, config.hidden)
        self.limit = autoreset.episode_limit(env)
        self.steps_per_chunk = config.n_envs * config.n_steps

    def act(self, state, obs, key):
        """The deterministic evaluation action: the policy's mode, clipped to the action box."""
        return self.spec.clip(self.policy.mode(state.policy_params, obs))

    def reset_envs(self, key):
        """Running episodes of the JAX environments; None for host-side Gymnasium envs (the host driver owns them)."""
        return None if is_host_env(self.env) else reset_envs(self.env, key, self.config.n_envs)

    def train_chunk(self, state):
        """Collect n_envs x n_steps real steps inside jit, then apply the algorithm's update rule (`learn`)."""
        key, key_collect, key_learn = jax.random.split(state.key, 3)
        env_states, rollout = collect(self.env, self.spec, self.policy, state.policy_params, state.env_states,
                                      key_collect, self.config.n_steps, self.limit)
        state, metrics = self.learn(state, rollout, key_learn)
        return dataclasses.replace(state, env_states=env_states, key=key), metrics

    def learn(self, state, rollout: Rollout, key):
        """The update rule from one rollout; returns (state, metrics). Env states and the key are the caller's."""
        raise NotImplementedError
