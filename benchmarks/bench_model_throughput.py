"""Learned-dynamics throughput (issue 4): transitions/s of ensemble training and of model rollouts, by batch size.

    .venv/bin/python benchmarks/bench_model_throughput.py                       # on whatever JAX sees first
    .venv/bin/python benchmarks/bench_model_throughput.py --out docs/training/model_throughput_gpu.json

The model is MBPO's default ensemble (7 Gaussian members of 4 x 200 SiLU, 5 elites) on Hopper's sizes (11
observations, 3 actions) unless told otherwise. Two measurements, each at several batch sizes:
  train     one Adam step of every member on its own batch (`mbpg.models.ensemble._train_step`, what `fit`
            scans over): transitions/s = members x batch / time per step;
  rollout   `--horizon` steps of `predict_batch` (each sample to a random elite, MBPO's propagation) from a
            batch of start states under uniformly random actions, in one `lax.scan`: transitions/s = batch x
            horizon / time.
Each figure is the best of `--repeats` timed calls after a compiling call, and the table prints each batch
size's throughput relative to the smallest batch measured in the same run (how far batching pays). The device
name goes into the table and the JSON, so GPU and CPU figures are never confused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from rich.console import Console
from rich.table import Table

from mbpg.models.ensemble import EnsembleConfig, _train_step, init_ensemble, predict_batch

CPU_BATCHES = {"train": (256, 1024, 4096), "rollout": (1_000, 10_000, 100_000)}
ACCELERATOR_BATCHES = {"train": (256, 1024, 4096, 16_384, 65_536), "rollout": (10_000, 100_000, 400_000, 1_600_000)}


def best_time(function, *args, repeats: int) -> float:
    jax.block_until_ready(function(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-dim", type=int, default=11)
    parser.add_argument("--action-dim", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=1, help="model steps per rollout (MBPO's k)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=None)
    parser.add_argument("--rollout-batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if min(args.obs_dim, args.action_dim, args.horizon, args.repeats) < 1:
        raise ValueError("--obs-dim, --action-dim, --horizon and --repeats must be >= 1.")
    device = jax.devices()[0]
    defaults = CPU_BATCHES if device.platform == "cpu" else ACCELERATOR_BATCHES
    batches = {"train": args.train_batches or defaults["train"], "rollout": args.rollout_batches or defaults["rollout"]}
    config = EnsembleConfig()
    key = jax.random.key(0)
    model = init_ensemble(config, args.obs_dim, args.action_dim, key)
    in_dim, out_dim = args.obs_dim + args.action_dim, args.obs_dim + 1
    opt_state = optax.adam(config.learning_rate).init(eqx.filter(model.members, eqx.is_array))
    train_step = eqx.filter_jit(lambda m, o, x, y: _train_step(m, o, x, y, config)[3])

    @eqx.filter_jit
    def rollout(model, starts, key):
        def step(obs, key):
            key_action, key_model = jax.random.split(key)
            actions = jax.random.uniform(key_action, (obs.shape[0], args.action_dim), obs.dtype, -1.0, 1.0)
            next_obs, reward = predict_batch(model, obs, actions, key_model)
            return next_obs, reward.sum()

        return jax.lax.scan(step, starts, jax.random.split(key, args.horizon))[1]

    rows = []
    for batch in batches["train"]:
        x = jax.random.normal(key, (config.n_members, batch, in_dim))
        y = jax.random.normal(key, (config.n_members, batch, out_dim))
        seconds = best_time(train_step, model.members, opt_state, x, y, repeats=args.repeats)
        rows.append({"what": "train", "batch": batch, "seconds": seconds,
                     "transitions_per_s": config.n_members * batch / seconds})
    for batch in batches["rollout"]:
        starts = jax.random.normal(key, (batch, args.obs_dim))
        seconds = best_time(rollout, model, starts, key, repeats=args.repeats)
        rows.append({"what": "rollout", "batch": batch, "seconds": seconds,
                     "transitions_per_s": batch * args.horizon / seconds})

    name = f"{device.platform}: {device.device_kind}"
    table = Table(title=f"Ensemble throughput on {name} ({config.n_members} x {config.hidden}, obs {args.obs_dim}, "
                        f"act {args.action_dim}, rollout horizon {args.horizon})")
    for column in ("what", "batch", "time per call", "transitions/s", "vs smallest batch"):
        table.add_column(column, justify="right")
    for what in ("train", "rollout"):
        part = [r for r in rows if r["what"] == what]
        for r in part:
            table.add_row(what, f"{r['batch']:,}", f"{1000 * r['seconds']:.2f} ms", f"{r['transitions_per_s']:.3g}",
                          f"{r['transitions_per_s'] / part[0]['transitions_per_s']:.2f}x")
    Console(width=140).print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "jax": jax.__version__, "config": vars(args) | {
            "out": str(args.out)}, "rows": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
