"""Benchmark: mbpg's MBPO against mbrl-lib's MBPO on Pendulum-v1, env steps per second and return, in one run.

    .venv/bin/python benchmarks/bench_mbpo_speed.py                  # 5,000 training steps per side
    .venv/bin/python benchmarks/bench_mbpo_speed.py --steps 2000     # a quick check (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_mbpo_speed.py --only mbrl      # the mbrl-lib side alone
    .venv/bin/python benchmarks/bench_mbpo_speed.py --print-settings # the settings both sides use, and exit

The settings are mbrl-lib's own MBPO settings for InvertedPendulum (its conf/overrides/mbpo_inv_pendulum.yaml
with conf/algorithm/mbpo.yaml and conf/dynamics_model/gaussian_mlp_ensemble.yaml), adapted to Pendulum-v1 as
benchmarks/mbrl_driver.py records (PENDULUM_CHANGES there): no termination, one 200-step episode per epoch, CPU.
They are printed as a dict at the start (`settings`), and mapped onto mbpg's MBPOConfig by MBPG_OPTIONS below.

mbrl-lib side: mbrl 0.2.0 in its own virtualenv, benchmarks/.venv-mbrl, created on first use from the system
python3, in a subprocess with ONE torch thread (benchmarks/mbrl_driver.py). mbrl 0.2.0 as published pins
hydra-core==1.0.3, which does not import on Python 3.11 (a dataclass with a mutable default), and
gymnasium==0.26.3. What this benchmark pins and patches, exactly:
  pip install PINS (below)                     torch 2.13.0 CPU wheel; hydra-core 1.3.2 + omegaconf 2.3.0 instead
                                               of 1.0.3 / <2.1; gymnasium 0.26.3 as mbrl pins it; numpy 1.26.4
                                               (gymnasium 0.26.3 uses np.bool8, removed in NumPy 2); imageio,
                                               termcolor, tqdm (imported by the modules MBPO loads)
  pip install --no-deps mbrl==0.2.0            its other requirements (jupyter, pytest, sk-video, matplotlib,
                                               tensorboard) are not imported by MBPO, and its hydra pin is the
                                               one that breaks
  no file of the installed package is edited.  The configuration is patched in the driver instead: its three
                                               YAML files are read with OmegaConf.load and merged under one root
                                               (so Hydra's compose, with its `# @package _group_` headers of
                                               Hydra 1.0 and main.yaml's default `action_optimizer: cem` whose
                                               files the wheel lacks, is never run), and
                                               `_recursive_: false` is added to algorithm.agent and
                                               dynamics_model (Hydra >= 1.1 instantiates nested configs, 1.0 did
                                               not). Then the Pendulum changes of PENDULUM_CHANGES.

mbpg side: `mbpg.train.run.parse_train("mbpo", ...)` and `run_training` in this process, one seed, JAX's default
CPU backend (XLA's own threading over both cores).

What is timed (steady state, the figure the ratio uses):
  mbrl-lib  from the start of its first model fit (the first freq_train_model loop steps run no SAC update, the
            SAC buffer being empty) to the return of `train`, minus its one-episode evaluations after each epoch;
            steps = loop steps - freq_train_model. Its 5,000 initial exploration steps are outside the loop.
  mbpg      from the end of its last random-action chunk (random_steps = mbrl's exploration steps + the
            freq_train_model loop steps before mbrl's first fit, so that both sides take the same real steps and
            the same number of SAC updates) to the end of the second-to-last chunk (the last one also evaluates);
            compilation happens in the first chunk, which is outside the window.
Both sides then report 10 deterministic episodes of the final agent from fresh random initial states.

The arithmetic bound. FLOP per env step of these settings, counting matrix multiplies only (2 FLOP per
multiply-add; activations, Adam and sampling are a few percent):
  A  = MACs of one actor forward  (obs -> 256 -> 256 -> 2 act: mean and log-std heads)
  Q2 = MACs of the twin critics   (2 x (obs+act -> 256 -> 256 -> 1))
  M  = MACs of one ensemble member (obs+act -> 200 x 4 -> 2 (obs + 1): mean and log-variance, reward learned)
  SAC update, per sample: target (A + Q2) + critic fit (3 Q2: forward, backward) + actor fit (3 (A + Q2):
      the backward runs through the critics too) = 4 A + 7 Q2
  per env step:  sac     = 2 (4 A + 7 Q2) * sac_batch * sac_updates_per_step
                 rollout = 2 (A + M) * rollouts_per_step * rollout_length     (one elite per sample)
                 model   = sum over fits of 2 M E (3 n_train epochs + n_val (epochs + 1)) / (fits * retrain every)
                           with E members, n_train/n_val the split of that fit's data and epochs as mbrl ran them
Bound (env steps/s) = measured float32 matmul throughput (a 2048 x 2048 JAX matmul on all cores, best of 5, in
this run) / FLOP per env step. It is printed twice: by wall-clock (as this run measured it, lowered by whatever
else shares the machine) and by this process's CPU time times the core count (an estimate for an idle machine);
mbrl-lib's rate per CPU-second of its one thread is the matching idle-machine figure for its side. No
implementation on this machine can beat the bound; small matrices (256 wide) reach only
a fraction of the large-matmul rate, so the real ceiling is lower.

Timings on a shared 2-core machine vary with whatever else runs: compare the two sides within one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench_sb3 import EVAL_EPISODES, SPEED_TARGET, ensure_venv, return_verdict, run_driver, short_path
from mbrl_driver import CONFIG_FILES, PENDULUM_CHANGES

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-mbrl"
DRIVER = HERE / "mbrl_driver.py"
PINS = ("torch==2.13.0", "numpy==1.26.4", "gymnasium==0.26.3", "hydra-core==1.3.2", "omegaconf==2.3.0",
        "imageio==2.38.1", "termcolor==3.3.0", "tqdm==4.70.1")
"""The mbrl-lib side's requirements. torch stays pinned: an unpinned torch would resolve to a multi-GB CUDA build."""
NO_DEPS = ("mbrl==0.2.0",)
"""Installed with --no-deps (its own requirements pin hydra-core==1.0.3, which fails on Python 3.11)."""
ENV_ID = "Pendulum-v1"

# mbrl-lib setting (mbrl_driver.settings_dict) -> mbpg MBPOConfig option. Settings absent here have no option in
# MBPOConfig: they are either fixed the same way in mbpg (listed in SAME_BY_CONSTRUCTION) or differ
# (KNOWN_DIFFERENCES); both lists are printed.
MBPG_OPTIONS = {
    "ensemble_size": "ensemble_members",
    "num_elites": "ensemble_elites",
    "model_hidden": "model_hidden",
    "model_activation": "model_activation",
    "model_lr": "model_learning_rate",
    "model_weight_decay": "model_weight_decay",
    "model_batch_size": "model_batch_size",
    "model_train_every": "retrain_interval",
    "rollouts_per_step": "rollouts_per_step",
    "model_buffer_epochs_retained": "model_retain_epochs",
    "real_data_ratio": "real_ratio",
    "sac_updates_per_step": "updates_per_step",
    "sac_batch_size": "batch_size",
    "sac_hidden": "hidden",
    "sac_lr": "learning_rate",
    "sac_gamma": "gamma",
    "sac_tau": "tau",
    "sac_initial_alpha": "initial_temperature",
}
SAME_BY_CONSTRUCTION = (
    "model_validation_ratio 0.2 (EnsembleConfig.holdout_fraction), model_patience 5 and improvement 1% "
    "(EnsembleConfig.patience / min_improvement), model_propagation random_model (a random elite per sample), "
    "target_is_delta and input normalisation, sac_target_entropy -1 = -|A|, sac_activation ReLU, "
    "sac_target_update_interval 1")
KNOWN_DIFFERENCES = (
    "model_max_epochs: mbrl None (until early stopping) vs mbpg --model-max-epochs 200 (a cap; early stopping "
    "the same)",
    "model_weight_decay: mbrl torch Adam weight_decay on all parameters vs mbpg an L2 penalty on weight matrices",
    "exploration: mbrl's 5,000 steps sample its untrained SAC actor and its 250 pre-fit loop steps act with the "
    "mean action; mbpg's random_steps are uniform-random actions",
    "real-env actions: mbrl acts with SAC's mean action in the real env during training; mbpg samples",
    "an epoch: mbrl resets the env at each epoch start (200 steps = one Pendulum episode here); mbpg only at "
    "episode ends; mbpg's epoch_length (rollout schedule and model-buffer size only) is set to 250 so that its "
    "model buffer holds one fit's 100,000 rollouts, as mbrl's does",
)


def mbpg_arguments(settings: dict, seed: int, out: Path) -> list[str]:
    """`mbpg train mbpo` arguments for the mbrl settings (see the module docstring for the step accounting)."""
    steps, explore, every = settings["steps"], settings["initial_exploration_steps"], settings["model_train_every"]
    options = {mbpg: settings[mbrl] for mbrl, mbpg in MBPG_OPTIONS.items()}
    options["model_activation"] = str(options["model_activation"]).lower()
    epoch_lo, epoch_hi, k_lo, k_hi = settings["rollout_length_schedule"]
    options.update(k_min=k_lo, k_max=k_hi, k_first_epoch=epoch_lo, k_last_epoch=epoch_hi,
                   random_steps=explore + every,  # mbrl: exploration + the pre-fit loop steps, no SAC update
                   buffer_size=steps,  # mbrl's real buffer holds num_steps transitions (its dataset_size default)
                   epoch_length=math.ceil(settings["epoch_length"] / every) * every,  # model buffer = one fit
                   known_reward=not settings["model_learned_rewards"])
    never = 10 * (explore + steps)
    arguments = ["--env", ENV_ID, "--steps", str(explore + steps), "--seed", str(seed), "--eval-every", str(never),
                 "--checkpoint-every", str(never), "--eval-episodes", str(EVAL_EPISODES), "--no-tensorboard",
                 "--out", str(out)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            arguments += [flag, *(str(v) for v in value)]
        else:
            arguments += [flag, str(value)]
    return arguments


def model_fits(metrics_csv: Path, random_steps: int) -> list[dict]:
    """Every model fit of an mbpg run, from the run's metrics.csv: one row per chunk, a fit in each chunk after the
    random phase. (The final metrics hold only the last chunk's fit, which is not the run's average.)"""
    import csv

    with open(metrics_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(float(row["step"])) > random_steps]
    return [{"steps": int(float(row["step"])), "epochs": int(float(row["model_epochs"]))} for row in rows]


def run_mbpg(settings: dict, seed: int, console: Console) -> tuple[dict, list[str]]:
    import mbpg.train.run as run

    marks: list[tuple[int, float]] = []
    final: dict = {}
    original = run.train

    def timed_train(*args, progress=None, **kwargs):
        def record(info):
            marks.append((info["steps"], time.perf_counter()))
            if progress:
                progress(info)

        result = original(*args, progress=record, **kwargs)
        final.update(result)
        return result

    with tempfile.TemporaryDirectory(prefix="bench-mbpo-") as directory:
        arguments = mbpg_arguments(settings, seed, Path(directory) / "run")
        parsed = run.parse_train("mbpo", arguments)
        run.train = timed_train
        try:
            start = time.perf_counter()
            run.run_training("mbpo", parsed, Console(quiet=True))
            end = time.perf_counter()
        finally:
            run.train = original
        fits = model_fits(Path(directory) / "run" / "metrics.csv", parsed.algo.random_steps)
    chunk = parsed.algo.retrain_interval
    random_chunks = parsed.algo.random_steps // chunk
    (first_steps, first_time), (last_steps, last_time) = marks[random_chunks - 1], marks[-2]
    return {"steps": marks[-1][0], "steady_steps": last_steps - first_steps,
            "steps_per_second": (last_steps - first_steps) / (last_time - first_time),
            "end_to_end_seconds": end - start, "first_chunk_seconds": marks[0][1] - start,
            "random_phase_seconds": first_time - marks[0][1],
            "model_fits": fits,
            "mean_model_epochs": sum(f["epochs"] for f in fits) / len(fits) if fits else None,
            "eval_return": float(final["eval_return"][0]), "eval_return_std": float(final["eval_return_std"][0]),
            "config": dataclasses.asdict(parsed.algo)}, arguments


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Float32 throughput of one n x n matmul in JAX on all cores, best of `repeats`: (by wall-clock, as measured;
    by this process's CPU time times the core count, an estimate for an otherwise idle machine)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        matmul(a, b).block_until_ready()
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - start_cpu)
    return 2 * n**3 / best, 2 * n**3 / best_cpu * (os.cpu_count() or 1)


def mlp_macs(sizes: list[int]) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def flop_per_env_step(settings: dict, obs_dim: int, act_dim: int, fits: list[dict]) -> dict:
    """FLOP per env step of the settings (the formula of the module docstring); `fits` as mbrl's driver reports
    them (data size and epochs of each model fit)."""
    actor = mlp_macs([obs_dim, *settings["sac_hidden"], 2 * act_dim])
    twin = 2 * mlp_macs([obs_dim + act_dim, *settings["sac_hidden"], 1])
    outputs = obs_dim + int(settings["model_learned_rewards"])
    member = mlp_macs([obs_dim + act_dim, *settings["model_hidden"], 2 * outputs])
    sac = 2 * (4 * actor + 7 * twin) * settings["sac_batch_size"] * settings["sac_updates_per_step"]
    rollout = 2 * (actor + member) * settings["rollouts_per_step"] * (settings["rollout_length"] or 1)
    members, ratio = settings["ensemble_size"], settings["model_validation_ratio"]
    fit_flop = []
    for fit in fits:
        n_val = int(fit["data"] * ratio)
        n_train = fit["data"] - n_val
        fit_flop.append(2 * member * members * (3 * n_train * fit["epochs"] + n_val * (fit["epochs"] + 1)))
    model = sum(fit_flop) / max(len(fit_flop), 1) / settings["model_train_every"]
    return {"sac": sac, "rollout": rollout, "model": model, "total": sac + rollout + model,
            "macs": {"actor": actor, "twin_critic": twin, "member": member}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000,
                        help="training-loop env steps per side after the initial exploration (rounded up to "
                             "whole mbrl epochs and mbpg chunks)")
    parser.add_argument("--initial-steps", type=int, default=None,
                        help="initial exploration steps (default: mbrl-lib's 5,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both sides' training")
    parser.add_argument("--only", choices=("mbrl", "mbpg"), help="run one side only")
    parser.add_argument("--print-settings", action="store_true", help="print the settings and the mapping, exit")
    parser.add_argument("--json", type=Path, help="write every number of this run to this file")
    parser.add_argument("--python", default="python3", help="interpreter that creates benchmarks/.venv-mbrl")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    command = shlex.join([short_path(sys.executable), short_path(__file__), *sys.argv[1:]])
    python = ensure_venv(console, shutil.which(args.python) or args.python, VENV, PINS, NO_DEPS, "mbrl-lib")

    probe = ["--print-settings", "--steps", str(args.steps)]
    if args.initial_steps is not None:
        probe += ["--initial-steps", str(args.initial_steps)]
    described, _ = run_driver(python, DRIVER, probe, console, "mbrl-lib", scratch_cwd=True)
    settings = described["settings"]
    every, epoch = settings["model_train_every"], settings["epoch_length"]
    unit = math.lcm(every, epoch)
    steps = max(math.ceil(args.steps / unit) * unit, unit)
    if steps != args.steps:
        console.print(f"--steps {args.steps:,} rounded up to {steps:,} (whole mbrl epochs of {epoch} and mbpg "
                      f"chunks of {every}), the budget of both sides")
    settings["steps"] = steps
    console.print(f"[bold]mbrl-lib MBPO settings[/] (from {', '.join(CONFIG_FILES.values())}; changed: "
                  f"{json.dumps(PENDULUM_CHANGES)}):")
    console.print_json(json.dumps(settings))
    import mbpg.algos

    has_mbpo = "mbpo" in mbpg.algos.ALGORITHMS
    if has_mbpo:
        console.print(f"mbpg side: mbpg train mbpo {shlex.join(mbpg_arguments(settings, args.seed, Path('OUT')))}")
    console.print(f"same by construction: {SAME_BY_CONSTRUCTION}")
    for line in KNOWN_DIFFERENCES:
        console.print(f"difference: {line}")
    if args.print_settings:
        return

    record: dict = {"command": command, "settings": settings, "pins": PINS, "no_deps": NO_DEPS,
                    "config_changes": PENDULUM_CHANGES}
    theirs = ours = None
    if args.only != "mbpg":
        driver_args = ["--steps", str(steps), "--seed", str(args.seed), "--eval-episodes", str(EVAL_EPISODES)]
        if args.initial_steps is not None:
            driver_args += ["--initial-steps", str(args.initial_steps)]
        console.print(f"[bold]mbrl-lib[/] MBPO {ENV_ID}, {settings['initial_exploration_steps']:,} exploration + "
                      f"{steps:,} training steps ...")
        theirs, driver_command = run_driver(python, DRIVER, driver_args, console, "mbrl-lib", scratch_cwd=True)
        console.print(f"  mbrl-lib: {theirs['steady_steps_per_second']:.2f} steps/s steady "
                      f"({theirs['steady_steps']:,} steps in {theirs['steady_seconds']:.0f} s; "
                      f"{theirs['steady_steps_per_cpu_second']:.2f} per CPU-second of its one thread), "
                      f"{theirs['steps_per_second']:.2f} over the whole loop; return {theirs['eval_return']:.1f} ± "
                      f"{theirs['eval_return_std']:.1f}; model epochs per fit "
                      f"{[f['epochs'] for f in theirs['model_fits']]}  [dim]({shlex.join(driver_command)})[/]")
        split = {k: round(v, 1) for k, v in theirs["breakdown_seconds"].items()}
        console.print(f"  mbrl-lib time split (s): {json.dumps(split)}")
        record["mbrl"] = theirs
    if args.only != "mbrl":
        if not has_mbpo:
            console.print("[yellow]mbpg side skipped: 'mbpo' is not in mbpg's registry yet[/]")
        else:
            console.print(f"[bold]mbpg[/] MBPO {ENV_ID}, same budget ...")
            ours, arguments = run_mbpg(settings, args.seed, console)
            console.print(f"  mbpg: {ours['steps_per_second']:.2f} steps/s steady ({ours['steady_steps']:,} steps), "
                          f"{ours['end_to_end_seconds']:.0f} s end to end (first chunk, with compilation: "
                          f"{ours['first_chunk_seconds']:.1f} s); return {ours['eval_return']:.1f} ± "
                          f"{ours['eval_return_std']:.1f}; model epochs per fit "
                          f"{[f['epochs'] for f in ours['model_fits']]}")
            record["mbpg"] = ours

    from mbpg.algos.spaces import env_spec
    from mbpg.envs import make

    spec = env_spec(make(ENV_ID))
    fits = theirs["model_fits"] if theirs else []
    flop = flop_per_env_step(settings, spec.obs_dim, spec.action_dim, fits)
    peak, idle_peak = matmul_flops_per_second()
    bound, idle_bound = peak / flop["total"], idle_peak / flop["total"]
    record.update(flop_per_env_step=flop, matmul_flops_per_second=peak, bound_steps_per_second=bound,
                  idle_matmul_flops_per_second=idle_peak, idle_bound_steps_per_second=idle_bound)
    console.print(f"FLOP per env step: SAC {flop['sac'] / 1e9:.2f} G + rollouts {flop['rollout'] / 1e9:.2f} G + model "
                  f"fits {flop['model'] / 1e9:.2f} G (mbrl's epochs) = {flop['total'] / 1e9:.2f} G; float32 matmul "
                  f"{peak / 1e9:.0f} GFLOP/s (2048^3, JAX, all cores, wall-clock) -> bound {bound:.1f} env steps/s; "
                  f"by CPU time x {os.cpu_count()} cores (an idle machine): {idle_peak / 1e9:.0f} GFLOP/s -> "
                  f"{idle_bound:.1f} env steps/s")
    if theirs:
        cpu_rate = theirs["steady_steps_per_cpu_second"]
        console.print(f"mbrl-lib per CPU-second (an idle core): {cpu_rate:.2f} steps/s = "
                      f"{cpu_rate * flop['total'] / 1e9:.0f} GFLOP/s on one thread; the idle-machine bound is "
                      f"{idle_bound / cpu_rate:.1f}x that")

    table = Table(title=f"MBPO {ENV_ID}: mbpg vs mbrl-lib (seed {args.seed}, {steps:,} training steps, "
                        f"{EVAL_EPISODES} deterministic eval episodes)")
    for column in ("side", "steps/s steady", "x mbrl-lib", "share of bound", "eval return"):
        table.add_column(column, justify="left" if column == "side" else "right")
    base = theirs["steady_steps_per_second"] if theirs else None
    for name, result, rate in (("mbrl-lib", theirs, theirs and theirs["steady_steps_per_second"]),
                               ("mbpg", ours, ours and ours["steps_per_second"])):
        if result:
            table.add_row(name, f"{rate:.2f}", f"{rate / base:.2f}x" if base else "-", f"{rate / bound:.0%}",
                          f"{result['eval_return']:.1f} ± {result['eval_return_std']:.1f}")
    table.add_row("bound", f"{bound:.1f}", f"{bound / base:.1f}x" if base else "-", "100%", "")
    console.print(table)
    if theirs and ours:
        ratio = ours["steps_per_second"] / base
        record["ratio"] = ratio
        console.print(f"target >= {SPEED_TARGET:g}x and equal or better return: speed "
                      f"{'yes' if ratio >= SPEED_TARGET else 'NO'} ({ratio:.2f}x), return "
                      f"{return_verdict(ours, theirs)}; mbpg reaches "
                      f"{ratio / (bound / base):.0%} of the bound's {bound / base:.1f}x")
    versions = {name: metadata.version(name) for name in ("mbpg", "jax", "jaxlib", "equinox", "optax", "numpy")}
    console.print(f"mbpg side: python {platform.python_version()}, "
                  + ", ".join(f"{k} {v}" for k, v in versions.items())
                  + f"; {os.cpu_count()} cores, XLA's default threading")
    if theirs:
        console.print("mbrl-lib side: " + ", ".join(f"{k} {v}" for k, v in theirs["versions"].items())
                      + f"; 1 torch thread, in {VENV.relative_to(HERE.parent)}")
    console.print(f"command: {command}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
