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
