"""What the replay-based agents (SAC, SVG(0), SVG(1)) share: one real env step at a time, the gradient steps of
that step gated on `learning_starts`, and a training chunk that scans `steps_per_chunk` such steps inside jit.

An agent using it provides `policy` (with `sample`), `spec`, `env`, `limit`, `update(state, key)`,
`learner_fields` (the state fields an update changes) and a `config` with `learning_starts` and
`updates_per_step`; its state has `actor`, `steps`, `env_state` and `key`; its `observe` stores the transition and
then calls `learn_if_ready`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mbpg.envs import autoreset


class OffPolicyAgent:
    learner_fields: tuple[str, ...] = ()

    def learn_if_ready(self, state, key_update):
        """`updates_per_step` gradient steps once `state.steps >= learning_starts`, zeros in the metrics before
        (and `updated` 0, so that `train_chunk` averages the metrics over the steps that updated).

        Only what the update changes goes through the cond: under vmap (many seeds) a cond becomes a select of its
        outputs, and selecting the whole state would copy the replay buffer on every env step.
        """
        learner = {name: getattr(state, name) for name in self.learner_fields}

        def learn(learner):
            updated, infos = jax.lax.scan(self.update, dataclasses.replace(state, **learner),
                                          jax.random.split(key_update, self.config.updates_per_step))
            return {name: getattr(updated, name) for name in self.learner_fields}, jax.tree.map(jnp.mean, infos)

        def wait(learner):
            return learner, jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda x: learn(x)[1], learner))

        ready = state.steps >= self.config.learning_starts
        learner, info = jax.lax.cond(ready, learn, wait, learner)
        return dataclasses.replace(state, **learner), {**info, "updated": ready.astype(jnp.float32)}

    def explore(self, state, obs, key_act, key_random):
        """The behaviour action: uniform over the action box before `learning_starts`, then a policy sample."""
        policy_action = self.policy.sample(state.actor, obs, key_act)
        random_action = jax.random.uniform(key_random, (self.spec.action_dim,), minval=jnp.asarray(
            self.spec.action_low), maxval=jnp.asarray(self.spec.action_high))
        return jnp.where(state.steps < self.config.learning_starts, random_action, policy_action)

    def env_step(self, state, key):
        key_act, key_random, key_env, key_update = jax.random.split(key, 4)
        action = self.explore(state, state.env_state.obs, key_act, key_random)
        env_state, transition = autoreset.step(self.env, state.env_state, action, key_env, self.limit)
        state, info = self.observe(dataclasses.replace(state, env_state=env_state), {
            "obs": transition.obs, "action": action, "reward": transition.reward, "next_obs": transition.next_obs,
            "terminated": transition.terminated}, key_update)
        done = transition.terminated | transition.truncated
        return state, {**info, "episode_return": transition.episode_return, "episode_done": done}

    def train_chunk(self, state):
        key, key_steps = jax.random.split(state.key)
        state, infos = jax.lax.scan(self.env_step, dataclasses.replace(state, key=key),
                                    jax.random.split(key_steps, self.steps_per_chunk))
        done, returns, updated = infos.pop("episode_done"), infos.pop("episode_return"), infos.pop("updated")
        metrics = average_over_updates(infos, updated)
        metrics["train_episode_return"] = jnp.where(done.any(), returns.sum() / jnp.maximum(done.sum(), 1), jnp.nan)
        return state, metrics


def average_over_updates(infos: dict, updated) -> dict:
    """Each per-step metric [steps] averaged over the env steps that updated (`updated` 1), NaN in a chunk with
    none: the zeros that steps before learning_starts report would otherwise shrink the first learning chunk's
    losses. Shared by the compiled chunk and the host driver's."""
    count = updated.sum()
    return {k: jnp.where(count > 0, jnp.sum(v * updated) / jnp.maximum(count, 1.0), jnp.nan) for k, v in infos.items()}
