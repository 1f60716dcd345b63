"""Bridges between Gymnasium and our functional JAX environments, in both directions.

`GymnasiumEnv` drives any Gymnasium id (MuJoCo included) from the host, for the algorithms that must collect
real data from an environment with no JAX port. `as_gymnasium` goes the other way: it lets any functional
environment (classic-control ports, `TabularMDP`, `LQR`) be used by Gymnasium tooling and third-party agents,
which is also how we check that the ports honour Gymnasium's API (`gymnasium.utils.env_checker.check_env`).

Both keep `terminated` (the task ended: do not bootstrap) separate from `truncated` (the time limit cut the
episode: bootstrap from the value of the last observation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from mbpg.envs.lqr import LQR
from mbpg.envs.tabular import TabularMDP

SUPPORTED_SPACES = (spaces.Box, spaces.Discrete)


def _check_space(space: spaces.Space, role: str, owner: str, fix: str) -> spaces.Space:
    if not isinstance(space, SUPPORTED_SPACES):
        raise ValueError(
            f"{owner} has a {type(space).__name__} {role} space ({space}); only Box and Discrete spaces are "
            f"supported. {fix}"
        )
    return space


class GymnasiumEnv:
    """A host-side driver for `gymnasium.make(env_id, **make_kwargs)`.

    Why a thin driver instead of the raw Gymnasium env: callers get plain NumPy/Python values, one reset
    signature (`reset(seed) -> obs`), and a guarantee that the spaces are Box or Discrete, which is all our
    policies and buffers handle (`wrappers`, applied in order after `gymnasium.make`, can convert other spaces).
    The time limit is Gymnasium's `TimeLimit` (pass `max_episode_steps=...` to override it), reported as
    `truncated`, never folded into `terminated`.
    """

    def __init__(self, env_id: str, wrappers: Sequence[Callable[[gymnasium.Env], gymnasium.Env]] = (),
                 **make_kwargs: Any):
        self.env_id = env_id
        self._wrappers, self._make_kwargs = tuple(wrappers), dict(make_kwargs)
        self.env = gymnasium.make(env_id, **make_kwargs)
        for wrap in wrappers:
            self.env = wrap(self.env)
        owner = f"Gymnasium env {env_id!r}"
        fix = ("Convert it with a Gymnasium wrapper, e.g. GymnasiumEnv(env_id, "
               "wrappers=[gymnasium.wrappers.FlattenObservation]) for observations.")
        try:
            self._observation_space = _check_space(self.env.observation_space, "observation", owner, fix)
            self._action_space = _check_space(self.env.action_space, "action", owner, fix)
        except ValueError:
            self.env.close()
            raise
        self.reset_info: dict = {}

    def spawn(self) -> "GymnasiumEnv":
        """Another instance of the same task (same id, make arguments and wrappers): for parallel envs and for
        evaluation, which must not run on the registered defaults when this one was made with others."""
        return GymnasiumEnv(self.env_id, self._wrappers, **self._make_kwargs)

    @property
    def observation_space(self) -> spaces.Space:
        return self._observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self._action_space

    @property
    def max_episode_steps(self) -> int | None:
        spec = self.env.spec
        return None if spec is None else spec.max_episode_steps

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode; the reset info is kept in `reset_info`."""
        obs, self.reset_info = self.env.reset(seed=seed, options=options)
        return _to_host(obs, self._observation_space)

    def step(self, action) -> tuple[Any, float, bool, bool, dict]:
        """(obs, reward, terminated, truncated, info) for one step."""
        obs, reward, terminated, truncated, info = self.env.step(_action_to_host(action, self._action_space))
        return _to_host(obs, self._observation_space), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "GymnasiumEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GymnasiumEnv({self.env_id!r})"


def _to_host(obs, space: spaces.Space):
    if isinstance(space, spaces.Discrete):
        return int(obs)
    return np.array(obs, dtype=space.dtype)  # a fresh array: callers keep observations in buffers


def _action_to_host(action, space: spaces.Space):
    if isinstance(space, spaces.Discrete):
        value = np.asarray(action)
        if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"a Discrete({space.n}) action must be one integer; got {action!r}.")
        value = int(value.reshape(()))
        if not space.start <= value < space.start + space.n:
            raise ValueError(
                f"action {value} is outside Discrete({space.n}) (valid: {space.start}..{space.start + space.n - 1})."
            )
        return value
    value = np.asarray(action, dtype=space.dtype)
    if value.size != int(np.prod(space.shape)):
        raise ValueError(f"a Box action must have shape {space.shape}; got shape {value.shape}.")
    return value.reshape(space.shape)


def _default_spaces(env) -> tuple[spaces.Space, spaces.Space]:
    """Spaces for environments that do not declare them: tabular (indices) and LQR (unbounded vectors)."""
    observation_space = getattr(env, "observation_space", None)
    action_space = getattr(env, "action_space", None)
    if observation_space is not None and action_space is not None:
        return observation_space, action_space
    if isinstance(env, TabularMDP):
        return spaces.Discrete(env.n_states), spaces.Discrete(env.n_actions)
    if isinstance(env, LQR):
        return (
            spaces.Box(-np.inf, np.inf, shape=(env.state_dim,), dtype=np.float32),
            spaces.Box(-np.inf, np.inf, shape=(env.action_dim,), dtype=np.float32),
        )
    raise ValueError(
        f"{type(env).__name__} declares no observation_space/action_space, and they cannot be inferred for it "
        "(only TabularMDP and LQR are). Add both as properties returning gymnasium.spaces.Box or Discrete."
    )


@eqx.filter_jit
def _reset(env, key):
    state = env.reset(key)
    observe = getattr(env, "observation", None)
    return state, state if observe is None else observe(state)


@eqx.filter_jit
def _transition(env, state, action, key):
    """One step with everything the host needs, in a single dispatch (and one compilation per env structure)."""
    key, step_key = jax.random.split(key)
    next_state, reward = env.step(state, action, step_key)
    observe = getattr(env, "observation", None)
    obs = next_state if observe is None else observe(next_state)
    is_terminal = getattr(env, "is_terminal", None)
    terminated = jnp.zeros((), bool) if is_terminal is None else is_terminal(next_state)
    return key, next_state, obs, reward, terminated


class FunctionalGymnasiumEnv(gymnasium.Env):
    """A `gymnasium.Env` view of a functional JAX environment; build it with `as_gymnasium`.

    Seeding: `reset(seed=...)` seeds Gymnasium's `np_random`, and every reset draws 64 bits from it for a fresh
    JAX key, so seeded episodes are reproducible and unseeded resets continue the seeded stream. Each step splits
    that key. `step` is one jitted call (`eqx.filter_jit`: array fields such as a TabularMDP's transitions are
    traced, so one compilation serves every model of the same shape).
    """

    metadata = {"render_modes": []}

    def __init__(self, env, max_episode_steps: int | None = None):
        self.functional_env = env
        observation_space, action_space = _default_spaces(env)
        owner = type(env).__name__
        fix = "Declare a Box or Discrete space (flatten structured observations inside the env)."
        self.observation_space = _check_space(observation_space, "observation", owner, fix)
        self.action_space = _check_space(action_space, "action", owner, fix)
        if max_episode_steps is None:
            max_episode_steps = getattr(env, "max_episode_steps", None)
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be a positive integer or None; got {max_episode_steps}.")
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        # A spec lets Gymnasium tooling rebuild the env (check_env's determinism and close checks need one).
        self.spec = EnvSpec(
            id=f"mbpg/{type(env).__name__}-v0",
            entry_point=functools.partial(FunctionalGymnasiumEnv, env, self.max_episode_steps),
            max_episode_steps=self.max_episode_steps,
            nondeterministic=False,
        )
        self._key = None
        self._state = None
        self._elapsed_steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options:  # Gymnasium's per-env reset options (x_init, low/high, ...) are not modelled by the ports
            raise ValueError(f"reset options are not supported by {self.spec.id} (got {sorted(options)}); its start "
                             "state comes from the JAX environment's own reset distribution.")
        super().reset(seed=seed)
        high, low = (int(w) for w in self.np_random.integers(0, 2**32, size=2, dtype=np.uint64))
        key = jax.random.fold_in(jax.random.key(high), low)
        self._key, reset_key = jax.random.split(key)
        self._state, obs = _reset(self.functional_env, reset_key)
        self._elapsed_steps = 0
        return _to_host(obs, self.observation_space), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step(): the environment has no state yet.")
        action = _action_to_host(action, self.action_space)
        if isinstance(self.action_space, spaces.Discrete):
            action = np.asarray(action, np.int32)  # TabularMDP indexes arrays with it; JAX runs in 32 bits by default
        self._key, self._state, obs, reward, terminated = _transition(
            self.functional_env, self._state, action, self._key
        )
        self._elapsed_steps += 1
        truncated = self.max_episode_steps is not None and self._elapsed_steps >= self.max_episode_steps
        return _to_host(obs, self.observation_space), float(reward), bool(terminated), bool(truncated), {}

    @property
    def state(self):
        """The functional environment's current state (a JAX pytree)."""
        return self._state

    def __repr__(self) -> str:
        return f"as_gymnasium({type(self.functional_env).__name__}, max_episode_steps={self.max_episode_steps})"


def as_gymnasium(env, max_episode_steps: int | None = None) -> FunctionalGymnasiumEnv:
    """Wrap a functional JAX environment as a `gymnasium.Env`.

    The time limit (`max_episode_steps`, default the env's own attribute, None for TabularMDP and LQR, which
    are continuing problems) is reported as `truncated`, like Gymnasium's `TimeLimit`; `terminated` comes only
    from the env's `is_terminal`.
    """
    return FunctionalGymnasiumEnv(env, max_episode_steps)
