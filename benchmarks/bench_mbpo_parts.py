"""Benchmark: where an MBPO env step's time goes (model refresh vs SAC updates), per core count and XLA flag.

    .venv/bin/python benchmarks/bench_mbpo_parts.py                      # the variants below, one table
    .venv/bin/python benchmarks/bench_mbpo_parts.py --variants default one-core

Settings: the mbpg side of benchmarks/bench_mbpo_speed.py (mbrl-lib's MBPO sizes: 7x4x200 ensemble, 400 rollouts
and 10 SAC updates of batch 256 per env step, 2x256 SAC networks), read from the `mbpg.config` entry of a JSON that
benchmark wrote (`--config-json`, default docs/training/mbpo_speed_zen4_b.json). The real buffer is filled with
2,000 synthetic Pendulum-shaped transitions (mbrl-lib's buffer size at --steps 2000), so the model fit's epoch
count is whatever early stopping picks on that data (the same in every variant of a run: same data, same key).

Timed, after one compiling call and each the best of `--repeats` calls: `refresh_model` (fit with holdout early
stopping + 100k branched rollouts, once per 250 env steps) and SAC's `train_chunk` (250 env steps x 10 updates).
Each variant runs in its own process, pinned to its cores before JAX starts (XLA sizes its thread pool from the
affinity) and with its own XLA_FLAGS; ratios are against the first variant of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "default": ("all", ""),
    "one-core": ("one", ""),
    "onednn": ("all", "--xla_cpu_use_onednn=true"),
    "avx512-width": ("all", "--xla_cpu_prefer_vector_width=512"),
}
"""name -> (cores: 'all' or 'one', XLA_FLAGS)."""
REAL_TRANSITIONS = 2000


def child(config_json: Path, repeats: int) -> dict:
    """Time the two parts in this process (JAX imported here, after the parent set affinity and flags)."""
    import dataclasses
    import time

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from mbpg.algos.mbpo import MBPO, MBPOConfig
    from mbpg.envs.classic_control import Pendulum

    fields = json.loads(config_json.read_text())["mbpg"]["config"]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    config = MBPOConfig(**{**fields, "random_steps": fields["retrain_interval"]})
    agent = MBPO(config, Pendulum())
    state = agent.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 3)
    n = REAL_TRANSITIONS
    obs = jax.random.normal(keys[0], (n, 3))
    data = {"obs": obs, "action": jax.random.uniform(keys[1], (n, 1), minval=-2.0, maxval=2.0),
            "reward": -jnp.sum(obs ** 2, -1), "next_obs": obs + 0.05 * jax.random.normal(keys[2], (n, 3)),
            "terminated": jnp.zeros(n, bool)}
    real = state.sac.replay.real
    real = dataclasses.replace(real, data=jax.tree.map(lambda buf, x: buf.at[:n].set(x.astype(buf.dtype)),
                                                       real.data, data),
                               size=jnp.asarray(n, jnp.int32), position=jnp.asarray(n % real.capacity, jnp.int32))
    replay = dataclasses.replace(state.sac.replay, real=real)
    state = dataclasses.replace(state, sac=dataclasses.replace(state.sac, replay=replay,
                                                               steps=jnp.asarray(config.random_steps, jnp.int32)))
    refresh, chunk = eqx.filter_jit(agent.refresh_model), eqx.filter_jit(agent.sac.train_chunk)

    def best(function, *args):
        jax.block_until_ready(function(*args))  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(function(*args))
            times.append(time.perf_counter() - start)
        return min(times), out

    refresh_seconds, (refreshed, metrics) = best(refresh, state, jax.random.key(2))
    chunk_seconds, _ = best(chunk, refreshed.sac)
    epochs = float(metrics["model_epochs"])
    steps = config.retrain_interval
    return {"refresh_seconds": refresh_seconds, "model_epochs": epochs,
            "sac_ms_per_env_step": 1e3 * chunk_seconds / steps, "cores": len(os.sched_getaffinity(0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--config-json", type=Path,
                        default=Path(__file__).resolve().parent.parent / "docs/training/mbpo_speed_zen4_b.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.config_json, args.repeats)))
        return
    if not args.config_json.is_file():
        raise SystemExit(f"--config-json {args.config_json} does not exist; pass a JSON written by "
                         "benchmarks/bench_mbpo_speed.py --json PATH.")
    from rich.console import Console
    from rich.table import Table

    cores = sorted(os.sched_getaffinity(0))
    results = {}
    for name in args.variants:
        which, flags = VARIANTS[name]
        pinned = set(cores) if which == "all" else {cores[-1]}
        environment = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}
        command = [sys.executable, __file__, "--child", "--config-json", str(args.config_json),
                   "--repeats", str(args.repeats)]
        print(f"{name}: cores {sorted(pinned)}, XLA_FLAGS={environment['XLA_FLAGS']!r} ...", flush=True)
        done = subprocess.run(command, env=environment, capture_output=True, text=True,
                              preexec_fn=lambda pinned=pinned: os.sched_setaffinity(0, pinned))
        if done.returncode:
            raise SystemExit(f"variant {name} failed:\n{done.stderr[-2000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results[args.variants[0]]
    table = Table(title=f"MBPO parts (ratios: time of {args.variants[0]} / time of the variant; > 1 is faster)")
    for column in ("variant", "cores", "SAC ms / env step", "x", "refresh s (fit + rollouts)", "x", "epochs"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, r in results.items():
        table.add_row(name, str(r["cores"]), f"{r['sac_ms_per_env_step']:.1f}",
                      f"{base['sac_ms_per_env_step'] / r['sac_ms_per_env_step']:.2f}", f"{r['refresh_seconds']:.2f}",
                      f"{base['refresh_seconds'] / r['refresh_seconds']:.2f}", f"{r['model_epochs']:g}")
    Console().print(table)


if __name__ == "__main__":
    main()
