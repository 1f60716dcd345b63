"""One training loop for every agent: compiled chunks of environment steps and updates, evaluation, logging,
checkpoints and resume. Many seeds run as one vmapped program.

An agent is any object with
    name: str, steps_per_chunk: int, config (a dataclass)
    init(key) -> state                       (a pytree; it carries its own PRNG key and environment states)
    train_chunk(state) -> (state, metrics)   (pure and jittable: steps_per_chunk env steps with their updates)
    act(state, obs, key) -> action           (the deterministic evaluation policy)
Because the state carries the key, a run resumed from the checkpoint after chunk c repeats exactly the chunks an
uninterrupted run would have made, on the JAX ports. On host-side Gymnasium envs the envs and the acting keys
live outside the state, so a resumed run continues with fresh ones (`HostDriver`): a valid continuation, not the
same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mbpg.envs.autoreset import episode_limit, evaluate
from mbpg.envs.gym_adapter import GymnasiumEnv
from mbpg.train.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from mbpg.train.host import HostDriver
from mbpg.train.logger import RunLogger

CHECKPOINT_NAME = "checkpoint.eqx"


@dataclasses.dataclass
class LoopSettings:
    total_steps: int
    seed: int = 0
    n_seeds: int = 1
    eval_every: int = 5000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    tensorboard: bool = True


def stack_states(states: list):
    """Stack per-seed states along a new leading axis.

    Seeds are initialised one by one rather than under vmap: on the 2-core CPU here, jax 0.10.2 hung (0% CPU,
    inside XLA) when one vmapped program made four or more orthogonally initialised 256x256 layers for 5 seeds
    (batched QR); initialisation is cheap, so the per-seed loop costs nothing measurable.
    """
    arrays = [eqx.filter(s, eqx.is_array) for s in states]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *arrays)
    return eqx.combine(stacked, eqx.filter(states[0], eqx.is_array, inverse=True))


def first_seed(tree):
    """The first seed's slice of a stacked state (array leaves indexed, the rest kept)."""
    return eqx.combine(jax.tree.map(lambda x: x[0], eqx.filter(tree, eqx.is_array)),
                       eqx.filter(tree, eqx.is_array, inverse=True))


def with_seed_axis(tree):
    """The inverse of `first_seed` for one seed: a leading axis of size 1 on every array leaf."""
    return eqx.combine(jax.tree.map(lambda x: jnp.asarray(x)[None], eqx.filter(tree, eqx.is_array)),
                       eqx.filter(tree, eqx.is_array, inverse=True))


def over_seeds(function, n_seeds: int):
    """vmap over the leading seed axis; with one seed, squeeze the axis and call the function directly.

    Measured here (SAC on Pendulum, 2-core CPU): a vmap of size 1 ran 189 env steps/s against 300 unbatched, since
    XLA lowers the batched matmuls, gathers and scatters of a size-1 batch to slower general forms.
    """
    if n_seeds > 1:
        return eqx.filter_vmap(function)

    def single(*args):
        return with_seed_axis(function(*(first_seed(a) for a in args)))

    return single


def run_reached(run_dir: Path, steps: int) -> bool:
    """Whether the run in `run_dir` has a valid checkpoint at `steps` env steps or more (a finished run that
    `compare` and `sweep` reuse instead of training again)."""
    try:
        return read_metadata(Path(run_dir) / CHECKPOINT_NAME)["steps"] >= steps
    except CheckpointError:
        return False


_COMPILED: dict[str, tuple[Callable, Callable]] = {}


def _compiled(agent, env, identity: dict, settings: LoopSettings) -> tuple[Callable, Callable]:
    """The jitted chunk and evaluation functions, shared by every run in this process with the same algorithm,
    config, env id and seed count: a resumed or repeated run (a sweep, `compare`, the tests) then reuses the
    compiled programs instead of compiling them again. An agent is a function of its config and env, so the
    first agent's bound methods serve for later, equal ones."""
    key = json.dumps({**identity, "seed": None, "eval_episodes": settings.eval_episodes,
                      "class": f"{type(agent).__module__}.{type(agent).__qualname__}"}, sort_keys=True)
    if key not in _COMPILED:
        limit = episode_limit(env)
        _COMPILED[key] = (eqx.filter_jit(over_seeds(agent.train_chunk, settings.n_seeds)),
                          eqx.filter_jit(over_seeds(lambda s, k: evaluate(env, agent.act, s, k,
                                                                          settings.eval_episodes, limit),
                                                    settings.n_seeds)))
    return _COMPILED[key]


def _identity(agent, env_id: str, settings: LoopSettings) -> dict:
    """What must match for a checkpoint to be resumed by this run."""
    return {"algo": agent.name, "env": env_id, "seed": settings.seed, "n_seeds": settings.n_seeds,
            "steps_per_chunk": agent.steps_per_chunk,
            "config": json.loads(json.dumps(dataclasses.asdict(agent.config), default=str))}


def train(agent, env, env_id: str, settings: LoopSettings, run_dir: Path, resume: bool = False,
          progress: Callable[[dict], None] | None = None) -> dict:
    """Run until `settings.total_steps` env steps per seed; return the final metrics (per-seed arrays)."""
    if settings.total_steps < agent.steps_per_chunk:
        raise ValueError(f"--steps {settings.total_steps} is below one training chunk ({agent.steps_per_chunk} "
                         f"env steps for {agent.name}); ask for at least that many.")
    identity = _identity(agent, env_id, settings)
    keys = jax.random.split(jax.random.key(settings.seed), settings.n_seeds)
    state = stack_states([eqx.filter_jit(agent.init)(key) for key in keys])
    first_chunk = 0
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if resume:
        state = load_checkpoint(checkpoint, state, expected_metadata=identity)
        first_chunk = read_metadata(checkpoint)["chunk"] + 1
    n_chunks = math.ceil(settings.total_steps / agent.steps_per_chunk)
    resume_step = first_chunk * agent.steps_per_chunk if resume else None
    logger = RunLogger(run_dir, {**identity, "total_steps": settings.total_steps, "eval_every": settings.eval_every,
                                 "eval_episodes": settings.eval_episodes}, resume_step, settings.tensorboard)
    eval_root = jax.random.fold_in(jax.random.key(settings.seed), 0xE7A1)
    if isinstance(env, GymnasiumEnv):
        if settings.n_seeds != 1:
            raise ValueError("host-side Gymnasium envs train one seed per process; pass --seeds 1 (or use a JAX "
                             "port, whose seeds run as one vmapped program).")
        driver = HostDriver(agent, env, settings.seed, first_chunk)

        def chunk_fn(state):
            new_state, metrics = driver.chunk(first_seed(state))
            return with_seed_axis(new_state), {k: np.asarray(v)[None] for k, v in metrics.items()}

        def eval_fn(state, chunk):
            return driver.evaluate(first_seed(state), settings.eval_episodes, chunk)[None]
    else:
        chunk_fn, evaluate_seeds = _compiled(agent, env, identity, settings)

        def eval_fn(state, chunk):
            return evaluate_seeds(state, jax.random.split(jax.random.fold_in(eval_root, chunk), settings.n_seeds))
    checkpoint_chunks = max(1, settings.checkpoint_every // agent.steps_per_chunk)
    metrics: dict = {}
    started = time.perf_counter()
    try:
        for chunk in range(first_chunk, n_chunks):
            state, metrics = chunk_fn(state)
            steps = (chunk + 1) * agent.steps_per_chunk
            previous = chunk * agent.steps_per_chunk
            metrics = {k: np.asarray(v) for k, v in metrics.items()}
            if steps // settings.eval_every > previous // settings.eval_every or chunk == n_chunks - 1:
                returns = np.asarray(eval_fn(state, chunk))
                metrics["eval_return"] = returns.mean(axis=1)
                metrics["eval_return_std"] = returns.std(axis=1)
            for seed_index in range(settings.n_seeds):
                logger.log(steps, {"seed": settings.seed + seed_index,
                                   **{k: v[seed_index] for k, v in metrics.items()}})
            if (chunk + 1) % checkpoint_chunks == 0 or chunk == n_chunks - 1:
                logger.flush()
                save_checkpoint(checkpoint, state, {**identity, "chunk": chunk, "steps": steps})
            if progress:
                elapsed = time.perf_counter() - started
                done_steps = (chunk + 1 - first_chunk) * agent.steps_per_chunk
                progress({"steps": steps, "total": n_chunks * agent.steps_per_chunk,
                          "steps_per_second": done_steps * settings.n_seeds / max(elapsed, 1e-9),
                          "eval_return": float(np.mean(metrics["eval_return"])) if "eval_return" in metrics else None})
    finally:
        logger.close()
    return {"state": state, **metrics}
