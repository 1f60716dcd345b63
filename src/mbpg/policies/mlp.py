"""Neural policies for the deep-RL algorithms: categorical (discrete actions), Gaussian (PPO/TRPO on continuous
actions) and tanh-squashed Gaussian (SAC).

Like the tabular and linear policies, each class is a stateless, hashable descriptor whose methods take the
parameters first and act on ONE observation; the parameters are an Equinox module made by `init(key)`, so
`eqx.filter_grad` differentiates them and `jax.vmap` batches over observations, seeds or ensembles.

Initialisation (the choice the on-policy literature found to matter, Andrychowicz et al. 2021, "What matters in
on-policy RL"): orthogonal hidden layers with gain sqrt(2), zero biases, and an output layer scaled by 0.01 so
that a fresh policy is close to uniform (categorical) or centred with the initial std (Gaussian) in every state,
instead of committing to arbitrary actions before it has seen a reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.distributions import categorical

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,
}

_LOG_2PI = math.log(2.0 * math.pi)


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}.")
    return activation


def _check_hidden(hidden) -> tuple[int, ...]:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if any(int(h) != h or h < 1 for h in hidden):
        raise ValueError(f"hidden layer widths must be positive integers, got {hidden}; pass e.g. hidden=(64, 64).")
    return tuple(int(h) for h in hidden)


def _check_size(name: str, value) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_observation(obs, obs_dim: int, who: str) -> jax.Array:
    """Fail early, at trace time, on a batch passed where one observation belongs (a silent broadcast would
    otherwise give a wrong-shaped log-prob deep inside a loss)."""
    obs = jnp.asarray(obs)
    if obs.shape != (obs_dim,):
        raise ValueError(
            f"{who} acts on ONE observation of shape ({obs_dim},), got shape {obs.shape}; "
            "vmap over a batch, e.g. jax.vmap(lambda o: policy.mode(params, o))(observations)."
        )
    return obs


def check_action(action, action_dim: int, who: str) -> jax.Array:
    """The action-side twin of `check_observation`: a batch of actions (or one of the wrong size) broadcast
    silently into a log-density that is none of theirs. A scalar is taken for a one-dimensional action."""
    action = jnp.asarray(action)
    if action.shape != (action_dim,) and not (action.shape == () and action_dim == 1):
        raise ValueError(
            f"{who} scores ONE action of shape ({action_dim},), got shape {action.shape}; "
            "vmap over a batch, e.g. jax.vmap(lambda o, a: policy.log_prob(params, o, a))(observations, actions)."
        )
    return action.reshape(action_dim)


def _orthogonal_linear(in_size: int, out_size: int, scale: float, key: jax.Array) -> eqx.nn.Linear:
    layer = eqx.nn.Linear(in_size, out_size, key=key)
    weight = jax.nn.initializers.orthogonal(scale)(key, layer.weight.shape, layer.weight.dtype)
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (weight, jnp.zeros_like(layer.bias)))


class MLP(eqx.Module):
    """A multilayer perceptron with per-layer widths (eqx.nn.MLP allows one width only) and orthogonal init.

    The activation is stored by name, so the module holds no function leaves and every leaf is an array:
    `jax.tree.map` over parameters (Polyak averaging, flattening for conjugate gradients) needs no filtering.
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden: Sequence[int],
        key: jax.Array,
        activation: str = "tanh",
        output_scale: float = 1.0,
        hidden_scale: float = math.sqrt(2.0),
    ):
        sizes = (_check_size("in_size", in_size), *_check_hidden(hidden), _check_size("out_size", out_size))
        keys = jax.random.split(key, len(sizes) - 1)
        scales = [hidden_scale] * (len(sizes) - 2) + [output_scale]
        self.layers = tuple(
            _orthogonal_linear(n_in, n_out, scale, k)
            for n_in, n_out, scale, k in zip(sizes[:-1], sizes[1:], scales, keys)
        )
        self.activation = _check_activation(activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


def build_mlp(
    in_size: int,
    out_size: int,
    hidden: Sequence[int],
    key: jax.Array,
    activation: str = "tanh",
    output_scale: float = 1.0,
) -> MLP:
    """`MLP(...)` compiled once per architecture: built eagerly, every orthogonal initialiser (a QR per layer)
    and random split is compiled op by op, about ten times slower for a fresh architecture. Works under vmap
    (ensembles: jax.vmap(lambda k: build_mlp(..., k))(keys))."""
    return _build_mlp_jit(int(in_size), int(out_size), _check_hidden(hidden), key, activation, float(output_scale))


_build_mlp_jit = eqx.filter_jit(MLP)


# --------------------------------------------------------------------------------------------------------------
# Categorical


class CategoricalMLPPolicy(eqx.Module):
    """pi(a|s) = softmax(f_theta(s))_a over `n_actions` discrete actions; parameters are an `MLP`."""

    obs_dim: int = eqx.field(static=True)
    n_actions: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh"):
        self.obs_dim = _check_size("obs_dim", obs_dim)
        self.n_actions = _check_size("n_actions", n_actions)
        self.hidden = _check_hidden(hidden)
        self.activation = _check_activation(activation)

    def init(self, key: jax.Array) -> MLP:
        return build_mlp(self.obs_dim, self.n_actions, self.hidden, key, self.activation, output_scale=0.01)

    def logits(self, params: MLP, obs: jax.Array) -> jax.Array:
        return params(check_observation(obs, self.obs_dim, "CategoricalMLPPolicy"))

    def probs(self, params: MLP, obs: jax.Array) -> jax.Array:
        return jax.nn.softmax(self.logits(params, obs))

    def sample(self, params: MLP, obs: jax.Array, key: jax.Array) -> jax.Array:
        return categorical(key, self.probs(params, obs))

    def log_prob(self, params: MLP, obs: jax.Array, action: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self.logits(params, obs))[action]

    def entropy(self, params: MLP, obs: jax.Array) -> jax.Array:
        # From log_softmax rather than log(probs): a probability that underflows to 0 contributes 0, not nan.
        log_p = jax.nn.log_softmax(self.logits(params, obs))
        return -jnp.sum(jnp.exp(log_p) * log_p)

    def mode(self, params: MLP, obs: jax.Array) -> jax.Array:
        return jnp.argmax(self.logits(params, obs))

    def kl(self, params: MLP, other_params: MLP, obs: jax.Array) -> jax.Array:
        """KL(pi_params(.|s) || pi_other(.|s)) in closed form: the trust-region constraint of TRPO."""
        log_p = jax.nn.log_softmax(self.logits(params, obs))
        log_q = jax.nn.log_softmax(self.logits(other_params, obs))
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q))


# --------------------------------------------------------------------------------------------------------------
# Gaussian with a state-independent log-std


class GaussianParams(eqx.Module):
    """The mean network and one learned log-std per action dimension.

    A state-independent std is the PPO/TRPO default: it cannot collapse in rarely visited states, and the
    entropy is a parameter the optimiser sees directly.
    """

    mean: MLP
    log_std: jax.Array


class GaussianMLPPolicy(eqx.Module):
    """a = mu_theta(s) + exp(log_std) * e, e ~ N(0, I), unbounded: clip to the action space in the environment
    wrapper, never here (clipping inside would make log_prob the density of a different action)."""

    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    log_std_init: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (64, 64),
        log_std_init: float = 0.0,
        activation: str = "tanh",
    ):
        self.obs_dim = _check_size("obs_dim", obs_dim)
        self.action_dim = _check_size("action_dim", action_dim)
        self.hidden = _check_hidden(hidden)
        self.log_std_init = float(log_std_init)
        self.activation = _check_activation(activation)

    def init(self, key: jax.Array) -> GaussianParams:
        mean = build_mlp(self.obs_dim, self.action_dim, self.hidden, key, self.activation, output_scale=0.01)
        log_std = jnp.full((self.action_dim,), self.log_std_init, mean.layers[-1].weight.dtype)
        return GaussianParams(mean, log_std)

    def mean(self, params: GaussianParams, obs: jax.Array) -> jax.Array:
        return params.mean(check_observation(obs, self.obs_dim, "GaussianMLPPolicy"))

    def std(self, params: GaussianParams) -> jax.Array:
        return jnp.exp(params.log_std)

    def reparameterised(self, params: GaussianParams, obs: jax.Array, noise: jax.Array) -> jax.Array:
        return self.mean(params, obs) + jnp.exp(params.log_std) * noise

    def infer_noise(self, params: GaussianParams, obs: jax.Array, action: jax.Array) -> jax.Array:
        """The noise that makes `reparameterised` reproduce `action` (SVG explains real actions this way)."""
        action = check_action(action, self.action_dim, "GaussianMLPPolicy")
        return (action - self.mean(params, obs)) * jnp.exp(-params.log_std)

    def sample(self, params: GaussianParams, obs: jax.Array, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, (self.action_dim,), params.log_std.dtype)
        return self.reparameterised(params, obs, noise)

    def log_prob(self, params: GaussianParams, obs: jax.Array, action: jax.Array) -> jax.Array:
        z = self.infer_noise(params, obs, action)
        return -0.5 * jnp.sum(z * z) - jnp.sum(params.log_std) - 0.5 * self.action_dim * _LOG_2PI

    def entropy(self, params: GaussianParams, obs: jax.Array | None = None) -> jax.Array:
        """The same in every state (the std does not depend on it); `obs` is accepted so that callers can treat
        every policy alike."""
        return jnp.sum(params.log_std) + 0.5 * self.action_dim * (1.0 + _LOG_2PI)

    def mode(self, params: GaussianParams, obs: jax.Array) -> jax.Array:
        return self.mean(params, obs)

    def kl(self, params: GaussianParams, other_params: GaussianParams, obs: jax.Array) -> jax.Array:
        """KL(pi_params(.|s) || pi_other(.|s)) between diagonal Gaussians, in closed form."""
        mean_p, mean_q = self.mean(params, obs), self.mean(other_params, obs)
        log_ratio = other_params.log_std - params.log_std
        var_ratio = jnp.exp(-2.0 * log_ratio)  # sigma_p^2 / sigma_q^2
        z = (mean_p - mean_q) * jnp.exp(-other_params.log_std)
        return jnp.sum(log_ratio + 0.5 * (var_ratio + z * z - 1.0))


# --------------------------------------------------------------------------------------------------------------
# Tanh-squashed Gaussian (SAC)


def _as_bounds(value, action_dim: int, name: str) -> tuple[float, ...]:
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    if flat.size == 1:
        flat = np.repeat(flat, action_dim)
    if flat.size != action_dim:
        raise ValueError(f"{name} has {flat.size} entries for action_dim={action_dim}; pass one per dimension "
                         "or a single number for all.")
    values = tuple(float(v) for v in flat)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}; a tanh-squashed policy needs a bounded action "
                         "space (use GaussianMLPPolicy for unbounded actions).")
    return values


def log_one_minus_tanh_squared(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), finite for every u.

    The naive form rounds tanh(u)^2 to 1 from |u| ~ 9 in float32 and returns -inf; this identity never forms
    the difference.
    """
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


class TanhGaussianMLPPolicy(eqx.Module):
    """a = c + h * tanh(u), u ~ N(mu_theta(s), sigma_theta(s)^2), with c, h the centre and half-width of
    [action_low, action_high]: the SAC actor (Haarnoja et al. 2018).

    The network outputs the mean and the log-std of u for every state (the entropy bonus needs a state-dependent
    std). The log-std is clipped to [log_std_min, log_std_max] as in the original SAC code: the defaults (-20, 2)
    only stop numerical runaways and, unlike a tanh rescaling of the log-std onto those bounds, leave the
    initial std at exp(0) = 1 rather than exp(-9).
    """

    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    action_low: tuple[float, ...] = eqx.field(static=True)
    action_high: tuple[float, ...] = eqx.field(static=True)
    log_std_min: float = eqx.field(static=True)
    log_std_max: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        activation: str = "relu",
    ):
        self.obs_dim = _check_size("obs_dim", obs_dim)
        self.action_dim = _check_size("action_dim", action_dim)
        self.hidden = _check_hidden(hidden)
        self.action_low = _as_bounds(action_low, self.action_dim, "action_low")
        self.action_high = _as_bounds(action_high, self.action_dim, "action_high")
        if not all(lo < hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(f"need action_low < action_high in every dimension, got {self.action_low} and "
                             f"{self.action_high}; swap them or fix the action space.")
        if not log_std_min < log_std_max:
            raise ValueError(f"need log_std_min < log_std_max, got ({log_std_min}, {log_std_max}).")
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.activation = _check_activation(activation)

    def init(self, key: jax.Array) -> MLP:
        return build_mlp(self.obs_dim, 2 * self.action_dim, self.hidden, key, self.activation, output_scale=0.01)

    def _centre_half(self, dtype):
        low = jnp.asarray(self.action_low, dtype)
        high = jnp.asarray(self.action_high, dtype)
        return 0.5 * (high + low), 0.5 * (high - low)

    def mean_log_std(self, params: MLP, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-std of the pre-squash Gaussian u."""
        out = params(check_observation(obs, self.obs_dim, "TanhGaussianMLPPolicy"))
        mean, log_std = out[: self.action_dim], out[self.action_dim:]
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)

    def _log_prob_pre_squash(self, u, mean, log_std):
        z = (u - mean) * jnp.exp(-log_std)
        _, half = self._centre_half(u.dtype)
        gaussian = -0.5 * jnp.sum(z * z) - jnp.sum(log_std) - 0.5 * self.action_dim * _LOG_2PI
        # Change of variables a = c + h tanh(u): |da/du| = h (1 - tanh(u)^2) in each dimension.
        return gaussian - jnp.sum(log_one_minus_tanh_squared(u)) - jnp.sum(jnp.log(half))

    def reparameterised(self, params: MLP, obs: jax.Array, noise: jax.Array) -> jax.Array:
        return self.reparameterised_with_log_prob(params, obs, noise)[0]

    def reparameterised_with_log_prob(
        self, params: MLP, obs: jax.Array, noise: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Action and log-density from given noise; both differentiable in params (SAC's actor loss)."""
        mean, log_std = self.mean_log_std(params, obs)
        u = mean + jnp.exp(log_std) * noise
        centre, half = self._centre_half(u.dtype)
        return centre + half * jnp.tanh(u), self._log_prob_pre_squash(u, mean, log_std)

    def sample_with_log_prob(self, params: MLP, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The log-density comes from the pre-squash sample u, not from inverting the action: exact even where
        tanh(u) has rounded to +-1 and the action alone no longer says what u was."""
        noise = jax.random.normal(key, (self.action_dim,), params.layers[-1].weight.dtype)
        return self.reparameterised_with_log_prob(params, obs, noise)

    def sample(self, params: MLP, obs: jax.Array, key: jax.Array) -> jax.Array:
        return self.sample_with_log_prob(params, obs, key)[0]

    def _pre_squash(self, action: jax.Array, dtype) -> jax.Array:
        # Clip strictly inside (-1, 1) so that actions on the boundary (tanh rounded to +-1, or an action clipped
        # by the environment) give a large finite u instead of an infinite one. The cost: every |u| beyond the
        # clip (6.94 in float32) is read back as that value, so densities of saturated actions are those of the
        # clip point, not of the sample (SVG's importance weights share that limit; see its module docstring).
        action = check_action(action, self.action_dim, "TanhGaussianMLPPolicy")
        centre, half = self._centre_half(dtype)
        bound = 1.0 - jnp.finfo(dtype).eps * 16
        y = jnp.clip((action.astype(dtype) - centre) / half, -bound, bound)
        return jnp.arctanh(y)

    def infer_noise(self, params: MLP, obs: jax.Array, action: jax.Array) -> jax.Array:
        mean, log_std = self.mean_log_std(params, obs)
        return (self._pre_squash(action, mean.dtype) - mean) * jnp.exp(-log_std)

    def log_prob(self, params: MLP, obs: jax.Array, action: jax.Array) -> jax.Array:
        """log pi(a|s) for an action inside [low, high], by inverting the squash (atanh, clipped at the boundary:
        an action outside the box, of density 0, is scored as the boundary point).

        Prefer `sample_with_log_prob` for the policy's own samples: inverting tanh loses precision as |a| nears
        the bounds.
        """
        mean, log_std = self.mean_log_std(params, obs)
        return self._log_prob_pre_squash(self._pre_squash(action, mean.dtype), mean, log_std)

    def mode(self, params: MLP, obs: jax.Array) -> jax.Array:
        """The squashed mean: the deterministic action for evaluation (not the density's mode, which tanh moves)."""
        mean, _ = self.mean_log_std(params, obs)
        centre, half = self._centre_half(mean.dtype)
        return centre + half * jnp.tanh(mean)
