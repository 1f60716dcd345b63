"""Gymnasium's classic-control tasks as functional JAX environments, plus a PILCO-style cart-pole swing-up.

Why ports instead of calling Gymnasium: model-based estimators roll out thousands of trajectories inside one
jitted, vmapped call, and the pathwise (SVG-style) estimators differentiate through the dynamics; a host-side
NumPy environment allows neither. The ports copy Gymnasium 1.x's constants, update order, clipping and reward
exactly (tests/test_classic_control.py steps both side by side), so numbers measured here mean the same as
numbers reported on the Gymnasium tasks.

Protocol (shared with `TabularMDP` and `LQR`): `reset(key) -> state`, `step(state, action, key) -> (next_state,
reward)`, `observation(state)`, `is_terminal(state)` and `max_episode_steps`. The time limit is not applied inside
`step`: the caller that counts steps truncates, so it can bootstrap on truncation but not on termination. Every
field is static configuration (the physical constants default to Gymnasium's), so an environment is hashable,
can be a static jit argument, and a model-misspecification experiment can build a perturbed copy, e.g.
`Pendulum(g=9.81)` or `dataclasses.replace(CartPole(), masspole=0.2)`.

States are float arrays in JAX's default float dtype (float32 unless `jax.enable_x64`), where Gymnasium holds
float64 (float32 for MountainCarContinuous); one step agrees to float32 rounding.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

_INTEGRATORS = ("euler", "semi-implicit euler")


def _scalar(action: jax.Array) -> jax.Array:
    """The one entry of a scalar or shape-(1,) action (Gymnasium's Box actions have shape (1,))."""
    return jnp.reshape(action, (-1,))[0]


def _float_dtype():
    return jnp.result_type(float)


def _check_integrator(name: str) -> str:
    if name not in _INTEGRATORS:
        raise ValueError(f"kinematics_integrator must be one of {_INTEGRATORS}; got {name!r}.")
    return name


def angle_normalize(angle: jax.Array) -> jax.Array:
    """Wrap an angle into [-pi, pi), as Gymnasium's pendulum does before charging for it."""
    return ((angle + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum(eqx.Module):
    """Pendulum-v1: swing a torque-limited pendulum up and hold it (theta = 0 is upright).

    State [theta, theta_dot] with theta unwrapped; observation [cos theta, sin theta, theta_dot]. The reward
    -(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2) is charged on the state *before* the step and the clipped
    torque, exactly as Gymnasium does, so it is a function of (state, action) and a model only has to predict
    the next state.
    """

    g: float = eqx.field(static=True, default=10.0)
    m: float = eqx.field(static=True, default=1.0)
    l: float = eqx.field(static=True, default=1.0)
    dt: float = eqx.field(static=True, default=0.05)
    max_speed: float = eqx.field(static=True, default=8.0)
    max_torque: float = eqx.field(static=True, default=2.0)
    max_episode_steps: int | None = eqx.field(static=True, default=200)

    @property
    def observation_space(self) -> spaces.Box:
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)

    def reset(self, key: jax.Array) -> jax.Array:
        high = jnp.array([jnp.pi, 1.0], _float_dtype())
        return jax.random.uniform(key, (2,), high.dtype, -high, high)

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del key  # deterministic dynamics; the key is part of the protocol
        theta, theta_dot = state[0], state[1]
        torque = jnp.clip(_scalar(action).astype(state.dtype), -self.max_torque, self.max_torque)
        cost = angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * torque**2
        acceleration = 3 * self.g / (2 * self.l) * jnp.sin(theta) + 3.0 / (self.m * self.l**2) * torque
        new_theta_dot = jnp.clip(theta_dot + acceleration * self.dt, -self.max_speed, self.max_speed)
        new_theta = theta + new_theta_dot * self.dt
        return jnp.stack([new_theta, new_theta_dot]), -cost

    def observation(self, state: jax.Array) -> jax.Array:
        theta, theta_dot = state[..., 0], state[..., 1]
        return jnp.stack([jnp.cos(theta), jnp.sin(theta), theta_dot], axis=-1)

    def is_terminal(self, state: jax.Array) -> jax.Array:
        return jnp.zeros(jnp.shape(state)[:-1], bool)


def _cart_pole_accelerations(env, x_dot, theta, theta_dot, force):
    """(x_acc, theta_acc) of Gymnasium's cart-pole (Florian 2007's corrected equations; uniform rod, no friction).

    `env.length` is HALF the pole's length, following Gymnasium's naming.
    """
    total_mass = env.masspole + env.masscart
    polemass_length = env.masspole * env.length
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (env.gravity * sin - cos * temp) / (env.length * (4.0 / 3.0 - env.masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    return x_acc, theta_acc


def _cart_pole_integrate(env, state, force, dt):
    """One integrator step of length dt, in Gymnasium's order (explicit Euler uses the old velocities)."""
    x, x_dot, theta, theta_dot = state[0], state[1], state[2], state[3]
    x_acc, theta_acc = _cart_pole_accelerations(env, x_dot, theta, theta_dot, force)
    if env.kinematics_integrator == "euler":
        x = x + dt * x_dot
        x_dot = x_dot + dt * x_acc
        theta = theta + dt * theta_dot
        theta_dot = theta_dot + dt * theta_acc
    else:
        x_dot = x_dot + dt * x_acc
        x = x + dt * x_dot
        theta_dot = theta_dot + dt * theta_acc
        theta = theta + dt * theta_dot
    return jnp.stack([x, x_dot, theta, theta_dot])


class CartPole(eqx.Module):
    """CartPole-v1: push a cart left (action 0) or right (action 1) by 10 N to keep the pole within 12 degrees.

    State = observation = [x, x_dot, theta, theta_dot], theta = 0 upright. The reward is 1 for every step,
    including the one that terminates (Gymnasium's default, non-Sutton-Barto reward); Gymnasium pays 0 for steps
    taken after termination, which callers of the functional protocol never take.
    """

    gravity: float = eqx.field(static=True, default=9.8)
    masscart: float = eqx.field(static=True, default=1.0)
    masspole: float = eqx.field(static=True, default=0.1)
    length: float = eqx.field(static=True, default=0.5)  # half the pole's length, as in Gymnasium
    force_mag: float = eqx.field(static=True, default=10.0)
    tau: float = eqx.field(static=True, default=0.02)
    kinematics_integrator: str = eqx.field(static=True, default="euler", converter=_check_integrator)
    theta_threshold_radians: float = eqx.field(static=True, default=12 * 2 * math.pi / 360)
    x_threshold: float = eqx.field(static=True, default=2.4)
    max_episode_steps: int | None = eqx.field(static=True, default=500)

    @property
    def observation_space(self) -> spaces.Box:
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32)

    @property
    def action_space(self) -> spaces.Discrete:
        return spaces.Discrete(2)

    def reset(self, key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, (4,), _float_dtype(), -0.05, 0.05)

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del key
        force = jnp.where(jnp.reshape(action, ()) == 1, self.force_mag, -self.force_mag).astype(state.dtype)
        return _cart_pole_integrate(self, state, force, self.tau), jnp.ones((), state.dtype)

    def observation(self, state: jax.Array) -> jax.Array:
        return state

    def is_terminal(self, state: jax.Array) -> jax.Array:
        x, theta = state[..., 0], state[..., 2]
        return (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )


class CartPoleSwingUp(eqx.Module):
    """Cart-pole swing-up with a continuous force, the benchmark of PILCO (Deisenroth & Rasmussen, ICML 2011).

    Why it exists: CartPole-v1 balances from upright with bang-bang pushes, which says little about learning a
    dynamics model; swinging the pole up from hanging down within a few seconds needs a good model, and this is
    the task PILCO and its successors report on.

    Physics: Gymnasium's cart-pole equations and constants (gravity 9.8, cart 1.0 kg, pole 0.1 kg, force limit
    10 N, no friction) with PILCO's pole length of 0.6 m (`pole_length`; the half-length 0.3 m enters the
    equations), so that the reward below measures the tip of the pole that is simulated. The action lies in
    Box(-1, 1) and is clipped and scaled by `force_mag` = 10 N. One step is dt = 0.1 s (PILCO's control period)
    integrated with `n_substeps` = 10 Euler sub-steps of 0.01 s. The default sub-step is semi-implicit
    (symplectic) Euler, not CartPole's explicit Euler: with no force, explicit Euler at 0.01 s pumps energy
    into the pole (+70% over one 4 s episode from a spinning start, x1.7 the amplitude of a small swing about
    hanging down), which a learned model would dutifully copy; semi-implicit Euler keeps it within a few
    percent. `kinematics_integrator="euler"` restores Gymnasium's scheme.

    The pole starts hanging down: state [x, x_dot, theta, theta_dot] = [0, 0, pi, 0] plus Gaussian noise of
    standard deviation `reset_noise` = 0.1 per entry (PILCO's start distribution). theta = 0 is upright, as in
    CartPole. There is no termination (the cart may leave any track); episodes last `max_episode_steps` = 40
    steps (4 s). Observation [x, x_dot, cos theta, sin theta, theta_dot], so the angle has no wrap-around jump.

    Reward exp(-d^2 / (2 * 0.25^2)) of the state *after* the step, where d is the distance from the pole tip
    (x + l sin theta, l cos theta) to the upright tip above the track's centre (0, l), l = 0.6 m: PILCO's
    saturating cost with width 0.25, written as a reward in [0, 1] (1 upright and centred, about 1e-5 hanging
    down at the centre).
    """

    gravity: float = eqx.field(static=True, default=9.8)
    masscart: float = eqx.field(static=True, default=1.0)
    masspole: float = eqx.field(static=True, default=0.1)
    pole_length: float = eqx.field(static=True, default=0.6)
    force_mag: float = eqx.field(static=True, default=10.0)
    dt: float = eqx.field(static=True, default=0.1)
    n_substeps: int = eqx.field(static=True, default=10)
    kinematics_integrator: str = eqx.field(static=True, default="semi-implicit euler", converter=_check_integrator)
    reward_width: float = eqx.field(static=True, default=0.25)
    reset_noise: float = eqx.field(static=True, default=0.1)
    max_episode_steps: int | None = eqx.field(static=True, default=40)

    @property
    def length(self) -> float:
        """Half the pole's length: the name and meaning the shared cart-pole equations expect."""
        return 0.5 * self.pole_length

    @property
    def observation_space(self) -> spaces.Box:
        high = np.array([np.inf, np.inf, 1.0, 1.0, np.inf], dtype=np.float32)
        return spaces.Box(-high, high, dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, key: jax.Array) -> jax.Array:
        mean = jnp.array([0.0, 0.0, jnp.pi, 0.0], _float_dtype())
        return mean + self.reset_noise * jax.random.normal(key, (4,), mean.dtype)

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del key
        force = self.force_mag * jnp.clip(_scalar(action).astype(state.dtype), -1.0, 1.0)
        sub_dt = self.dt / self.n_substeps
        next_state = jax.lax.fori_loop(
            0, self.n_substeps, lambda _, s: _cart_pole_integrate(self, s, force, sub_dt), state
        )
        return next_state, self.reward(next_state)

    def reward(self, state: jax.Array) -> jax.Array:
        """exp(-d^2 / (2 width^2)) with d the pole tip's distance from the upright, centred tip."""
        x, theta = state[..., 0], state[..., 2]
        dx = x + self.pole_length * jnp.sin(theta)
        dy = self.pole_length * jnp.cos(theta) - self.pole_length
        return jnp.exp(-(dx**2 + dy**2) / (2 * self.reward_width**2))

    def observation(self, state: jax.Array) -> jax.Array:
        x, x_dot, theta, theta_dot = state[..., 0], state[..., 1], state[..., 2], state[..., 3]
        return jnp.stack([x, x_dot, jnp.cos(theta), jnp.sin(theta), theta_dot], axis=-1)

    def is_terminal(self, state: jax.Array) -> jax.Array:
        return jnp.zeros(jnp.shape(state)[:-1], bool)


class MountainCarContinuous(eqx.Module):
    """MountainCarContinuous-v0: drive an underpowered car up the right hill (position >= 0.45).

    State = observation = [position, velocity]. Gymnasium's rules, in its order: the force (action clipped to
    [-1, 1]) changes the velocity, which is clipped to +-0.07; the position moves and is clipped to
    [-1.2, 0.6]; at the left wall a negative velocity is zeroed (an inelastic wall). Reward 100 on reaching the
    goal minus 0.1 * action^2 of the *unclipped* action (Gymnasium charges the raw action; they agree inside the
    action space). Terminal when position >= 0.45 and velocity >= 0.
    """

    min_action: float = eqx.field(static=True, default=-1.0)
    max_action: float = eqx.field(static=True, default=1.0)
    min_position: float = eqx.field(static=True, default=-1.2)
    max_position: float = eqx.field(static=True, default=0.6)
    max_speed: float = eqx.field(static=True, default=0.07)
    goal_position: float = eqx.field(static=True, default=0.45)
    goal_velocity: float = eqx.field(static=True, default=0.0)
    power: float = eqx.field(static=True, default=0.0015)
    max_episode_steps: int | None = eqx.field(static=True, default=999)

    @property
    def observation_space(self) -> spaces.Box:
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        return spaces.Box(low, high, dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(self.min_action, self.max_action, shape=(1,), dtype=np.float32)

    def reset(self, key: jax.Array) -> jax.Array:
        position = jax.random.uniform(key, (), _float_dtype(), -0.6, -0.4)
        return jnp.stack([position, jnp.zeros_like(position)])

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del key
        position, velocity = state[0], state[1]
        raw = _scalar(action).astype(state.dtype)
        force = jnp.clip(raw, self.min_action, self.max_action)
        velocity = velocity + force * self.power - 0.0025 * jnp.cos(3 * position)
        velocity = jnp.clip(velocity, -self.max_speed, self.max_speed)
        position = jnp.clip(position + velocity, self.min_position, self.max_position)
        velocity = jnp.where((position <= self.min_position) & (velocity < 0), jnp.zeros_like(velocity), velocity)
        next_state = jnp.stack([position, velocity])
        reward = jnp.where(self.is_terminal(next_state), 100.0, 0.0).astype(state.dtype) - 0.1 * raw**2
        return next_state, reward

    def observation(self, state: jax.Array) -> jax.Array:
        return state

    def is_terminal(self, state: jax.Array) -> jax.Array:
        return (state[..., 0] >= self.goal_position) & (state[..., 1] >= self.goal_velocity)
