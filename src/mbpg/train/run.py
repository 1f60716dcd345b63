"""`mbpg train ALGO`: build the environment and the agent, run the loop with a progress bar."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mbpg.algos import get_algorithm, make_agent
from mbpg.train.checkpoint import CheckpointError, read_metadata
from mbpg.train.loop import CHECKPOINT_NAME, LoopSettings, train


@dataclasses.dataclass
class TrainArgs:
    env: str = "CartPole-v1"
    """Environment id: a JAX port (Pendulum-v1, CartPole-v1, MountainCarContinuous-v0, CartPoleSwingUp-v0) runs
    compiled and vmapped over seeds; any other Gymnasium id (e.g. InvertedPendulum-v5) steps on the host."""
    steps: int = 100_000
    """Environment steps per seed."""
    seed: int = 0
    """Seed of the run: its --seeds keys are jax.random.split(key(seed), seeds), labelled seed, seed+1, ... in
    metrics.csv (labels only: the second seed of --seed 0 --seeds 2 is not the run --seed 1)."""
    seeds: int = 1
    """Seeds trained at once as one vmapped program."""
    out: Path | None = None
    """Run directory (default: runs/ALGO-ENV-TIMESTAMP)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint (same options, possibly more --steps)."""
    eval_every: int = 5000
    """Evaluate the deterministic policy every this many env steps."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many env steps (a killed run loses at most this much work)."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.csv."""


def parse_train(algo: str, args: list[str]):
    config_class, _, _ = get_algorithm(algo)
    command = dataclasses.make_dataclass(
        f"Train{algo.capitalize()}",
        [("algo", Annotated[config_class, tyro.conf.OmitArgPrefixes], dataclasses.field(default_factory=config_class))],
        bases=(TrainArgs,),
    )
    command.__doc__ = f"Train {algo} on one environment and write metrics, TensorBoard events and checkpoints."
    return tyro.cli(command, args=args, prog=f"mbpg train {algo}")


def run_training(algo: str, parsed, console: Console | None = None) -> Path:
    from mbpg.envs import make

    console = console or Console()
    for option in ("steps", "seeds", "eval_every", "eval_episodes", "checkpoint_every"):
        if getattr(parsed, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be a positive integer; got {getattr(parsed, option)}.")
    env = make(parsed.env)
    out = parsed.out or Path("runs") / f"{algo}-{parsed.env}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    resumed_steps = 0
    if parsed.resume:
        try:
            resumed_steps = read_metadata(out / CHECKPOINT_NAME)["steps"]
        except CheckpointError as error:
            raise ValueError(f"--resume: {error}") from None
    elif (out / CHECKPOINT_NAME).exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
    agent = make_agent(algo, parsed.algo, env)
    settings = LoopSettings(parsed.steps, parsed.seed, parsed.seeds, parsed.eval_every, parsed.eval_episodes,
                            parsed.checkpoint_every, parsed.tensorboard)
    console.print(f"[bold]mbpg train[/] {algo} on {parsed.env}: {parsed.steps:,} steps x {parsed.seeds} seed(s) "
                  f"-> {out}")
    chunk = agent.steps_per_chunk
    planned = -(-parsed.steps // chunk) * chunk
    if planned != parsed.steps:
        console.print(f"{algo} trains in chunks of {chunk:,} env steps: --steps {parsed.steps:,} runs {planned:,}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[rate]}"), console=console) as progress:
        task = progress.add_task("compiling", total=planned, completed=min(resumed_steps, planned), rate="")

        def report(info):
            text = f"{info['steps_per_second']:,.0f} steps/s"
            if info["eval_return"] is not None:
                text += f"  eval return {info['eval_return']:.1f}"
            progress.update(task, completed=info["steps"], description="training", rate=text)

        final = train(agent, env, parsed.env, settings, out, resume=parsed.resume, progress=report)
    if "eval_return" in final:
        console.print(f"final evaluation return per seed: {[round(float(r), 1) for r in final['eval_return']]}",
                      markup=False)  # "[nan, nan]" would be read as a markup tag and vanish
    console.print(f"metrics: {out / 'metrics.csv'}")
    return out
