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


def tensorboard_visible(run_dir):
    """{(tag, step)} as TensorBoard shows a run directory: event files in name order, and a SessionLog START at
    step s (tensorboardX's purge_step) hides every event read before it with step >= s."""
    import struct

    from tensorboardX.proto import event_pb2

    seen: list[tuple[str, int]] = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                seen = [(tag, step) for tag, step in seen if step < event.step]
            seen += [(value.tag, event.step) for value in event.summary.value]
    return set(seen)


def test_tensorboard_events_survive_a_kill_and_a_resume(tmp_path):
    """Events up to the last checkpoint are on disk when it is written (tensorboardX's flush left them queued, and
    a kill lost them), and --resume hides only the steps it redoes (it hid the checkpoint's own step too)."""
    def settings(total):
        return LoopSettings(total_steps=total, seed=3, n_seeds=1, eval_every=30, eval_episodes=2,
                            checkpoint_every=20, tensorboard=True)

    train(RandomWalkAgent(), double_integrator(), "lqr", settings(100), tmp_path / "full")
    killed = {}

    def progress(info):
        if info["steps"] == 70:
            # The process dies here: what is on disk now is all a resume finds (the checkpoint is at 60).
            killed["on_disk"] = tensorboard_visible(tmp_path / "cut")
            raise Killed

    with pytest.raises(Killed):
        train(RandomWalkAgent(), double_integrator(), "lqr", settings(100), tmp_path / "cut", progress=progress)
    assert {step for _, step in killed["on_disk"]} >= {10, 20, 30, 40, 50, 60}
    train(RandomWalkAgent(), double_integrator(), "lqr", settings(100), tmp_path / "cut", resume=True)
    full = tensorboard_visible(tmp_path / "full")
    assert {step for _, step in full} == set(range(10, 101, 10))
    assert tensorboard_visible(tmp_path / "cut") == full


def test_metrics_csv_is_rewritten_only_for_new_columns_and_atomically(tmp_path, monkeypatch):
    """metrics.csv was rewritten in place for every evaluation row (its new-column test looked at the first row
    only, which has no evaluation columns), so a kill during a rewrite lost rows a checkpoint already covered."""
    from mbpg.train.logger import RunLogger

    rewrites = []
    original = RunLogger._rewrite
    monkeypatch.setattr(RunLogger, "_rewrite", lambda self: (rewrites.append(1), original(self)))
    logger = RunLogger(tmp_path, {}, tensorboard=False)
    for step in range(1, 11):
        logger.log(step, {"loss": step, **({"eval_return": -step} if step % 2 == 0 else {})})
    assert len(rewrites) == 2  # the first row, and the first with an evaluation column
    rows = read(tmp_path / "metrics.csv")
    assert [r["eval_return"] for r in rows] == ["", "-2.0", "", "-4.0", "", "-6.0", "", "-8.0", "", "-10.0"]

    def dies_half_way(self, rows):
        self.writerow(rows[0])
        raise Killed

    monkeypatch.setattr(csv.DictWriter, "writerows", dies_half_way)
    with pytest.raises(Killed):
        logger.log(11, {"loss": 11, "new_column": 1})
    assert read(tmp_path / "metrics.csv") == rows


def test_a_fresh_run_clears_the_events_of_a_run_that_died_before_its_first_checkpoint(tmp_path):
    stale = tmp_path / "run" / "tensorboard" / "events.out.tfevents.0.stale"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    settings = LoopSettings(total_steps=20, seed=3, n_seeds=1, eval_every=30, eval_episodes=1, checkpoint_every=20,
                            tensorboard=True)
    train(RandomWalkAgent(), double_integrator(), "lqr", settings, tmp_path / "run")
    assert not stale.exists()  # its curves would have mixed into this run's
    assert {step for _, step in tensorboard_visible(tmp_path / "run")} == {10, 20}


def test_a_resume_records_its_new_settings_in_config_json(tmp_path):
    """config.json kept the first --steps and evaluation options of a run extended by --resume."""
    import json

    def settings(total, episodes):
        return LoopSettings(total_steps=total, seed=3, n_seeds=1, eval_every=30, eval_episodes=episodes,
                            checkpoint_every=20, tensorboard=False)

    train(RandomWalkAgent(), double_integrator(), "lqr", settings(40, 1), tmp_path / "run")
    train(RandomWalkAgent(), double_integrator(), "lqr", settings(80, 3), tmp_path / "run", resume=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["total_steps"], config["eval_episodes"], config["resumed_at_steps"]) == (80, 3, [40])
    assert config["algo"] == "random-walk"
