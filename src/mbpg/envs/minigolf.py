"""The 1-D minigolf task as a functional JAX environment (GAMPS's second test bed).

Sources: the minigolf of Tirinzoni, Salvini & Restelli, "Transfer of samples in policy search via multiple
importance sampling" (ICML 2019), used again by D'Oro et al., "Gradient-Aware Model-based Policy Search"
(AAAI 2020); physics from Penner, "The physics of putting" (Canadian Journal of Physics, 2002). The constants
(putter length 1, friction 0.131, hole size 0.10, ball radius 0.02135, noise std 0.3, positions [0, 20],
actions [1e-5, 10], horizon 20, gamma 0.99) were read from public reference code of that group, not from the
papers' text. The position-dependent friction (`friction_far`) follows the same code's "complex" variant
(friction growing linearly with distance; our recollection is that GAMPS used such a green so that a simple
model class is misspecified: check against the paper before quoting it).

Dynamics. The state is the distance x to the hole. The action a is the putter's speed; the ball leaves with
u = clip(a, a_min, a_max) * putter_length * (1 + eps), eps ~ N(0, noise_std^2), and rolls with constant
deceleration d = (5/7) * friction(x) * g (a rolling ball, friction taken at the start of the putt).
- u < v_min = sqrt(2 d x): the ball stops short at x - u^2 / (2 d); reward -1; the episode goes on.
- u > v_max = sqrt((2 h - r)^2 g / (2 r) + v_min^2): too fast to drop, it overshoots; reward -100; the episode
  ends.
- otherwise the ball drops into the hole: reward 0; the episode ends.
A putt that stops short always makes progress, so an episode ends in at most a few putts with a good policy; the
time limit (`max_episode_steps`) is applied by the caller.

The step is split into physics and rules, so a learned model can replace the physics alone: `stop_point`
gives the signed distance y = x - u^2 / (2 d) at which the ball would come to rest (y < 0: past the hole), and
`outcome(x, y)` applies the rules (short if y > 0, holed if -L(x) <= y <= 0 with L = (v_max^2 - v_min^2) / (2 d),
overshot otherwise). GAMPS's continuous model (`mbpg.algos.gamps_continuous`) learns y from (x, a) and keeps the
rules, as the tabular GAMPS keeps the known rewards.

State layout: [x, ended, y] (ended = 1 after holing or overshooting; y the stop point of the last putt, as seen
where the ball went, 0 at the start); the observation is [x].
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

GRAVITY = 9.81


class Minigolf(eqx.Module):
    """Minigolf-v0: putt a ball into a hole at distance x in [0, 20] with as few strokes as possible."""

    putter_length: float = eqx.field(static=True, default=1.0)
    friction: float = eqx.field(static=True, default=0.131)
    friction_far: float | None = eqx.field(static=True, default=None)
    hole_size: float = eqx.field(static=True, default=0.10)
    ball_radius: float = eqx.field(static=True, default=0.02135)
    noise_std: float = eqx.field(static=True, default=0.3)
    min_position: float = eqx.field(static=True, default=0.0)
    max_position: float = eqx.field(static=True, default=20.0)
    min_action: float = eqx.field(static=True, default=1e-5)
    max_action: float = eqx.field(static=True, default=10.0)
    max_episode_steps: int | None = eqx.field(static=True, default=20)

    def __check_init__(self):
        for name in ("putter_length", "friction", "hole_size", "ball_radius", "max_action"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}.")
        if self.friction_far is not None and not self.friction_far > 0:
            raise ValueError(f"friction_far must be > 0 (or None for a uniform green); got {self.friction_far}.")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0; got {self.noise_std}.")
        if not 0 <= self.min_position < self.max_position:
            raise ValueError(f"need 0 <= min_position < max_position; got {self.min_position}, {self.max_position}.")
        if not 0 < self.min_action < self.max_action:
            raise ValueError(f"need 0 < min_action < max_action; got {self.min_action}, {self.max_action}.")
        if not 2 * self.hole_size > self.ball_radius:
            raise ValueError("hole_size must exceed half the ball radius, or no putt can drop.")

    @property
    def observation_space(self) -> spaces.Box:
        return spaces.Box(np.float32(0.0), np.float32(self.max_position), shape=(1,), dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(np.float32(self.min_action), np.float32(self.max_action), shape=(1,), dtype=np.float32)

    def friction_at(self, position: jax.Array) -> jax.Array:
        """Friction of the green at distance `position`: uniform, or linear from `friction` at `min_position` to
        `friction_far` at `max_position`, and `friction` nearer the hole than `min_position` (balls putted from the
        start band roll there; extended below it, a line rising with distance can reach zero or negative friction)."""
        if self.friction_far is None:
            return jnp.full_like(position, self.friction)
        span = self.max_position - self.min_position
        fraction = jnp.clip((position - self.min_position) / span, 0.0, 1.0)
        return self.friction + (self.friction_far - self.friction) * fraction

    def reset(self, key: jax.Array) -> jax.Array:
        dtype = jnp.result_type(float)
        x = jax.random.uniform(key, (), dtype, self.min_position, self.max_position)
        return jnp.stack([x, jnp.zeros((), dtype), jnp.zeros((), dtype)])

    def deceleration(self, x: jax.Array) -> jax.Array:
        """d = (5/7) friction(x) g: a rolling ball's constant deceleration."""
        return 5.0 / 7.0 * self.friction_at(x) * GRAVITY

    def stop_point(self, x: jax.Array, action: jax.Array, key: jax.Array) -> jax.Array:
        """The physics: y = x - u^2 / (2 d), u = clip(a) * putter_length * (1 + eps), eps ~ N(0, noise_std^2)."""
        a = jnp.clip(jnp.reshape(action, (-1,))[0].astype(x.dtype), self.min_action, self.max_action)
        speed = jnp.maximum(a * self.putter_length * (1.0 + self.noise_std * jax.random.normal(key, (), x.dtype)), 0.0)
        return x - speed**2 / (2.0 * self.deceleration(x))

    def hole_window(self, x: jax.Array) -> jax.Array:
        """L(x): a ball that would stop at most L past the hole drops in (v_min < u < v_max)."""
        return (2 * self.hole_size - self.ball_radius) ** 2 * GRAVITY / (2 * self.ball_radius) / (
            2.0 * self.deceleration(x))

    def outcome(self, x: jax.Array, stop: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The rules: (next position, reward, ended) of a putt from x that would stop at `stop`."""
        short = stop > 0.0
        overshoot = stop < -self.hole_window(x)
        reward = jnp.where(short, -1.0, jnp.where(overshoot, -100.0, 0.0)).astype(x.dtype)
        return jnp.where(short, stop, 0.0), reward, ~short

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, ended = state[0], state[1]
        stop = self.stop_point(x, action, key)
        new_x, reward, finished = self.outcome(x, stop)
        # After the episode ended the state is absorbing and pays nothing (callers normally stop stepping).
        done = ended > 0.5
        next_state = jnp.where(done, state, jnp.stack([new_x, finished.astype(state.dtype), stop]))
        return next_state, jnp.where(done, 0.0, reward)

    def observation(self, state: jax.Array) -> jax.Array:
        return state[..., :1]

    def is_terminal(self, state: jax.Array) -> jax.Array:
        return state[..., 1] > 0.5
