"""`mbpg train pilco`: PILCO's episodic loop under the run-directory contract of `mbpg train`.

PILCO does not fit the chunked loop of `train/loop.py`: its GP data grow every episode and its policy search is
host-side L-BFGS. So it has this driver, with the same outputs as every other agent's run: `config.json`,
`metrics.csv` (one row per real episode: `step` = real env steps so far, `eval_return` = that episode's real
return, i.e. H minus its total cost, plus the predicted and real costs), TensorBoard events, a checkpoint after
every episode (atomic and checksummed; `--resume` continues from it, so a killed run loses at most the episode in
progress, and ends in the same numbers as an uninterrupted one), and `pilco_cost.png`, the predicted vs real cost
of the latest episode.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Annotated

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mbpg.algos.pilco import PILCOConfig, PilcoEpisode, PilcoState, pilco_iteration, pilco_start
from mbpg.train.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from mbpg.train.logger import RunLogger
from mbpg.train.loop import CHECKPOINT_NAME


@dataclasses.dataclass
class PilcoTrainArgs:
    """Train PILCO on CartPoleSwingUp-v0: one random episode, then up to --n-iterations learned ones."""

    seed: int = 0
    """Seed of the initial policy, the random episode and every real episode's start state."""
    out: Path | None = None
    """Run directory (default: runs/pilco-ENV-TIMESTAMP)."""
    resume: bool = False
    """Continue the run in --out from its last episode's checkpoint (same options; --n-iterations may grow)."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.csv."""
    algo: Annotated[PILCOConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=PILCOConfig)


def parse_pilco(args: list[str]) -> PilcoTrainArgs:
    """tyro parse; `--env` is accepted for `--env-id`, as every other `mbpg train` command spells it."""
    args = ["--env-id" if a == "--env" else "--env-id=" + a[6:] if a.startswith("--env=") else a for a in args]
    return tyro.cli(PilcoTrainArgs, args=args, prog="mbpg train pilco")


def _identity(args: PilcoTrainArgs) -> dict:
    """What must match for a checkpoint to be resumed: everything but the episode budget and the stopping rule."""
    config = {k: v for k, v in dataclasses.asdict(args.algo).items() if k not in ("n_iterations", "stop_on_success")}
    return {"algo": "pilco", "seed": args.seed, "config": config}


def plot_cost(episode: PilcoEpisode, path: Path, title: str) -> None:
    """Predicted mean +- 2 sd vs real cost per time step of one episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = 0.1 * np.arange(1, len(episode.real_cost) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    m, s = episode.predicted_mean, episode.predicted_std
    ax.fill_between(t, np.clip(m - 2 * s, 0, 1), np.clip(m + 2 * s, 0, 1), alpha=0.3, label="predicted ± 2 sd")
    ax.plot(t, m, label="predicted mean")
    ax.plot(t, episode.real_cost, "k.-", label="real")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("cost 1 - exp(-d² / (2·0.25²))")
    ax.set_title(title)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def episode_metrics(episode: PilcoEpisode, horizon: int) -> dict:
    """One episode's row: its real return (H minus its total cost), real and predicted total cost, the real cost of
    its last second (10 steps at dt 0.1), success, wall seconds. The benchmark's CSV uses the same row."""
    return {"episode": episode.episode, "eval_return": horizon - float(episode.real_cost.sum()),
            "real_cost": float(episode.real_cost.sum()), "predicted_cost": float(np.sum(episode.predicted_mean)),
            "last_second_real_cost": float(episode.real_cost[-10:].mean()), "success": float(episode.success),
            "seconds": episode.seconds}


def _load(path: Path, metadata: dict, args: PilcoTrainArgs, identity: dict) -> PilcoState:
    """The checkpointed state; its data arrays have as many rows as the episodes it had run (`metadata`)."""
    rows = metadata["episodes"] * args.algo.horizon
    template, _ = pilco_start(args.algo, jax.random.key(args.seed))
    template = eqx.tree_at(lambda s: (s.inputs, s.targets), template,
                           (jnp.zeros((rows, template.inputs.shape[1])), jnp.zeros((rows, template.targets.shape[1]))))
    return load_checkpoint(path, template, expected_metadata=identity)


def run_pilco(args: PilcoTrainArgs, console: Console | None = None) -> Path:
    console = console or Console()
    config = args.algo
    out = args.out or Path("runs") / f"pilco-{config.env_id}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    checkpoint = out / CHECKPOINT_NAME
    identity = _identity(args)
    if args.resume:
        try:
            saved = read_metadata(checkpoint)
        except CheckpointError as error:
            raise ValueError(f"--resume: {error}") from None
    elif checkpoint.exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
    total = config.n_iterations + 1
    console.print(f"[bold]mbpg train[/] pilco on {config.env_id}: up to {total} episodes of {config.horizon} steps "
                  f"-> {out}")
    with jax.enable_x64(True):
        if args.resume:
            state = _load(checkpoint, saved, args, identity)
            done, finished = saved["episodes"], saved.get("success", False) and config.stop_on_success
            logger = RunLogger(out, identity, resume_step=done * config.horizon, tensorboard=args.tensorboard)
        else:
            logger = RunLogger(out, {**identity, "n_iterations": config.n_iterations,
                                     "stop_on_success": config.stop_on_success}, tensorboard=args.tensorboard)
            state, episode = pilco_start(config, jax.random.key(args.seed))
            done, finished = 1, False
            logger.log(config.horizon, episode_metrics(episode, config.horizon))
            logger.flush()
            save_checkpoint(checkpoint, state, {**identity, "episodes": 1, "success": episode.success})
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("{task.fields[latest]}"), console=console) as progress:
                task = progress.add_task("policy search", total=total, completed=done, latest="")
                while done < total and not finished:
                    state, episode, _ = pilco_iteration(config, state)
                    done += 1
                    metrics = episode_metrics(episode, config.horizon)
                    logger.log(done * config.horizon, metrics)
                    logger.flush()
                    save_checkpoint(checkpoint, state, {**identity, "episodes": done, "success": episode.success})
                    plot_cost(episode, out / "pilco_cost.png", f"PILCO, seed {args.seed}, episode {done}")
                    finished = episode.success and config.stop_on_success
                    progress.update(task, completed=done, latest=(
                        f"episode {done}: real cost {metrics['real_cost']:.2f}, predicted "
                        f"{metrics['predicted_cost']:.2f}{', success' if episode.success else ''}"))
        finally:
            logger.close()
    console.print(f"metrics: {out / 'metrics.csv'}")
    return out
