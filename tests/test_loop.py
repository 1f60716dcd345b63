"""Loop invariants with a tiny deterministic agent: steps, evaluation, checkpoints, resume, determinism."""

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.envs import double_integrator
from mbpg.train.checkpoint import CheckpointError
from mbpg.train.loop import LoopSettings, train


@dataclasses.dataclass
class CounterConfig:
    scale: float = 0.1


class RandomWalkAgent:
    """Keeps a gain that takes a random step every chunk; acts u = K x. Enough to exercise the loop."""

    name = "random-walk"
    steps_per_chunk = 10

    def __init__(self, config=CounterConfig(scale=0.01)):
        self.config = config

    def init(self, key):
        return {"gain": jnp.asarray(double_integrator().optimal_gain(), jnp.float32), "key": key,
                "chunks": jnp.zeros((), jnp.int32)}

    def train_chunk(self, state):
        key, sub = jax.random.split(state["key"])
        gain = state["gain"] + self.config.scale * jax.random.normal(sub, (1, 2))
        return {"gain": gain, "key": key, "chunks": state["chunks"] + 1}, {"gain_norm": jnp.linalg.norm(gain)}

    def act(self, state, obs, key):
        return state["gain"] @ obs


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class Killed(Exception):
    pass


def run(tmp_path, name, total=100, resume=False, n_seeds=2, agent=None, kill_at=None):
    settings = LoopSettings(total_steps=total, seed=3, n_seeds=n_seeds, eval_every=30, eval_episodes=2,
                            checkpoint_every=20, tensorboard=False)

    def progress(info):
        if info["steps"] == kill_at:
            raise Killed  # the process dies here, after logging this chunk but before its next checkpoint

    return train(agent or RandomWalkAgent(), double_integrator(), "lqr", settings, tmp_path / name, resume=resume,
                 progress=progress)


def test_loop_counts_steps_evaluates_and_logs_every_seed(tmp_path):
    out = run(tmp_path, "a")
    rows = read(tmp_path / "a" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [s for s in range(10, 101, 10) for _ in range(2)]
    assert {r["seed"] for r in rows} == {"3.0", "4.0"}
    evaluated = sorted({int(r["step"]) for r in rows if r["eval_return"]})
    assert evaluated == [30, 60, 90, 100]
    assert np.asarray(out["state"]["chunks"]).tolist() == [10, 10]
    assert (tmp_path / "a" / "config.json").exists() and (tmp_path / "a" / "checkpoint.eqx").exists()


def test_same_seed_same_metrics(tmp_path):
    run(tmp_path, "a")
    run(tmp_path, "b")
    assert read(tmp_path / "a" / "metrics.csv") == read(tmp_path / "b" / "metrics.csv")


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path):
    run(tmp_path, "full", total=100)
    with pytest.raises(Killed):
        run(tmp_path, "cut", total=100, kill_at=70)  # checkpoints every 20 steps: the last one is at 60
    assert int(read(tmp_path / "cut" / "metrics.csv")[-1]["step"]) == 70
    # Rows logged after the checkpoint are dropped and redone.
    out = run(tmp_path, "cut", total=100, resume=True)
    assert read(tmp_path / "full" / "metrics.csv") == read(tmp_path / "cut" / "metrics.csv")
    assert np.asarray(out["state"]["chunks"]).tolist() == [10, 10]


def test_resume_refuses_a_different_configuration(tmp_path):
    run(tmp_path, "a", total=40)
    with pytest.raises(CheckpointError, match="n_seeds=2, but this run has n_seeds=1"):
        run(tmp_path, "a", total=100, resume=True, n_seeds=1)
    with pytest.raises(CheckpointError, match="config"):
        run(tmp_path, "a", total=100, resume=True, agent=RandomWalkAgent(CounterConfig(scale=0.5)))


def test_too_few_steps_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="below one training chunk"):
        run(tmp_path, "a", total=5)


def test_kill_9_mid_training_then_resume_gives_the_uninterrupted_final_state(tmp_path):
    """A real SIGKILL of `mbpg train` (REINFORCE with a learned model, so the model and its buffer are part of the
    state), then --resume: the final checkpoint is byte-identical (same payload hash) to an uninterrupted run's."""
    import json
    import signal
    import subprocess
    import sys
    import time

    def command(out, *extra):
        return [sys.executable, "-m", "mbpg.cli", "train", "reinforce", "--env", "Pendulum-v1", "--steps", "4000",
                "--gradient", "mvg", "--n-envs", "2", "--n-steps", "50", "--hidden", "8", "--model-members", "2",
                "--model-elites", "1", "--model-hidden", "8", "--model-buffer-size", "400", "--eval-every", "1000",
                "--eval-episodes", "1", "--checkpoint-every", "300", "--no-tensorboard", "--out", str(out), *extra]

    def payload_hash(out):
        with open(out / "checkpoint.eqx", "rb") as handle:
            return json.loads(handle.readline())["sha256"]

    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(command(full), check=True, capture_output=True)
    process = subprocess.Popen(command(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        metrics = cut / "metrics.csv"
        if (cut / "checkpoint.eqx").exists() and metrics.exists() and len(metrics.read_text().splitlines()) > 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; give it more --steps"
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows = len((cut / "metrics.csv").read_text().splitlines()) - 1
    assert 0 < rows < 40  # killed part-way (40 updates in all)
    subprocess.run(command(cut, "--resume"), check=True, capture_output=True)
    assert payload_hash(cut) == payload_hash(full)
    assert read(cut / "metrics.csv") == read(full / "metrics.csv")
