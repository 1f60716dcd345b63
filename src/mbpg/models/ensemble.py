"""Probabilistic ensembles of Gaussian MLPs: the learned dynamics that MBPO, ME-TRPO, SLBO and SVG share.

Why this form (PETS, Chua et al. 2018; MBPO, Janner et al. 2019): each member predicts a Gaussian over the
*change* of the observation and the reward, so it can say where the data are noisy (aleatoric), and the
members, trained from different initialisations on different bootstrap resamples, disagree where data are
scarce (epistemic). Predicting s' - s instead of s' keeps the targets small and centred, and normalising
inputs and targets with statistics of the training split lets one learning rate and one weight decay serve
every task.

The members' parameters are stacked on a leading axis and evaluated with `jax.vmap`: one compiled program runs
the whole ensemble, and `jax.tree.map(lambda p: p[i], model.members)` is member i.

Layout of every predicted vector: `[next_obs (obs_dim entries), reward (1 entry, when predict_reward)]`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from gymnasium import spaces

from mbpg.keys import side_key
from mbpg.policies.mlp import ACTIVATIONS, MLP, build_mlp

_LOG_2PI = math.log(2.0 * math.pi)

# MBPO's per-layer decays for its 4 x 200 network (input layer first, output layer last).
MBPO_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Architecture and training of a probabilistic ensemble; the defaults are MBPO's (Janner et al. 2019)."""

    n_members: int = 7
    """Networks trained; more members give a better estimate of where the model does not know."""
    n_elites: int = 5
    """Members with the lowest holdout MSE that `predict` draws from: the worst fits are trained but not used."""
    hidden: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden widths of each member."""
    activation: str = "silu"
    """Hidden activation by name (see mbpg.policies.mlp.ACTIVATIONS); MBPO's swish is silu."""
    learning_rate: float = 1e-3
    """Adam step size."""
    weight_decay: float | tuple[float, ...] = 5e-5
    """L2 penalty `decay * sum(W^2) / 2` on the weight matrices (not biases) added to the loss, as in PETS/MBPO
    (a penalty, not AdamW's decoupled decay). A float applies to every layer; a tuple gives one value per
    layer, input layer first and output layer last (len(hidden) + 1 entries): `MBPO_WEIGHT_DECAY` is MBPO's
    (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4) for the default four hidden layers. It keeps the mean from
    extrapolating wildly away from the data, which is where model rollouts go."""
    batch_size: int = 256
    """Transitions per member per gradient step (capped at the training-split size)."""
    holdout_fraction: float = 0.2
    """Share of the data held out (never trained on) for early stopping and elite selection."""
    max_holdout: int = 5000
    """Cap on the holdout size (MBPO's), so that per-epoch evaluation stays cheap as the buffer grows."""
    max_epochs: int = 200
    """Upper bound on passes over the training split."""
    patience: int = 5
    """Stop once no member has improved its holdout MSE by more than `min_improvement` for this many epochs.
    Each member keeps the parameters of its best holdout MSE, not its last."""
    min_improvement: float = 0.01
    """Relative holdout-MSE decrease that counts as progress for `patience` (MBPO's 1%): smaller gains still
    update a member's kept parameters but no longer keep training alive."""
    predict_reward: bool = True
    """Learn the reward as an extra output. Turn off when the reward is a known function of (s, a, s') and pass
    it to `ModelEnv` instead: a known reward is exact and leaves the network to the dynamics."""
    init_max_log_var: float = 0.5
    """Starting upper soft bound of the (normalised) log-variance (PETS' value)."""
    init_min_log_var: float = -10.0
    """Starting lower soft bound of the (normalised) log-variance (PETS' value)."""
    log_var_bound_penalty: float = 0.01
    """Weight of `sum(max_log_var) - sum(min_log_var)` in the loss (PETS): the bounds are learned, and without
    this pull they would drift apart until they no longer bound anything."""
    output_scale: float = 0.1
    """Gain of each member's orthogonally initialised output layer: small, so that a fresh member predicts
    roughly the mean change with roughly the data's variance instead of an arbitrary offset."""

    def __post_init__(self):
        for name in ("n_members", "n_elites", "batch_size", "max_holdout", "max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"EnsembleConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_elites > self.n_members:
            raise ValueError(f"n_elites ({self.n_elites}) cannot exceed n_members ({self.n_members}); lower "
                             "n_elites or train more members.")
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        if not hidden or any(int(h) != h or h < 1 for h in hidden):
            raise ValueError(f"hidden must be positive layer widths, got {self.hidden}; e.g. hidden=(200, 200).")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; use one of {sorted(ACTIVATIONS)}.")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}: early stopping "
                             "and elite selection need held-out data.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not self.init_min_log_var < self.init_max_log_var:
            raise ValueError(f"need init_min_log_var < init_max_log_var, got ({self.init_min_log_var}, "
                             f"{self.init_max_log_var}).")
        if self.min_improvement < 0 or self.log_var_bound_penalty < 0:
            raise ValueError("min_improvement and log_var_bound_penalty must be >= 0.")
        if not isinstance(self.weight_decay, (int, float)):
            object.__setattr__(self, "weight_decay", tuple(float(w) for w in self.weight_decay))
        self.layer_weight_decay()  # validates the length

    def layer_weight_decay(self) -> tuple[float, ...]:
        """One decay per linear layer, input layer first."""
        n_layers = len(self.hidden) + 1
        if isinstance(self.weight_decay, (int, float)):
            decays = (float(self.weight_decay),) * n_layers
        else:
            decays = tuple(self.weight_decay)
        if len(decays) != n_layers or any(d < 0 for d in decays):
            raise ValueError(f"weight_decay needs one non-negative value per layer ({n_layers} for hidden="
                             f"{self.hidden}) or a single float; got {self.weight_decay}.")
        return decays


class GaussianMember(eqx.Module):
    """One member: an MLP on normalised [s, a] giving the mean and raw log-variance of the normalised target,
    and its learned log-variance bounds.

    The bounds are per member (PETS shares one pair across the ensemble) so that each member's best parameters
    can be kept on their own during early stopping.
    """

    net: MLP
    max_log_var: jax.Array
    min_log_var: jax.Array

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.net(x)
        size = out.shape[-1] // 2
        mean, raw = out[:size], out[size:]
        # PETS' soft clamp: smooth, so gradients still reach inputs that sit at a bound, and the bounds learn.
        log_var = self.max_log_var - jax.nn.softplus(self.max_log_var - raw)
        log_var = self.min_log_var + jax.nn.softplus(log_var - self.min_log_var)
        return mean, log_var


class GaussianEnsemble(eqx.Module):
    """Stacked members with the normalisation and elites of the fit that produced them.

    The statistics travel with the parameters because the networks only make sense in the units they were
    trained in; a later fit recomputes both together.
    """

    members: GaussianMember  # every array leaf has a leading axis of n_members
    input_mean: jax.Array
    input_std: jax.Array
    target_mean: jax.Array
    target_std: jax.Array
    elites: jax.Array  # int [n_elites]
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    config: EnsembleConfig = eqx.field(static=True)

    @property
    def target_dim(self) -> int:
        return self.obs_dim + (1 if self.config.predict_reward else 0)

    @property
    def n_members(self) -> int:
        return self.config.n_members

    def member(self, index: int) -> GaussianMember:
        return jax.tree.map(lambda p: p[index], self.members)


def init_ensemble(config: EnsembleConfig, obs_dim: int, action_dim: int, key: jax.Array) -> GaussianEnsemble:
    """A fresh ensemble with identity normalisation (fit replaces it) and the first n_elites members as elites."""
    if int(obs_dim) != obs_dim or obs_dim < 1 or int(action_dim) != action_dim or action_dim < 1:
        raise ValueError(f"obs_dim and action_dim must be positive integers, got {obs_dim}, {action_dim}.")
    obs_dim, action_dim = int(obs_dim), int(action_dim)
    target_dim = obs_dim + (1 if config.predict_reward else 0)
    in_size = obs_dim + action_dim

    def member(key):
        net = build_mlp(in_size, 2 * target_dim, config.hidden, key, config.activation, config.output_scale)
        dtype = net.layers[-1].weight.dtype
        return GaussianMember(net, jnp.full((target_dim,), config.init_max_log_var, dtype),
                              jnp.full((target_dim,), config.init_min_log_var, dtype))

    # Members are built one by one and stacked, not under vmap: on the 2-core CPU here jax 0.10.2 hangs (0% CPU,
    # inside XLA) on a vmapped orthogonal initialisation (batched QR) of four or more 200-wide layers, which is
    # MBPO's default architecture. build_mlp is compiled once per architecture, so the loop costs little.
    built = [member(k) for k in jax.random.split(key, config.n_members)]
    members = jax.tree.map(lambda *leaves: jnp.stack(leaves), *built)
    dtype = members.max_log_var.dtype
    return GaussianEnsemble(
        members,
        jnp.zeros(in_size, dtype), jnp.ones(in_size, dtype),
        jnp.zeros(target_dim, dtype), jnp.ones(target_dim, dtype),
        jnp.arange(config.n_elites, dtype=jnp.int32), obs_dim, action_dim, config,
    )


# --------------------------------------------------------------------------------------------------------------
# Prediction


def _inputs(model: GaussianEnsemble, obs, action) -> tuple[jax.Array, jax.Array, jax.Array]:
    obs = jnp.asarray(obs, model.input_mean.dtype)
    if obs.shape != (model.obs_dim,):
        raise ValueError(f"the ensemble predicts from ONE observation of shape ({model.obs_dim},), got "
                         f"{obs.shape}; vmap over a batch, e.g. jax.vmap(predict, in_axes=(None, 0, 0, 0)).")
    action = jnp.asarray(action, obs.dtype)
    if action.size != model.action_dim:
        raise ValueError(f"the ensemble takes ONE action with {model.action_dim} entries, got shape "
                         f"{action.shape}; vmap over a batch.")
    action = jnp.reshape(action, (model.action_dim,))
    x = (jnp.concatenate([obs, action]) - model.input_mean) / model.input_std
    return obs, action, x


def _denormalise(model: GaussianEnsemble, obs, mean, log_var):
    """Normalised (delta, reward) mean/log-variance -> [next_obs, reward] mean and variance in data units."""
    mean = mean * model.target_std + model.target_mean
    mean = mean.at[..., : model.obs_dim].add(obs)
    return mean, jnp.exp(log_var) * model.target_std**2


def predict_all(model: GaussianEnsemble, obs, action) -> tuple[jax.Array, jax.Array]:
    """Every member's Gaussian for ONE (obs, action): means and variances, each [n_members, target_dim] in the
    layout [next_obs, reward]. For disagreement-based uncertainty (ME-TRPO's validation, MOPO-style penalties)
    and for averaging over members."""
    obs, _, x = _inputs(model, obs, action)
    mean, log_var = jax.vmap(lambda m: m(x))(model.members)
    return _denormalise(model, obs, mean, log_var)


def predict(model: GaussianEnsemble, obs, action, key: jax.Array, deterministic: bool = False):
    """One model step from ONE (obs, action): `(next_obs, reward)`, reward None without reward prediction.

    A random elite is drawn per call (PETS' TS1 / MBPO propagation): along a rollout the member changes every
    step, so a policy cannot exploit one member's particular error. `deterministic` (a Python bool) returns that
    elite's mean instead of a sample; the elite is still random, as in MBPO. Only the elites are evaluated (all
    of them, then one is selected): under vmap this costs n_elites forward passes per sample but never gathers a
    copy of the parameters per sample.
    """
    obs, _, x = _inputs(model, obs, action)
    key_member, key_noise = jax.random.split(key)
    elites = jax.tree.map(lambda p: p[model.elites], model.members)
    means, log_vars = jax.vmap(lambda m: m(x))(elites)
    choice = jax.random.randint(key_member, (), 0, model.elites.shape[0])
    mean, log_var = means[choice], log_vars[choice]
    if not deterministic:
        mean = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key_noise, mean.shape, mean.dtype)
    target = mean * model.target_std + model.target_mean
    next_obs = obs + target[: model.obs_dim]
    reward = target[model.obs_dim] if model.config.predict_reward else None
    return next_obs, reward


def predict_batch(model: GaussianEnsemble, obs, actions, key: jax.Array, deterministic: bool = False):
    """One model step for a BATCH (obs [N, obs_dim], actions [N, action_dim]): `(next_obs [N, obs_dim], reward
    [N])`, reward None without reward prediction.

    Each sample goes to a uniformly random elite, as in `predict`, but the batch is split evenly (a random
    permutation cut into n_elites groups, mbrl-lib's "random_model" propagation) so that each elite evaluates
    only its share: n_elites times cheaper than vmapping `predict`, which matters for MBPO's 100k-sample
    branched rollouts. The assignment is balanced rather than independent; every sample's elite is still
    uniform over the elites. When N is not a multiple of n_elites the groups hold ceil(N / n_elites) or one less,
    and which elites get the smaller ones is drawn at random per call (cutting the permutation into consecutive
    groups instead left the last elites short or idle: at N = 6 with 5 elites, two never ran).
    """
    obs = jnp.asarray(obs, model.input_mean.dtype)
    actions = jnp.asarray(actions, obs.dtype)
    if obs.ndim != 2 or obs.shape[1] != model.obs_dim or actions.shape != (obs.shape[0], model.action_dim):
        raise ValueError(f"predict_batch takes obs [N, {model.obs_dim}] and actions [N, {model.action_dim}], got "
                         f"{obs.shape} and {actions.shape}; use `predict` for one transition.")
    n, n_elites = obs.shape[0], model.elites.shape[0]
    group = -(-n // n_elites)
    key_perm, key_noise = jax.random.split(key)
    perm = jax.random.permutation(key_perm, n)
    if n % n_elites == 0:  # consecutive groups of the permutation, no padding (the dealt layout below would do
        # as well, but kept: it is the layout every MBPO result was produced with, 100k rollouts over 5 elites)
        padded = perm
        position = jnp.arange(n, dtype=jnp.int32)
    else:  # the permutation dealt round the elites from a random one: slot (j, c) holds entry c n_elites + k
        offset = jax.random.randint(side_key(key_perm, "elite offset"), (), 0, n_elites)
        k = (jnp.arange(n_elites)[:, None] - offset) % n_elites
        entry = jnp.arange(group)[None, :] * n_elites + k  # [n_elites, group]; entries >= n are padding
        padded = perm[(entry % n).reshape(-1)]  # entries < n are themselves; padding is computed and dropped
        real = jnp.arange(n)
        position = (((real % n_elites + offset) % n_elites) * group + real // n_elites).astype(jnp.int32)
    x = (jnp.concatenate([obs, actions], 1) - model.input_mean) / model.input_std
    elites = jax.tree.map(lambda p: p[model.elites], model.members)
    mean, log_var = jax.vmap(lambda m, xs: jax.vmap(m)(xs))(elites, x[padded].reshape(n_elites, group, -1))
    # Sample i sits at position inverse[i] of `padded` (its real slot): a gather, never a scatter with the
    # duplicate indices of the padding.
    inverse = jnp.zeros(n, jnp.int32).at[perm].set(position)
    mean = mean.reshape(n_elites * group, -1)[inverse]
    log_var = log_var.reshape(n_elites * group, -1)[inverse]
    if not deterministic:
        mean = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key_noise, mean.shape, mean.dtype)
    target = mean * model.target_std + model.target_mean
    next_obs = obs + target[:, : model.obs_dim]
    reward = target[:, model.obs_dim] if model.config.predict_reward else None
    return next_obs, reward


# --------------------------------------------------------------------------------------------------------------
# Fitting


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What one `fit` did. Histories are [epochs, n_members] NumPy arrays; losses are per target dimension in
    normalised units (targets of the training split have mean 0 and std 1 per dimension)."""

    epochs: int
    """Epochs run (<= max_epochs)."""
    stopped_early: bool
    """True when patience ran out (possibly in the last epoch, so epochs == max_epochs does not exclude it)."""
    train_nll: np.ndarray
    """Mean Gaussian NLL over each epoch's batches (the likelihood term of the loss, without penalties)."""
    holdout_nll: np.ndarray
    """Gaussian NLL on the holdout after each epoch."""
    holdout_mse_history: np.ndarray
    """Squared error of the mean on the holdout after each epoch: the early-stopping criterion."""
    holdout_mse: np.ndarray
    """[n_members] holdout MSE of the parameters each member kept (its best epoch)."""
    elites: np.ndarray
    """The n_elites members with the lowest `holdout_mse`, best first."""
    holdout_indices: np.ndarray
    """Rows of the fitted dataset that formed the holdout (never trained on)."""


class ModelDivergenceError(ValueError):
    """A member's loss or parameters became non-finite during `fit`.

    `last_good_model` is what `fit` would have returned had it stopped just before the failure: every member at
    its best holdout epoch so far (the parameters it was given, for a failure in the first epoch), with this
    fit's normalisation, so a training loop can log the error and carry on with a finite model.
    """

    def __init__(self, message: str, *, members: tuple[int, ...], epoch: int, batch: int | None,
                 last_good_model: GaussianEnsemble, report: FitReport):
        super().__init__(message)
        self.members = members
        self.epoch = epoch
        self.batch = batch
        self.last_good_model = last_good_model
        self.report = report


def bootstrap_indices(key: jax.Array, n_members: int, n: int) -> jax.Array:
    """[n_members, n] rows drawn with replacement from range(n): each member's resample of the training split.

    Drawn ONCE per fit. Redrawing every step would show every member every row within a few epochs, so the
    members would converge to the same function and the ensemble's disagreement would stop measuring anything.
    """
    return jax.random.randint(key, (n_members, n), 0, n)


def epoch_batches(key: jax.Array, bootstrap: jax.Array, batch_size: int) -> jax.Array:
    """[n_batches, n_members, batch] row indices for one epoch: each member's fixed resample, reshuffled.

    Only the order changes between epochs: over one epoch, member m sees exactly the rows of bootstrap[m] (the
    last batch wraps around to the start of the order, so every batch has the same static shape).
    """
    n_members, n = bootstrap.shape
    batch = min(int(batch_size), n)
    n_batches = -(-n // batch)
    order = jax.vmap(lambda k, rows: rows[jax.random.permutation(k, n)])(jax.random.split(key, n_members), bootstrap)
    positions = jnp.arange(n_batches * batch) % n
    return order[:, positions].reshape(n_members, n_batches, batch).transpose(1, 0, 2)


def member_loss(member: GaussianMember, x, y, decays, bound_penalty):
    mean, log_var = jax.vmap(member)(x)
    nll = 0.5 * jnp.mean((mean - y) ** 2 * jnp.exp(-log_var) + log_var) + 0.5 * _LOG_2PI
    decay = sum(d * 0.5 * jnp.sum(layer.weight**2) for d, layer in zip(decays, member.net.layers) if d)
    bounds = bound_penalty * (jnp.sum(member.max_log_var) - jnp.sum(member.min_log_var))
    return nll + decay + bounds, nll


def _member_errors(members: GaussianMember, x, y, weights=None):
    """[n_members] MSE of the mean and NLL on (x, y), normalised units; `weights` [rows] (0/1) masks rows out
    (the fixed-shape holdout of `fit_buffer`)."""
    weights = jnp.ones(x.shape[0], x.dtype) if weights is None else weights
    total = jnp.maximum(jnp.sum(weights), 1.0) * y.shape[-1]

    use = weights[:, None] > 0

    def one(member):
        mean, log_var = jax.vmap(member)(x)
        # where, not a product: a masked row's overflow (inf * 0 = nan) must not reach the sums.
        mse = jnp.sum(jnp.where(use, (mean - y) ** 2, 0.0)) / total
        nll = 0.5 * jnp.sum(jnp.where(use, (mean - y) ** 2 * jnp.exp(-log_var) + log_var, 0.0)) / total
        return mse, nll + 0.5 * _LOG_2PI

    return jax.vmap(one)(members)


def _per_member_all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves]).all(0)


def _where_member(mask, new, old):
    """Per-member choice between two stacked parameter trees."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def _where_all(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _train_step(members, opt_state, xb, yb, config: EnsembleConfig, check_parameters: bool = True):
    """One Adam step of every member on its own batch (xb, yb: [n_members, batch, .]). Returns the new members
    and optimiser state, `ok` [n_members] (finite loss, and finite new parameters if `check_parameters`) and the
    per-member NLL; the caller decides whether to apply a step that is not ok everywhere.

    The members stay vmapped (batched matmuls). Writing their losses out one by one gives plain matmuls, faster
    per step for MBPO's 7 x 4 x 200 ensemble on 2 cores (10.6 vs 12.3 ms in a one-off timing, refresh 1.88 ->
    1.79 s in bench_mbpo_parts.py), but rounds differently in the last bit, which changes every learned-model
    result downstream; not worth ~1% of an MBPO env step."""
    decays = config.layer_weight_decay()

    def objective(members):
        total, nll = jax.vmap(lambda m, xm, ym: member_loss(m, xm, ym, decays, config.log_var_bound_penalty))(
            members, xb, yb)
        return jnp.sum(total), (total, nll)

    (_, (total, nll)), grads = eqx.filter_value_and_grad(objective, has_aux=True)(members)
    updates, new_opt_state = optax.adam(config.learning_rate).update(grads, opt_state, members)
    new_members = eqx.apply_updates(members, updates)
    ok = jnp.isfinite(total)
    return new_members, new_opt_state, (ok & _per_member_all_finite(new_members)) if check_parameters else ok, nll


@eqx.filter_jit
def _epoch(members, opt_state, best_members, best_mse, key, bootstrap, x, y, x_hold, y_hold,
           config: EnsembleConfig):
    """One pass over every member's bootstrap resample, then the holdout check. A step whose loss or new
    parameters are non-finite for any member is not applied (nor any later step of the epoch): the carry then
    holds the last good parameters and the host raises."""
    def step(carry, indices):
        members, opt_state, failed, failed_members, failed_batch, i = carry
        new_members, new_opt_state, ok, nll = _train_step(members, opt_state, x[indices], y[indices], config)
        fails_now = ~failed & ~jnp.all(ok)
        accept = ~failed & jnp.all(ok)
        carry = (_where_all(accept, new_members, members), _where_all(accept, new_opt_state, opt_state),
                 failed | fails_now, jnp.where(fails_now, ~ok, failed_members),
                 jnp.where(fails_now, i, failed_batch), i + 1)
        return carry, nll

    n_members = bootstrap.shape[0]
    carry = (members, opt_state, jnp.zeros((), bool), jnp.zeros(n_members, bool), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32))
    (members, opt_state, failed, failed_members, failed_batch, _), nll = jax.lax.scan(
        step, carry, epoch_batches(key, bootstrap, config.batch_size))
    mse, holdout_nll = _member_errors(members, x_hold, y_hold)
    improved = mse < best_mse  # NaN never improves
    significant = mse < best_mse * (1.0 - config.min_improvement)
    best_members = _where_member(improved, members, best_members)
    best_mse = jnp.where(improved, mse, best_mse)
    return (members, opt_state, best_members, best_mse, jnp.mean(nll, 0), mse, holdout_nll, significant,
            failed, failed_members, failed_batch)


def _as_rows(name: str, value, n: int | None, width: int) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim == 1 and width == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != width or (n is not None and array.shape[0] != n):
        expected = f"[{n if n is not None else 'N'}, {width}]"
        raise ValueError(f"{name} must have shape {expected} (one row per transition), got {array.shape}.")
    return array


def _robust_stats(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column over the finite entries only, std floored to 1 for constant columns.

    Corrupted rows must not poison the normalisation of every member: they should fail in the members that
    train on them, with an error that names those members, while the statistics stay finite.
    """
    clean = np.where(np.isfinite(array), array, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(clean, 0)
        std = np.nanstd(clean, 0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean, std


def fit(model: GaussianEnsemble, obs, actions, next_obs, rewards, key: jax.Array) -> tuple[GaussianEnsemble, FitReport]:
    """Train every member on transitions (obs [N, obs_dim], actions [N, action_dim], next_obs, rewards [N]).

    Training continues from `model`'s parameters (MBPO retrains the same networks as the buffer grows); Adam's
    moments start afresh each fit. The normalisation statistics are recomputed on this fit's training split.
    `rewards` may be None when the config does not predict the reward. Raises ModelDivergenceError (with
    `last_good_model`) if a member's loss or parameters become non-finite.

    Each epoch is one compiled call; it compiles once per dataset size (a growing buffer compiles again).
    """
    config = model.config
    obs = _as_rows("obs", obs, None, model.obs_dim)
    n = obs.shape[0]
    actions = _as_rows("actions", actions, n, model.action_dim)
    next_obs = _as_rows("next_obs", next_obs, n, model.obs_dim)
    columns = [next_obs - obs]
    if config.predict_reward:
        if rewards is None:
            raise ValueError("this ensemble predicts the reward (predict_reward=True) but rewards=None; pass the "
                             "rewards or build the ensemble with EnsembleConfig(predict_reward=False).")
        columns.append(_as_rows("rewards", rewards, n, 1))
    inputs = np.concatenate([obs, actions], 1)
    targets = np.concatenate(columns, 1)

    n_holdout = min(int(n * config.holdout_fraction), config.max_holdout)
    if n_holdout < 1 or n - n_holdout < 1:
        raise ValueError(f"{n} transitions leave {n_holdout} for the holdout and {n - n_holdout} for training; "
                         "early stopping needs both: collect more data or raise holdout_fraction.")
    key_split, key_boot, key_epochs = jax.random.split(key, 3)
    order = np.asarray(jax.random.permutation(key_split, n))
    holdout_rows, train_rows = np.sort(order[:n_holdout]), order[n_holdout:]

    dtype = model.input_mean.dtype
    in_mean, in_std = _robust_stats(inputs[train_rows])
    t_mean, t_std = _robust_stats(targets[train_rows])
    model = eqx.tree_at(
        lambda m: (m.input_mean, m.input_std, m.target_mean, m.target_std), model,
        tuple(jnp.asarray(a, dtype) for a in (in_mean, in_std, t_mean, t_std)))
    x = jnp.asarray((inputs - in_mean) / in_std, dtype)
    y = jnp.asarray((targets - t_mean) / t_std, dtype)
    x_train, y_train = x[train_rows], y[train_rows]
    x_hold, y_hold = x[holdout_rows], y[holdout_rows]
    bootstrap = bootstrap_indices(key_boot, config.n_members, n - n_holdout)

    members = model.members
    opt_state = optax.adam(config.learning_rate).init(members)
    best_members, best_mse = members, jnp.full(config.n_members, jnp.inf, dtype)
    history = {"train": [], "nll": [], "mse": []}
    since_progress, stopped_early = 0, False

    def report(best_mse):
        best = np.asarray(best_mse)
        elites = np.argsort(best, kind="stable")[: config.n_elites]
        stack = lambda rows: np.stack(rows) if rows else np.zeros((0, config.n_members))  # noqa: E731
        return FitReport(len(history["train"]), stopped_early, stack(history["train"]), stack(history["nll"]),
                         stack(history["mse"]), best, elites, holdout_rows)

    def with_members(members, elites):
        return eqx.tree_at(lambda m: (m.members, m.elites), model, (members, jnp.asarray(elites, jnp.int32)))

    for epoch in range(config.max_epochs):
        (members, opt_state, new_best_members, new_best_mse, train_nll, mse, holdout_nll, significant, failed,
         failed_members, failed_batch) = _epoch(members, opt_state, best_members, best_mse,
                                                 jax.random.fold_in(key_epochs, epoch), bootstrap, x_train,
                                                 y_train, x_hold, y_hold, config)
        mse_host = np.asarray(mse)
        if bool(failed) or not np.all(np.isfinite(mse_host)):
            where = f"epoch {epoch}, batch {int(failed_batch)}" if bool(failed) else \
                f"epoch {epoch}, holdout evaluation"
            bad = np.flatnonzero(np.asarray(failed_members)) if bool(failed) else \
                np.flatnonzero(~np.isfinite(mse_host))
            partial = report(best_mse)
            raise ModelDivergenceError(
                _divergence_message(bad, where, not bool(failed), inputs, targets, config),
                members=tuple(int(b) for b in bad), epoch=epoch, batch=int(failed_batch) if bool(failed) else None,
                last_good_model=with_members(best_members, partial.elites), report=partial)
        best_members, best_mse = new_best_members, new_best_mse
        history["train"].append(np.asarray(train_nll))
        history["nll"].append(np.asarray(holdout_nll))
        history["mse"].append(mse_host)
        since_progress = 0 if bool(np.any(np.asarray(significant))) else since_progress + 1
        if since_progress >= config.patience:
            stopped_early = True
            break

    final = report(best_mse)
    return with_members(best_members, final.elites), final


def _divergence_message(bad, where, holdout: bool, inputs, targets, config) -> str:
    names = ", ".join(str(int(b)) for b in bad)
    what = "a non-finite holdout error" if holdout else \
        "a non-finite loss or parameters"  # the former also when only the holdout's data are bad
    message = (f"ensemble member{'s' if len(bad) > 1 else ''} {names} (of {config.n_members}) produced {what} "
               f"at {where}; training stopped and error.last_good_model holds the finite parameters from before "
               "the failure.")
    corrupt = np.flatnonzero(~np.all(np.isfinite(np.concatenate([inputs, targets], 1)), axis=1))
    if corrupt.size:
        shown = ", ".join(str(r) for r in corrupt[:10]) + (", ..." if corrupt.size > 10 else "")
        return (message + f" The data contain non-finite values in {corrupt.size} row(s) [{shown}]: drop or fix "
                "those transitions before fitting.")
    return message + (f" The data are finite, so the optimisation diverged: lower learning_rate (now "
                      f"{config.learning_rate}) or raise weight_decay.")


class BufferFit(eqx.Module):
    """What one `fit_buffer` did, as arrays (so it can leave a jitted, vmapped program as metrics)."""

    epochs: jax.Array
    """Epochs run (0 when there were too few transitions to split into training and holdout)."""
    holdout_mse: jax.Array
    """[n_members] holdout MSE of the parameters each member kept (inf where nothing was fitted)."""
    failed: jax.Array
    """True when a loss or parameters became non-finite: the model passed in was returned unchanged."""


def fit_buffer(model: GaussianEnsemble, obs, actions, next_obs, rewards, size, key: jax.Array,
               max_epochs: int | None = None) -> tuple[GaussianEnsemble, BufferFit]:
    """`fit` for a fixed-capacity replay buffer, jittable and vmappable: rows [0, size) of the [capacity, .]
    arrays are the data, the rest is ignored.

    Why a second fit: `fit` decides on the host when to stop and compiles once per dataset size, so it cannot run
    inside an agent's compiled training chunk, and a growing buffer would recompile at every retrain. Here every
    shape is the capacity's and the data-dependent parts are masks and loop bounds, so one compiled program
    retrains the model at every size and for many seeds at once.

    Same recipe as `fit`: a random holdout of min(floor(size * holdout_fraction), max_holdout) rows, statistics
    of the training split, one bootstrap resample per member drawn once per fit, Adam restarted, each member
    keeping the parameters of its best holdout epoch, stopping after `patience` epochs without a
    `min_improvement` gain, elites by holdout MSE. Two differences, both for static shapes: an epoch is
    ceil(n_train / batch_size) batches drawn with replacement from the member's resample (not a reshuffled pass
    over it), and a divergence returns the model passed in (the previous good one) with `failed` set instead of
    raising, so a training loop keeps going on a finite model. With too few rows for one holdout and one
    training row (size < 1 / holdout_fraction: 5 at the default 0.2) nothing is fitted. The holdout size is
    floor(size x holdout_fraction) in float32 here and in float64 in `fit`, so at fractions like 0.29 the two can
    hold out one row apart (28 and 29 of 100).
    `max_epochs` (default the config's) bounds the epochs of this fit.
    """
    config = model.config
    max_epochs = config.max_epochs if max_epochs is None else int(max_epochs)
    dtype = model.input_mean.dtype
    obs, actions, next_obs = (jnp.asarray(a, dtype) for a in (obs, actions, next_obs))
    capacity = obs.shape[0]
    if obs.ndim != 2 or obs.shape[1] != model.obs_dim or actions.shape != (capacity, model.action_dim) or \
            next_obs.shape != obs.shape:
        raise ValueError(f"fit_buffer needs obs and next_obs [capacity, {model.obs_dim}] and actions [capacity, "
                         f"{model.action_dim}]; got {obs.shape}, {next_obs.shape} and {actions.shape}.")
    columns = [next_obs - obs]
    if config.predict_reward:
        if rewards is None:
            raise ValueError("this ensemble predicts the reward (predict_reward=True) but rewards=None; pass the "
                             "rewards or build the ensemble with EnsembleConfig(predict_reward=False).")
        columns.append(jnp.reshape(jnp.asarray(rewards, dtype), (capacity, 1)))
    inputs = jnp.concatenate([obs, actions], 1)
    targets = jnp.concatenate(columns, 1)

    size = jnp.minimum(jnp.asarray(size, jnp.int32), capacity)
    n_hold = jnp.minimum(jnp.floor(size * config.holdout_fraction).astype(jnp.int32), config.max_holdout)
    n_train = size - n_hold
    enough = (n_hold >= 1) & (n_train >= 1)
    key_split, key_boot, key_epochs = jax.random.split(key, 3)
    positions = jnp.arange(capacity)
    # A random order of the valid rows first (invalid rows score 2 > any uniform draw): holdout, then training.
    order = jnp.argsort(jnp.where(positions < size, jax.random.uniform(key_split, (capacity,)), 2.0))
    in_train = jnp.zeros(capacity, dtype).at[order].set(((positions >= n_hold) & (positions < size)).astype(dtype))

    def stats(values):  # where, not a product: 0 * inf = nan, and rows past `size` may hold anything
        use = in_train[:, None] > 0
        count = jnp.maximum(jnp.sum(in_train), 1.0)
        mean = jnp.sum(jnp.where(use, values, 0.0), 0) / count
        std = jnp.sqrt(jnp.sum(jnp.where(use, (values - mean) ** 2, 0.0), 0) / count)
        return mean, jnp.where(std > 1e-12, std, 1.0)

    in_mean, in_std = stats(inputs)
    t_mean, t_std = stats(targets)
    x, y = (inputs - in_mean) / in_std, (targets - t_mean) / t_std
    # A static bound on n_hold (size <= capacity; +1 covers the rounding of size * holdout_fraction): the holdout
    # is scored every epoch, and scoring all `capacity` rows with most masked out (2,000 where 400 count in
    # MBPO's benchmark) cost about a tenth of each epoch (refresh 2.29 -> 2.10 s, benchmarks/bench_mbpo_parts.py).
    n_holdout_max = min(config.max_holdout, capacity, math.floor(capacity * config.holdout_fraction) + 1)
    hold_rows = order[:n_holdout_max]
    hold_weights = (jnp.arange(n_holdout_max) < n_hold).astype(dtype)
    x_hold, y_hold = x[hold_rows], y[hold_rows]
    # Positions in the training split (order[n_hold + j], j < n_train) of each member's fixed resample.
    bootstrap = jax.random.randint(key_boot, (config.n_members, capacity), 0, jnp.maximum(n_train, 1))
    steps_per_epoch = -(-n_train // config.batch_size)
    member_index = jnp.arange(config.n_members)[:, None]

    def train_step(i, carry):
        members, opt_state, failed, key = carry
        key, key_batch = jax.random.split(key)
        picks = jax.random.randint(key_batch, (config.n_members, config.batch_size), 0, jnp.maximum(n_train, 1))
        rows = order[n_hold + bootstrap[member_index, picks]]
        # A failed fit returns the model passed in, so a bad step need not be undone here: the loss is checked
        # every step and the parameters once per epoch (selecting between old and new parameters at every step
        # made MBPO's refresh 2.01 s instead of 1.84, benchmarks/bench_mbpo_parts.py on a 2-core Xeon).
        members, opt_state, finite_loss, _ = _train_step(members, opt_state, x[rows], y[rows], config,
                                                         check_parameters=False)
        return members, opt_state, failed | ~jnp.all(finite_loss), key

    def epoch(carry):
        members, opt_state, best_members, best_mse, failed, since_progress, count = carry
        members, opt_state, failed, _ = jax.lax.fori_loop(
            0, steps_per_epoch, train_step, (members, opt_state, failed, jax.random.fold_in(key_epochs, count)))
        mse, _ = _member_errors(members, x_hold, y_hold, hold_weights)
        failed = failed | ~jnp.all(jnp.isfinite(mse)) | ~jnp.all(_per_member_all_finite(members))
        improved = (mse < best_mse) & ~failed
        significant = jnp.any(improved & (mse < best_mse * (1.0 - config.min_improvement)))
        best_members = _where_member(improved, members, best_members)
        best_mse = jnp.where(improved, mse, best_mse)
        return (members, opt_state, best_members, best_mse, failed, jnp.where(significant, 0, since_progress + 1),
                count + 1)

    def keep_going(carry):
        *_, failed, since_progress, count = carry
        return enough & ~failed & (count < max_epochs) & (since_progress < config.patience)

    members = model.members
    init = (members, optax.adam(config.learning_rate).init(members), members,
            jnp.full(config.n_members, jnp.inf, dtype), jnp.zeros((), bool), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32))
    _, _, best_members, best_mse, failed, _, epochs = jax.lax.while_loop(keep_going, epoch, init)
    fitted = eqx.tree_at(
        lambda m: (m.members, m.elites, m.input_mean, m.input_std, m.target_mean, m.target_std), model,
        (best_members, jnp.argsort(best_mse)[: config.n_elites].astype(jnp.int32), in_mean, in_std, t_mean, t_std))
    use = enough & ~failed
    result = jax.tree.map(lambda new, old: jnp.where(use, new, old), fitted, model)
    return result, BufferFit(epochs, jnp.where(use, best_mse, jnp.inf), failed)


# --------------------------------------------------------------------------------------------------------------
# The model as an environment


def _box_bounds(space, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{name} must be a 1-D gymnasium Box, got {space!r}; the ensemble models continuous "
                         "vectors (one-hot encode discrete actions before fitting).")
    return tuple(map(float, space.low)), tuple(map(float, space.high))


class ModelEnv(eqx.Module):
    """A fitted ensemble stepped like our functional environments, so that agents, `autoreset.step` and the
    estimators roll out in the model exactly as in the real task.

    The state is the observation (the model knows nothing else). Actions are clipped to the action box before
    the model sees them (the real environments clip too, and the model never saw actions outside it). The
    reward is `reward_fn(obs, action, next_obs)` when given (a known reward is exact), otherwise the model's;
    termination is `termination_fn(next_obs)` when given, otherwise never (right for Pendulum). `reset` draws
    uniformly from `start_states`, real observations (rollouts from real states stay where the model was trained:
    MBPO branches from buffer states), or, given `initial_state_fn(key) -> obs`, from the task's own initial
    distribution (ME-TRPO and PILCO start imagined episodes there; `ModelEnv.like(..., from_initial=True)`).
    `mbpg.envs.as_gymnasium(model_env)` is a `gymnasium.Env` that passes Gymnasium's checker, so any Gymnasium agent
    (Stable-Baselines3's included) can train inside a learned model.

    The model's arrays are pytree leaves (so a batch of ModelEnvs can be vmapped over seeds), which makes the
    module unhashable: compile with `eqx.filter_jit(env.step)`, a closure `jax.jit(lambda s, a, k: env.step(s,
    a, k))`, or by passing the env as an argument to an `eqx.filter_jit` function, not `jax.jit(env.step)`.
    """

    model: GaussianEnsemble
    start_states: jax.Array | None
    action_low: tuple[float, ...] = eqx.field(static=True)
    action_high: tuple[float, ...] = eqx.field(static=True)
    observation_low: tuple[float, ...] = eqx.field(static=True)
    observation_high: tuple[float, ...] = eqx.field(static=True)
    reward_fn: Callable | None = eqx.field(static=True)
    termination_fn: Callable | None = eqx.field(static=True)
    max_episode_steps: int | None = eqx.field(static=True)
    deterministic: bool = eqx.field(static=True)
    clip_actions: bool = eqx.field(static=True)
    initial_state_fn: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        model: GaussianEnsemble,
        start_states,
        action_space: spaces.Box,
        observation_space: spaces.Box | None = None,
        reward_fn: Callable | None = None,
        termination_fn: Callable | None = None,
        max_episode_steps: int | None = None,
        deterministic: bool = False,
        clip_actions: bool = True,
        initial_state_fn: Callable | None = None,
    ):
        if reward_fn is None and not model.config.predict_reward:
            raise ValueError("this ensemble does not predict the reward (predict_reward=False) and no reward_fn "
                             "was given; pass reward_fn=lambda obs, action, next_obs: ... or fit an ensemble "
                             "with EnsembleConfig(predict_reward=True).")
        if start_states is None and initial_state_fn is None:
            raise ValueError("a ModelEnv needs start states: pass start_states (real observations, e.g. from the "
                             "replay buffer) or initial_state_fn(key) -> observation (the task's initial "
                             "distribution; ModelEnv.like(env, ..., from_initial=True) uses env.reset).")
        if start_states is not None:
            start_states = jnp.asarray(start_states, model.input_mean.dtype)
            if start_states.ndim != 2 or start_states.shape[1] != model.obs_dim or start_states.shape[0] < 1:
                raise ValueError(f"start_states must be real observations of shape [K >= 1, {model.obs_dim}], "
                                 f"got {start_states.shape}.")
        self.action_low, self.action_high = _box_bounds(action_space, "action_space")
        if len(self.action_low) != model.action_dim:
            raise ValueError(f"action_space has {len(self.action_low)} dimensions, the model {model.action_dim}.")
        if observation_space is None:
            self.observation_low = (-math.inf,) * model.obs_dim
            self.observation_high = (math.inf,) * model.obs_dim
        else:
            self.observation_low, self.observation_high = _box_bounds(observation_space, "observation_space")
            if len(self.observation_low) != model.obs_dim:
                raise ValueError(f"observation_space has {len(self.observation_low)} dimensions, the model "
                                 f"{model.obs_dim}.")
        self.model = model
        self.start_states = start_states
        self.reward_fn = reward_fn
        self.termination_fn = termination_fn
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.deterministic = bool(deterministic)
        self.clip_actions = bool(clip_actions)
        self.initial_state_fn = initial_state_fn

    @classmethod
    def like(cls, env, model: GaussianEnsemble, start_states=None, reward_fn=None, termination_fn=None,
             deterministic: bool = False, from_initial: bool = False) -> ModelEnv:
        """A model of `env` with its spaces and episode length; `from_initial=True` starts episodes from `env`'s
        own initial distribution instead of `start_states`."""
        initial_state_fn = None
        if from_initial:
            from mbpg.envs.autoreset import observe

            def initial_state_fn(key):
                return observe(env, env.reset(key))
        return cls(model, start_states, env.action_space, getattr(env, "observation_space", None), reward_fn,
                   termination_fn, getattr(env, "max_episode_steps", None), deterministic,
                   initial_state_fn=initial_state_fn)

    @property
    def observation_space(self) -> spaces.Box:
        return spaces.Box(np.array(self.observation_low, np.float32), np.array(self.observation_high, np.float32),
                          dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(np.array(self.action_low, np.float32), np.array(self.action_high, np.float32),
                          dtype=np.float32)

    def reset(self, key: jax.Array) -> jax.Array:
        if self.initial_state_fn is not None:
            return jnp.asarray(self.initial_state_fn(key), self.model.input_mean.dtype)
        return self.start_states[jax.random.randint(key, (), 0, self.start_states.shape[0])]

    def step(self, state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        action = jnp.reshape(jnp.asarray(action, state.dtype), (self.model.action_dim,))
        if self.clip_actions:
            action = jnp.clip(action, jnp.asarray(self.action_low, state.dtype),
                              jnp.asarray(self.action_high, state.dtype))
        next_obs, reward = predict(self.model, state, action, key, self.deterministic)
        if self.reward_fn is not None:
            reward = self.reward_fn(state, action, next_obs)
        return next_obs, jnp.reshape(jnp.asarray(reward, state.dtype), ())

    def observation(self, state: jax.Array) -> jax.Array:
        return state

    def is_terminal(self, state: jax.Array) -> jax.Array:
        if self.termination_fn is None:
            return jnp.zeros(jnp.shape(state)[:-1], bool)
        return jnp.asarray(self.termination_fn(state), bool)


__all__ = [
    "EnsembleConfig", "GaussianMember", "GaussianEnsemble", "FitReport", "ModelDivergenceError", "ModelEnv",
    "MBPO_WEIGHT_DECAY", "init_ensemble", "fit", "predict", "predict_all", "bootstrap_indices", "epoch_batches",
    "predict_batch", "fit_buffer", "BufferFit",
]
