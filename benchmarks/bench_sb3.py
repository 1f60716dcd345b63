"""Benchmark: mbpg against Stable-Baselines3, env steps per second and return, measured in the same run.

    .venv/bin/python benchmarks/bench_sb3.py                 # SAC 20k + PPO 100k steps (about 7 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_sb3.py --only ppo      # one case
    .venv/bin/python benchmarks/bench_sb3.py --sac-steps 3000 --ppo-steps 8192   # a quick check

Cases: SAC on Pendulum-v1 and PPO on CartPole-v1, with mbpg's default SACConfig / PPOConfig (the SB3 zoo's settings,
constant learning rate and clip range) and the same values passed explicitly to SB3 (benchmarks/sb3_driver.py):
network sizes and activations, batch, updates per env step / epochs, buffer, discount, step budget.

SB3 runs in its own virtualenv, benchmarks/.venv-sb3 (created on first use from the system python3, with the pinned
versions below: a CPU torch wheel), in a subprocess with ONE torch thread (its fastest setting on 2 cores). mbpg runs
in this process through `mbpg.train.loop.train`, one seed, on JAX's default CPU backend.

What is timed:
  SB3   wall-clock of `model.learn` (imports, model construction and evaluation excluded).
  mbpg  steady: from the end of the first compiled chunk to the end of the second-to-last chunk, i.e. training
        chunks only: the first chunk (compilation) and the last (which also runs the final evaluation, its
        compilation and the checkpoint write) are excluded. This is the figure the ratio uses.
        end-to-end: the whole `train` call, agent initialisation, compilation, final evaluation and checkpoint
        included (shown for reference).
Both sides then report the mean undiscounted return of 10 deterministic episodes from fresh random initial states
(no fixed reset seeds): mbpg's final evaluation in `train`, SB3's `evaluate_policy` on an unseeded env.
One seed per side: returns vary with the seed (read them loosely), speeds hardly do. Budgets are rounded up to
whole mbpg chunks (SAC 1000 env steps, PPO 8 x 32 = 256, which is also SB3 PPO's rollout) and must span at least
3 chunks; both sides run the rounded budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax
from rich.console import Console
from rich.table import Table

from mbpg.algos import get_algorithm, make_agent
from mbpg.envs import make
from mbpg.train.loop import LoopSettings, train

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-sb3"
DRIVER = HERE / "sb3_driver.py"
PINS = ("torch==2.13.0", "stable-baselines3==2.9.2", "gymnasium==1.4.0")
"""The SB3 side. torch stays pinned: an unpinned torch would resolve to a multi-GB CUDA build."""
EVAL_EPISODES = 10
SPEED_TARGET = 3.0
CASES = {"sac": ("SAC", "Pendulum-v1"), "ppo": ("PPO", "CartPole-v1")}


def return_verdict(ours: dict, theirs: dict) -> str:
    """'yes' when mbpg's mean evaluation return is at least SB3's; 'equal within noise' when it is lower by less
    than two standard errors of the difference of the two means (each over EVAL_EPISODES episodes); 'NO' beyond.
    Pendulum's returns vary by +-40-70 between evaluation episodes, so a one-seed mean gap of a few points says
    nothing either way."""
    gap = theirs["eval_return"] - ours["eval_return"]
    if gap <= 0:
        return "yes"
    se = math.sqrt((ours["eval_return_std"] ** 2 + theirs["eval_return_std"] ** 2) / EVAL_EPISODES)
    return f"equal within noise ({gap:.1f} < 2 SE = {2 * se:.1f})" if gap < 2 * se else "NO"


def ensure_venv(console: Console, base_python: str, venv: Path = VENV, pins: tuple[str, ...] = PINS,
                no_deps: tuple[str, ...] = (), label: str = "SB3") -> Path:
    """Create `venv` with `pins` (then `no_deps` installed without their dependencies) unless it is already there
    with exactly these; returns its python. Shared by every benchmark that runs a peer library in its own venv."""
    python, stamp = venv / "bin" / "python", venv / ".installed"
    wanted = "\n".join(pins) + ("\n--no-deps " + " ".join(no_deps) if no_deps else "") + "\n"
    where = venv.relative_to(HERE.parent)
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        console.print(f"{label} virtualenv: reusing {where} ({', '.join(pins + no_deps)})")
        return python
    if not python.exists():
        console.print(f"{label} virtualenv: creating {where} with {base_python}")
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    console.print(f"{label} virtualenv: pip install {' '.join(pins)}"
                  + (f"; pip install --no-deps {' '.join(no_deps)}" if no_deps else ""))
    start = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    if no_deps:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *no_deps], check=True)
    stamp.write_text(wanted)
    console.print(f"{label} virtualenv: installed in {time.perf_counter() - start:.0f} s")
    return python


def run_driver(python: Path, driver: Path, arguments: list[str], console: Console, label: str,
               scratch_cwd: bool = False) -> tuple[dict, list[str]]:
    """Run a peer library's driver in its venv with ONE thread and nothing of this environment on its path;
    returns the JSON of its last `{...}` output line and the command. `scratch_cwd` runs it in a temporary
    directory (for libraries that write logs to their working directory)."""
    command = [str(python), str(driver), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)  # nothing of the main environment leaks into the peer's one
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as directory:
        completed = subprocess.run(command, env=env, cwd=directory if scratch_cwd else None, stdout=subprocess.PIPE,
                                   text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode or not lines:
        console.print(completed.stdout)
        raise SystemExit(f"{label} driver failed (exit status {completed.returncode}): {shlex.join(command)}")
    return json.loads(lines[-1]), command


def make_mbpg(algo: str, env_id: str):
    """mbpg's agent with its default config, and the environment (our JAX port of `env_id`)."""
    config_class, _, _ = get_algorithm(algo)
    env = make(env_id)
    return make_agent(algo, config_class(), env), env


def budget(algo: str, env_id: str, steps: int) -> int:
    """`steps` rounded up to whole mbpg chunks (what mbpg would run anyway), so both sides run the same count.

    At least 3 chunks: the steady-state rate is timed over chunks 2..n-1."""
    chunk = make_mbpg(algo, env_id)[0].steps_per_chunk
    rounded = math.ceil(steps / chunk) * chunk
    if rounded < 3 * chunk:
        raise SystemExit(f"--{algo}-steps {steps} is too short: mbpg {algo} needs at least 3 chunks of {chunk} env "
                         f"steps (the first compiles, the last evaluates): ask for {3 * chunk} or more.")
    return rounded


def run_mbpg(algo: str, env_id: str, steps: int, seed: int) -> dict:
    agent, env = make_mbpg(algo, env_id)
    n_chunks = math.ceil(steps / agent.steps_per_chunk)
    never = 10 * n_chunks * agent.steps_per_chunk  # evaluate and checkpoint only once, after the last chunk
    settings = LoopSettings(total_steps=steps, seed=seed, n_seeds=1, eval_every=never,
                            eval_episodes=EVAL_EPISODES, checkpoint_every=never, tensorboard=False)
    marks: list[tuple[int, float]] = []  # (env steps done, time) after each chunk
    with tempfile.TemporaryDirectory(prefix=f"bench-sb3-{algo}-") as directory:
        start = time.perf_counter()
        final = train(agent, env, env_id, settings, Path(directory),
                      progress=lambda info: marks.append((info["steps"], time.perf_counter())))
        end = time.perf_counter()
    (first_steps, first_time), (last_steps, last_time) = marks[0], marks[-2]
    total = marks[-1][0]
    return {"steps": total, "steady_steps": last_steps - first_steps,
            "steps_per_second": (last_steps - first_steps) / (last_time - first_time),
            "end_to_end_steps_per_second": total / (end - start), "end_to_end_seconds": end - start,
            "first_chunk_seconds": first_time - start,
            "eval_return": float(final["eval_return"][0]), "eval_return_std": float(final["eval_return_std"][0])}


def short_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith("..") else relative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sac-steps", type=int, default=20_000, help="env steps for SAC on Pendulum-v1")
    parser.add_argument("--ppo-steps", type=int, default=100_000, help="env steps for PPO on CartPole-v1")
    parser.add_argument("--only", choices=sorted(CASES), help="run one case only")
    parser.add_argument("--seed", type=int, default=0, help="seed of both sides' training")
    parser.add_argument("--python", default="python3", help="interpreter that creates benchmarks/.venv-sb3")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:  # piped or logged: keep the table on one line per row
        console = Console(width=150)
    command = shlex.join([short_path(sys.executable), short_path(__file__), *sys.argv[1:]])
    budgets = {}
    for algo in (args.only,) if args.only else ("sac", "ppo"):
        asked = args.sac_steps if algo == "sac" else args.ppo_steps
        budgets[algo] = budget(algo, CASES[algo][1], asked)
        if budgets[algo] != asked:
            console.print(f"--{algo}-steps {asked:,} rounded up to {budgets[algo]:,} (whole mbpg chunks), "
                          "the budget of both sides")
    base_python = shutil.which(args.python) or args.python
    python = ensure_venv(console, base_python)

    rows, sb3_versions = [], {}
    for algo, steps in budgets.items():
        name, env_id = CASES[algo]
        console.print(f"[bold]{name} {env_id}[/], {steps:,} steps: mbpg ...")
        ours = run_mbpg(algo, env_id, steps, args.seed)
        console.print(f"  mbpg: {ours['steps_per_second']:,.0f} steps/s steady, {ours['end_to_end_seconds']:.1f} s "
                      f"end to end (first chunk, with compilation: {ours['first_chunk_seconds']:.1f} s); SB3 ...")
        theirs, sb3_command = run_driver(python, DRIVER, ["--algo", algo, "--steps", str(steps), "--seed",
                                                          str(args.seed), "--eval-episodes", str(EVAL_EPISODES)],
                                         console, "SB3")
        console.print(f"  SB3:  {theirs['steps_per_second']:,.0f} steps/s, {theirs['learn_seconds']:.1f} s in learn"
                      f"  [dim]({shlex.join(sb3_command)})[/]")
        sb3_versions = theirs["versions"]
        rows.append((name, env_id, ours, theirs))

    table = Table(title=f"mbpg vs Stable-Baselines3: env steps/s and return (seed {args.seed}, "
                        f"{EVAL_EPISODES} deterministic eval episodes)")
    for column, justify in (("case", "left"), ("steps", "right"), ("mbpg steps/s\nsteady", "right"),
                            ("mbpg steps/s\nend to end", "right"), ("SB3 steps/s\nlearn", "right"),
                            ("ratio\nmbpg/SB3", "right"), ("mbpg\neval return", "right"),
                            ("SB3\neval return", "right"),
                            (f"target: >= {SPEED_TARGET:g}x\nand return >= SB3\n(or within 2 SE)", "left")):
        table.add_column(column, justify=justify)
    for name, env_id, ours, theirs in rows:
        ratio = ours["steps_per_second"] / theirs["steps_per_second"]
        steps = f"{ours['steps']:,}" if ours["steps"] == theirs["steps"] else f"{ours['steps']:,} / {theirs['steps']:,}"
        verdict = f"speed {'yes' if ratio >= SPEED_TARGET else 'NO'}, return {return_verdict(ours, theirs)}"
        table.add_row(f"{name} {env_id}", steps, f"{ours['steps_per_second']:,.0f}",
                      f"{ours['end_to_end_steps_per_second']:,.0f}", f"{theirs['steps_per_second']:,.0f}",
                      f"{ratio:.1f}x", f"{ours['eval_return']:.1f} ± {ours['eval_return_std']:.1f}",
                      f"{theirs['eval_return']:.1f} ± {theirs['eval_return_std']:.1f}", verdict)
    console.print(table)
    mbpg_versions = {name: metadata.version(name) for name in ("mbpg", "jax", "jaxlib", "equinox", "optax",
                                                                 "gymnasium", "numpy")}
    console.print(f"mbpg side: python {platform.python_version()}, "
                  + ", ".join(f"{k} {v}" for k, v in mbpg_versions.items())
                  + f"; JAX on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} cores, XLA's default threading)")
    console.print("SB3 side:  " + ", ".join(f"{k} {v}" for k, v in sb3_versions.items())
                  + f"; 1 torch thread, in {VENV.relative_to(HERE.parent)}")
    console.print("mbpg steady = chunks 2..n-1 (compilation and the final evaluation excluded); end to end = the "
                  "whole train() call; SB3 = model.learn.")
    console.print(f"command: {command}")


if __name__ == "__main__":
    main()
