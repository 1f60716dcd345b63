"""Training on host-side Gymnasium environments (MuJoCo and any other id without a JAX port).

The environments step in Python; the agent's acting and learning stay compiled. The driver produces exactly the
batches the JAX path produces (a `Rollout` for on-policy agents, one transition at a time for SAC), so the
algorithms are unchanged. One seed per process: host environments cannot be vmapped.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.algos.off_policy import average_over_updates
from mbpg.algos.on_policy import Rollout, finished_episode_return
from mbpg.envs.gym_adapter import GymnasiumEnv
from mbpg.keys import side_key


class HostDriver:
    """The host side of a run: its envs, their running returns and the key chain of acting (none of it is in the
    checkpoint). A run resumed at chunk `first_chunk` > 0 starts a fresh chain and fresh env seeds derived from
    that chunk: restarting the ones of chunk 0 replayed chunk 0's actions and start states (a SAC run in its
    random phase stored chunk 0's transitions twice). Resumed runs are therefore not bit for bit the uninterrupted
    run, as Gymnasium's own RNG state is not checkpointed either."""

    def __init__(self, agent, env: GymnasiumEnv, seed: int, first_chunk: int = 0):
        self.agent, self.seed = agent, seed
        n_envs = getattr(agent.config, "n_envs", 1)
        self.envs = [env] + [env.spawn() for _ in range(n_envs - 1)]
        env_seeds = [seed * 10_000 + i if first_chunk == 0 else
                     int(np.random.SeedSequence([seed, first_chunk, i]).generate_state(1)[0]) for i in range(n_envs)]
        self.obs = np.stack([e.reset(seed=s) for s, e in zip(env_seeds, self.envs)]).astype(np.float32)
        self.returns = np.zeros(n_envs, np.float32)
        self.key = jax.random.fold_in(jax.random.key(seed), 0x4057)
        if first_chunk:
            self.key = jax.random.fold_in(side_key(self.key, "resume"), first_chunk)
        spec, policy = agent.spec, getattr(agent, "policy", None)
        if hasattr(agent, "learn"):
            self._sample = eqx.filter_jit(lambda params, obs, keys: jax.vmap(
                lambda o, k: _sample_with_log_prob(policy, params, o, k))(obs, keys))
            self._learn = eqx.filter_jit(agent.learn)
        else:
            self._explore = eqx.filter_jit(agent.explore)
            self._observe = eqx.filter_jit(agent.observe)
        self._act = eqx.filter_jit(agent.act)
        self._clip = jax.jit(spec.clip)

    def _next_key(self) -> jax.Array:
        self.key, key = jax.random.split(self.key)
        return key

    def _step_all(self, actions: np.ndarray):
        """Step every environment; a finished one is reset, and its true final observation is kept."""
        rows = []
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            next_obs, reward, terminated, truncated, _ = env.step(action)
            self.returns[i] += reward
            done = terminated or truncated
            rows.append((self.obs[i], reward, np.asarray(next_obs, np.float32), terminated, truncated,
                         self.returns[i] if done else 0.0))
            if done:
                self.returns[i] = 0.0
                next_obs = env.reset()
            self.obs[i] = next_obs
        obs, reward, next_obs, terminated, truncated, episode_return = (np.stack(c) for c in zip(*rows))
        return obs, reward.astype(np.float32), next_obs, terminated, truncated, episode_return.astype(np.float32)

    def chunk(self, state):
        return self._on_policy_chunk(state) if hasattr(self.agent, "learn") else self._sac_chunk(state)

    def _on_policy_chunk(self, state):
        steps = []
        for _ in range(self.agent.config.n_steps):
            keys = jax.random.split(self._next_key(), len(self.envs))
            actions, log_probs = self._sample(state.policy_params, jnp.asarray(self.obs), keys)
            env_actions = np.asarray(self._clip(actions))
            obs, reward, next_obs, terminated, truncated, episode_return = self._step_all(env_actions)
            steps.append(Rollout(obs, np.asarray(actions), np.asarray(log_probs), reward, next_obs, terminated,
                                 truncated, episode_return))
        rollout = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *steps)
        key, key_learn = jax.random.split(state.key)
        state, metrics = self._learn(state, rollout, key_learn)
        metrics = {**metrics, "train_episode_return": finished_episode_return(rollout)}
        return eqx.tree_at(lambda s: s.key, state, key), metrics

    def _sac_chunk(self, state):
        infos, finished = [], []
        for _ in range(self.agent.steps_per_chunk):
            key_act, key_random, _, key_update = jax.random.split(self._next_key(), 4)
            action = np.asarray(self._explore(state, jnp.asarray(self.obs[0]), key_act, key_random))
            obs, reward, next_obs, terminated, truncated, episode_return = self._step_all(action[None])
            state, info = self._observe(state, {"obs": obs[0], "action": action, "reward": reward[0],
                                                "next_obs": next_obs[0], "terminated": terminated[0]}, key_update)
            infos.append(info)
            if terminated[0] or truncated[0]:
                finished.append(episode_return[0])
        infos = {k: np.stack([np.asarray(i[k]) for i in infos]) for k in infos[0]}
        updated = infos.pop("updated")
        metrics = {k: float(v) for k, v in average_over_updates(infos, updated).items()}
        metrics["train_episode_return"] = float(np.mean(finished)) if finished else np.nan
        return state, metrics

    def evaluate(self, state, n_episodes: int, chunk: int) -> np.ndarray:
        """Deterministic episodes on a fresh environment, seeded per evaluation so results repeat."""
        returns = []
        with self.envs[0].spawn() as env:
            for episode in range(n_episodes):
                obs, total, done = env.reset(seed=1_000_003 * (self.seed + 1) + 1009 * chunk + episode), 0.0, False
                while not done:
                    action = np.asarray(self._act(state, jnp.asarray(obs, jnp.float32), jax.random.key(0)))
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total += reward
                    done = terminated or truncated
                returns.append(total)
        return np.asarray(returns, np.float32)


def _sample_with_log_prob(policy, params, obs, key):
    action = policy.sample(params, obs, key)
    return action, policy.log_prob(params, obs, action)
