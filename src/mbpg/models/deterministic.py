"""Deterministic MLP ensembles of the state change, with the two losses that ME-TRPO and SLBO train them on.

Why deterministic: ME-TRPO (Kurutach et al. 2018) and SLBO (Luo et al. 2019) put the model's uncertainty in the
*disagreement between members* (ME-TRPO) or ignore it (SLBO, one member), not in a predicted variance; each member
is a plain regression s' = s + f(s, a). Predicting the change keeps the targets small and centred, and both the
inputs and the change are normalised with statistics of the current data, so one learning rate fits every task.

Two losses on the normalised change (std = per-dimension std of s' - s on the data):

* one-step, squared L2 (ME-TRPO):  L = mean_i || (f(s_i, a_i) - (s'_i - s_i)) / std ||^2
* multi-step, L2 norm (SLBO):      L = 1/H sum_{i<H} || ((s^_{i+1} - s^_i) - (s_{i+1} - s_i)) / std ||_2,
  rolling the model from s^_0 = s_0 along the real actions, so errors that compound over H steps are trained
  away; the norm (not its square) is SLBO's choice: it weighs a few large errors less than the squared loss.

Data live in a `TrajectoryBuffer` of fixed-length segments of real trajectories (fixed shapes, so fitting runs
inside an agent's compiled chunk). Each segment is marked once, when stored, as training or validation data:
the validation split is at trajectory level (consecutive states are nearly copies, so a transition-level split
would validate on the training data), and it never changes, so a member warm-started from the previous fit has
never been trained on what validates it. `fit_one_step` stops early on that split and keeps, for each member, the
parameters of its best validation epoch.

The members are stacked on a leading axis and evaluated with `jax.vmap`; `model.member(k)` is member k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from mbpg.policies.mlp import MLP, build_mlp


class DeterministicEnsemble(eqx.Module):
    """Stacked member networks with the normalisation they were trained in (the statistics travel with the
    parameters: the networks only make sense in those units)."""

    members: MLP  # every array leaf has a leading axis of n_members
    input_mean: jax.Array
    input_std: jax.Array
    delta_mean: jax.Array
    delta_std: jax.Array
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    @property
    def n_members(self) -> int:
        return jax.tree.leaves(self.members)[0].shape[0]

    def member(self, index) -> MLP:
        """Member `index` (an int or a traced integer) as one MLP."""
        return jax.tree.map(lambda p: p[index], self.members)


def init_deterministic_ensemble(n_members: int, obs_dim: int, action_dim: int, hidden: Sequence[int],
                                key: jax.Array, activation: str = "relu") -> DeterministicEnsemble:
    """Fresh members (different initialisations) with identity normalisation, replaced by the first fit."""
    for name, value in (("n_members", n_members), ("obs_dim", obs_dim), ("action_dim", action_dim)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    obs_dim, action_dim = int(obs_dim), int(action_dim)
    in_size = obs_dim + action_dim
    members = jax.vmap(lambda k: build_mlp(in_size, obs_dim, tuple(hidden), k, activation))(
        jax.random.split(key, int(n_members)))
    dtype = members.layers[-1].weight.dtype
    return DeterministicEnsemble(members, jnp.zeros(in_size, dtype), jnp.ones(in_size, dtype),
                                 jnp.zeros(obs_dim, dtype), jnp.ones(obs_dim, dtype), obs_dim, action_dim)


def _normalised_input(model: DeterministicEnsemble, obs, action):
    action = jnp.reshape(jnp.asarray(action, obs.dtype), (model.action_dim,))
    return (jnp.concatenate([obs, action]) - model.input_mean) / model.input_std


def member_step(model: DeterministicEnsemble, net: MLP, obs: jax.Array, action: jax.Array) -> jax.Array:
    """s' = s + delta_mean + delta_std * net(normalised [s, a]) for ONE observation and one member's network."""
    obs = jnp.asarray(obs, model.input_mean.dtype)
    if obs.shape != (model.obs_dim,):
        raise ValueError(f"the model steps ONE observation of shape ({model.obs_dim},), got {obs.shape}; vmap over "
                         "a batch.")
    return obs + model.delta_mean + model.delta_std * net(_normalised_input(model, obs, action))


def predict(model: DeterministicEnsemble, index, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Next observation under member `index` (int or traced integer)."""
    return member_step(model, model.member(index), obs, action)


def predict_all(model: DeterministicEnsemble, obs: jax.Array, action: jax.Array) -> jax.Array:
    """[n_members, obs_dim]: every member's next observation."""
    return jax.vmap(lambda net: member_step(model, net, obs, action))(model.members)


# --------------------------------------------------------------------------------------------------------------
# Losses


def safe_norm(x: jax.Array) -> jax.Array:
    """||x||_2 with gradient 0 (not NaN) at x = 0: a member that is exactly right on a window must not poison
    the batch's gradient."""
    squared = jnp.sum(x * x)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def multi_step_loss(step_fn: Callable, obs: jax.Array, actions: jax.Array, scale: jax.Array) -> jax.Array:
    """SLBO's loss on ONE window: 1/H sum_{i<H} || ((s^_{i+1} - s^_i) - (s_{i+1} - s_i)) / scale ||_2.

    obs [H + 1, obs_dim] are the real states s_0..s_H, actions [H, action_dim] the real actions between them,
    `step_fn(s, a) -> s'` the model (any function: the tests use a known linear one), `scale` [obs_dim] the std
    of the state change. The model rolls forward from s^_0 = s_0 on its own predictions, and the gradient flows
    back through that rollout.
    """
    obs, actions = jnp.asarray(obs), jnp.asarray(actions)
    if obs.ndim != 2 or actions.ndim != 2 or obs.shape[0] != actions.shape[0] + 1 or actions.shape[0] < 1:
        raise ValueError(f"multi_step_loss needs obs [H + 1, obs_dim] and actions [H, action_dim] with H >= 1; got "
                         f"{obs.shape} and {actions.shape}.")

    def body(predicted, inputs):
        action, state, next_state = inputs
        predicted_next = step_fn(predicted, action)
        error = ((predicted_next - predicted) - (next_state - state)) / scale
        return predicted_next, safe_norm(error)

    _, norms = jax.lax.scan(body, obs[0], (actions, obs[:-1], obs[1:]))
    return jnp.mean(norms)


def one_step_loss(model: DeterministicEnsemble, net: MLP, obs, actions, next_obs, weights=None) -> jax.Array:
    """ME-TRPO's loss for one member: the (weighted) mean over rows of the squared L2 error of the normalised
    change, || (f(s, a) - (s' - s)) / std ||^2, obs/actions/next_obs [N, .], weights [N] (0/1 masks rows)."""
    predicted = jax.vmap(lambda o, a: member_step(model, net, o, a))(obs, actions)
    squared = jnp.sum(((predicted - next_obs) / model.delta_std) ** 2, axis=-1)
    if weights is None:
        return jnp.mean(squared)
    return jnp.sum(weights * squared) / jnp.maximum(jnp.sum(weights), 1.0)


# --------------------------------------------------------------------------------------------------------------
# Data: fixed-length segments of real trajectories


class TrajectoryBuffer(eqx.Module):
    """A circular buffer of `capacity` segments of `length` consecutive real transitions each.

    `done[s, t]` marks a transition after which the environment was reset (its next_obs is the episode's true
    last observation, the following row starts a new episode): multi-step windows never cross it.
    `validation[s]` is the segment's fixed side of the trajectory-level split; `filled[s]` whether it holds data.
    """

    obs: jax.Array  # [capacity, length, obs_dim]
    action: jax.Array  # [capacity, length, action_dim]
    next_obs: jax.Array  # [capacity, length, obs_dim]
    done: jax.Array  # [capacity, length] bool
    validation: jax.Array  # [capacity] bool
    filled: jax.Array  # [capacity] bool
    position: jax.Array  # int: the next slot to write

    @staticmethod
    def create(capacity: int, length: int, obs_dim: int, action_dim: int, dtype=jnp.float32) -> TrajectoryBuffer:
        for name, value in (("capacity", capacity), ("length", length)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"TrajectoryBuffer {name} must be a positive integer, got {value!r}.")
        capacity, length = int(capacity), int(length)
        return TrajectoryBuffer(jnp.zeros((capacity, length, obs_dim), dtype),
                                jnp.zeros((capacity, length, action_dim), dtype),
                                jnp.zeros((capacity, length, obs_dim), dtype), jnp.zeros((capacity, length), bool),
                                jnp.zeros(capacity, bool), jnp.zeros(capacity, bool), jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.obs.shape[0]

    @property
    def length(self) -> int:
        return self.obs.shape[1]

    def add(self, obs, action, next_obs, done, validation) -> TrajectoryBuffer:
        """Store n segments (obs [n, length, obs_dim], ...; validation [n] bool), overwriting the oldest."""
        n = obs.shape[0]
        if obs.shape[1] != self.length:
            raise ValueError(f"TrajectoryBuffer.add got segments of length {obs.shape[1]} for a buffer of segments "
                             f"of length {self.length}; store segments of {self.length} steps, or create the buffer "
                             f"with length={obs.shape[1]}.")
        if n > self.capacity:
            raise ValueError(f"TrajectoryBuffer.add got {n} segments for a buffer of {self.capacity}; raise the "
                             "buffer size.")
        slots = (self.position + jnp.arange(n)) % self.capacity
        return TrajectoryBuffer(self.obs.at[slots].set(obs.astype(self.obs.dtype)),
                                self.action.at[slots].set(jnp.reshape(action, self.action[slots].shape)
                                                          .astype(self.action.dtype)),
                                self.next_obs.at[slots].set(next_obs.astype(self.obs.dtype)),
                                self.done.at[slots].set(done), self.validation.at[slots].set(validation),
                                self.filled.at[slots].set(True), (self.position + n) % self.capacity)

    def transitions(self):
        """Flat rows (obs, action, next_obs) [capacity * length, .] and the segment of each row."""
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        segment = jnp.repeat(jnp.arange(self.capacity), self.length)
        return flat(self.obs), flat(self.action), flat(self.next_obs), segment


def validation_split(key: jax.Array, n_segments: int, fraction: float) -> jax.Array:
    """[n_segments] bool: which of a batch of new segments go to validation; round(n * fraction) of them, at least
    one and at most n - 1 (both splits must be non-empty from the first fit on)."""
    if n_segments < 2:
        raise ValueError(f"a trajectory-level validation split needs at least 2 segments per collection, got "
                         f"{n_segments}; collect with more parallel environments (--n-envs >= 2).")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}.")
    n_validation = min(max(1, round(n_segments * fraction)), n_segments - 1)
    return jax.random.permutation(key, n_segments) < n_validation


def _masked_stats(values: jax.Array, weights: jax.Array):
    count = jnp.maximum(jnp.sum(weights), 1.0)
    mean = jnp.sum(weights[:, None] * values, 0) / count
    std = jnp.sqrt(jnp.sum(weights[:, None] * (values - mean) ** 2, 0) / count)
    return mean, jnp.where(std > 1e-6, std, 1.0)


def normalise(model: DeterministicEnsemble, buffer: TrajectoryBuffer, weights: jax.Array) -> DeterministicEnsemble:
    """The model with input and state-change statistics of the buffer rows where weights [rows] > 0."""
    obs, action, next_obs, _ = buffer.transitions()
    in_mean, in_std = _masked_stats(jnp.concatenate([obs, action], 1), weights)
    delta_mean, delta_std = _masked_stats(next_obs - obs, weights)
    return eqx.tree_at(lambda m: (m.input_mean, m.input_std, m.delta_mean, m.delta_std), model,
                       (in_mean, in_std, delta_mean, delta_std))


def _where_member(mask, new, old):
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


class OneStepFit(eqx.Module):
    """What `fit_one_step` did, as arrays (so it can leave a jitted, vmapped chunk as metrics)."""

    epochs: jax.Array
    """Epochs run."""
    validation_loss: jax.Array
    """[n_members] validation loss of the parameters each member kept (its best epoch)."""
    history: jax.Array
    """[max_epochs, n_members] validation loss after each epoch (NaN after the stop)."""
    initial_validation_loss: jax.Array
    """[n_members] validation loss of the parameters the fit started from (kept where no epoch beat them)."""


def fit_one_step(model: DeterministicEnsemble, buffer: TrajectoryBuffer, key: jax.Array, *, learning_rate: float,
                 batch_size: int, max_epochs: int, patience: int) -> tuple[DeterministicEnsemble, OneStepFit]:
    """ME-TRPO's model fit, jittable: squared-L2 loss on the normalised change, Adam, early stopping on the
    trajectory-level validation split.

    Continues from `model`'s parameters with fresh statistics of the training split and a fresh Adam. An epoch is
    ceil(n_train / batch_size) steps; every member draws its own minibatches (with replacement) from the training
    rows, so members differ by initialisation and data order (ME-TRPO's recipe; no bootstrap). After each epoch
    every member's validation loss is measured; each member keeps the parameters of its best epoch (or its
    starting parameters, if no epoch beat them: a refit never makes a member worse on validation), and fitting
    stops once no member has improved for `patience` epochs, or after `max_epochs`.
    """
    obs, action, next_obs, segment = buffer.transitions()
    rows = obs.shape[0]
    used = buffer.filled[segment]
    train_w = (used & ~buffer.validation[segment]).astype(obs.dtype)
    valid_w = (used & buffer.validation[segment]).astype(obs.dtype)
    model = normalise(model, buffer, train_w)
    n_train = jnp.sum(train_w).astype(jnp.int32)
    key_order, key_steps = jax.random.split(key)
    # The training rows first, in random order: uniform draws below n_train pick uniformly among them.
    order = jnp.argsort(jnp.where(train_w > 0, jax.random.uniform(key_order, (rows,)), 2.0))
    steps_per_epoch = (n_train + batch_size - 1) // batch_size
    n_members = model.n_members
    optimizer = optax.adam(learning_rate)

    def member_loss(net, idx, weights=None):
        return one_step_loss(model, net, obs[idx], action[idx], next_obs[idx], weights)

    def validation_losses(members):
        return jax.vmap(lambda net: one_step_loss(model, net, obs, action, next_obs, valid_w))(members)

    def train_step(i, carry):
        members, opt_state, key = carry
        key, key_batch = jax.random.split(key)
        picks = jax.random.randint(key_batch, (n_members, batch_size), 0, jnp.maximum(n_train, 1))
        idx = order[picks]
        grads = jax.vmap(jax.grad(member_loss))(members, idx)
        updates, opt_state = optimizer.update(grads, opt_state, members)
        return optax.apply_updates(members, updates), opt_state, key

    def epoch(carry):
        members, opt_state, best, best_loss, history, since, count = carry
        members, opt_state, _ = jax.lax.fori_loop(0, steps_per_epoch, train_step,
                                                  (members, opt_state, jax.random.fold_in(key_steps, count)))
        loss = validation_losses(members)
        improved = loss < best_loss
        best = _where_member(improved, members, best)
        best_loss = jnp.where(improved, loss, best_loss)
        history = history.at[count].set(loss)
        return (members, opt_state, best, best_loss, history, jnp.where(jnp.any(improved), 0, since + 1),
                count + 1)

    def keep_going(carry):
        *_, since, count = carry
        return (n_train > 0) & (count < max_epochs) & (since < patience)

    members = model.members
    dtype = obs.dtype
    initial_loss = validation_losses(members)
    init = (members, optimizer.init(members), members, initial_loss,
            jnp.full((max_epochs, n_members), jnp.nan, dtype), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    _, _, best, best_loss, history, _, epochs = jax.lax.while_loop(keep_going, epoch, init)
    return eqx.tree_at(lambda m: m.members, model, best), OneStepFit(epochs, best_loss, history, initial_loss)


def window_starts(buffer: TrajectoryBuffer, horizon: int) -> jax.Array:
    """[capacity, length - horizon + 1] bool: where an H-step window of real transitions may start (a filled
    segment, and no episode end among its first H - 1 transitions; the last may end an episode, its next_obs is
    the true one)."""
    if horizon > buffer.length:
        raise ValueError(f"the multi-step horizon ({horizon}) exceeds the stored segment length ({buffer.length}); "
                         "lower the horizon or collect longer segments.")
    n_starts = buffer.length - horizon + 1
    ends = buffer.done.astype(jnp.int32)
    # crossings[s, t] = number of episode ends among transitions t .. t + horizon - 2
    cumulative = jnp.concatenate([jnp.zeros((buffer.capacity, 1), jnp.int32), jnp.cumsum(ends, axis=1)], 1)
    crossings = cumulative[:, horizon - 1: horizon - 1 + n_starts] - cumulative[:, :n_starts]
    return buffer.filled[:, None] & (crossings == 0)


def member_multi_step_loss(model: DeterministicEnsemble, net: MLP, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """`multi_step_loss` of one member on one window (obs [H + 1, obs_dim], actions [H, action_dim]), scaled by
    the model's state-change std."""
    return multi_step_loss(lambda s, a: member_step(model, net, s, a), obs, actions, model.delta_std)


def multi_step_optimizer(learning_rate: float, weight_decay: float, max_grad_norm: float):
    """SLBO's model optimiser for ONE member: gradient clipping by the member's global norm, an L2 penalty (decay *
    w, added to the gradient before Adam, i.e. a penalty, not AdamW's decoupled decay) and Adam.
    `train_multi_step` applies it to every member separately (its state from `init_multi_step_state`)."""
    parts = [optax.clip_by_global_norm(max_grad_norm)] if math.isfinite(max_grad_norm) else []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    return optax.chain(*parts, optax.adam(learning_rate))


def init_multi_step_state(optimizer, model: DeterministicEnsemble):
    """The optimiser state of every member, stacked [n_members, ...], for `train_multi_step`."""
    return jax.vmap(optimizer.init)(model.members)


def train_multi_step(model: DeterministicEnsemble, opt_state, optimizer, buffer: TrajectoryBuffer, key: jax.Array,
                     *, horizon: int, n_steps: int, batch_size: int):
    """SLBO's model update: `n_steps` Adam steps of every member on minibatches of H-step windows drawn uniformly
    (with replacement) from every stored segment. The normalisation must already be set (`normalise`).
    `opt_state` is per member (`init_multi_step_state`): the optimiser runs once per member, so a member's
    gradient is clipped by its own norm and a non-finite loss skips only that member's step, so no member's
    training depends on another's parameters (clipping the stacked gradients by one global norm made it so).
    Returns (model, opt_state, mean loss over the steps)."""
    starts = window_starts(buffer, horizon)
    flat = starts.reshape(-1)
    n_valid = jnp.sum(flat).astype(jnp.int32)
    key_order, key_steps = jax.random.split(key)
    order = jnp.argsort(jnp.where(flat, jax.random.uniform(key_order, flat.shape), 2.0))
    n_starts = starts.shape[1]
    offsets = jnp.arange(horizon + 1)
    n_members = model.n_members

    def window(index):
        segment, t = index // n_starts, index % n_starts
        obs = buffer.obs[segment, t + offsets[:-1]]
        obs = jnp.concatenate([obs, buffer.next_obs[segment, t + horizon - 1][None]], 0)
        return obs, buffer.action[segment, t + offsets[:-1]]

    def batch_loss(net, indices):
        obs, actions = jax.vmap(window)(indices)
        return jnp.mean(jax.vmap(lambda o, a: member_multi_step_loss(model, net, o, a))(obs, actions))

    def step(carry, key):
        members, opt_state = carry
        picks = jax.random.randint(key, (n_members, batch_size), 0, jnp.maximum(n_valid, 1))
        losses, grads = jax.vmap(jax.value_and_grad(batch_loss))(members, order[picks])
        updates, new_opt_state = jax.vmap(optimizer.update)(grads, opt_state, members)
        new_members = optax.apply_updates(members, updates)
        ok = (n_valid > 0) & jnp.isfinite(losses)
        return (_where_member(ok, new_members, members), _where_member(ok, new_opt_state, opt_state)), jnp.mean(losses)

    (members, opt_state), losses = jax.lax.scan(step, (model.members, opt_state), jax.random.split(key_steps, n_steps))
    return eqx.tree_at(lambda m: m.members, model, members), opt_state, jnp.mean(losses)


__all__ = [
    "DeterministicEnsemble", "init_deterministic_ensemble", "member_step", "predict", "predict_all", "safe_norm",
    "multi_step_loss", "one_step_loss", "member_multi_step_loss", "TrajectoryBuffer", "validation_split",
    "normalise", "OneStepFit", "fit_one_step", "window_starts", "multi_step_optimizer", "init_multi_step_state",
    "train_multi_step",
]
