"""Every algorithm through the CLI on a tiny budget, plus the CLI's bad-input errors, the plot command and the
off-policy chunk's metrics."""

import csv
import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from mbpg.algos import make_agent
from mbpg.algos.sac import SACConfig
from mbpg.cli import main
from mbpg.envs import make

TINY = {
    "reinforce": ["--env", "CartPole-v1", "--steps", "256", "--n-envs", "2", "--n-steps", "64"],
    "ppo": ["--env", "CartPole-v1", "--steps", "128", "--n-envs", "2", "--n-steps", "32"],
    "trpo": ["--env", "Pendulum-v1", "--steps", "128", "--n-envs", "2", "--n-steps", "32", "--value-minibatches", "2"],
    "sac": ["--env", "Pendulum-v1", "--steps", "100", "--chunk-steps", "50", "--learning-starts", "20",
            "--batch-size", "16", "--hidden", "16", "16", "--buffer-size", "1000"],
    "apois": ["--env", "CartPole-v1", "--steps", "1000", "--n-episodes", "2", "--offline-iterations", "2"],
    "ppois": ["--env", "CartPole-v1", "--steps", "1000", "--n-episodes", "2", "--offline-iterations", "2"],
}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_every_algorithm_trains_through_the_cli(algo, tmp_path):
    out = tmp_path / algo
    args = ["train", algo, *TINY[algo], "--seeds", "2", "--eval-every", "64", "--eval-episodes", "1",
            "--checkpoint-every", "64", "--out", str(out)]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"step", "seed", "eval_return"} <= set(rows[0])
    finals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    assert finals and all(math.isfinite(v) for v in finals)
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == algo and config["n_seeds"] == 2
    assert (out / "checkpoint.eqx").exists() and any((out / "tensorboard").iterdir())
    # Asking for more steps with --resume continues the same run.
    more = [a if a != TINY[algo][3] else str(2 * int(a)) for a in args]
    assert main([*more, "--resume"]) == 0
    assert main(args) == 2  # a second run into the same directory without --resume is refused


def test_plot_draws_learning_curves_across_seeds(tmp_path):
    out = tmp_path / "ppo"
    assert main(["train", "ppo", *TINY["ppo"], "--seeds", "3", "--eval-every", "64", "--eval-episodes", "1",
                 "--out", str(out), "--no-tensorboard"]) == 0
    figure = tmp_path / "curves.png"
    assert main(["plot", str(out), "--out", str(figure), "--bootstrap", "50"]) == 0
    assert figure.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["train", "ppx"], "unknown algorithm 'ppx'; choose one of reinforce, ppo, trpo, sac, "),
    (["train", "ppx"], "Did you mean ppo"),
    (["train", "pilcp"], "Did you mean pilco"),  # pilco has its own driver, but is a `mbpg train` choice
    (["train", "gamps"], "gamps is not trained by this command: GAMPS runs its own loop"),
    (["train", "uim"], "mbpg lab train --env lqr --gradient uim"),
    (["train", "ppo", "--env", "CartPol-v1"], "CartPole-v1"),
    (["train", "sac", "--env", "CartPole-v1"], "SAC here is for continuous actions"),
    (["train", "ppo", "--steps", "10"], "below one training chunk"),
    (["train", "ppo", "--resume", "--out", "/nonexistent/run"], "no checkpoint"),
    (["plot", "/nonexistent/run"], "is not a run directory"),
    # fewer samples than minibatches once left the value net untrained without a word (NaN loss, zero gradients)
    (["train", "trpo", "--n-envs", "1", "--n-steps", "8"], "cannot fill --value-minibatches 16"),
    (["train", "reinforce", "--n-envs", "1", "--n-steps", "3"], "cannot fill the value fit's 4 minibatches"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_where_the_other_algorithms_live_exists():
    """The hint for gamps/uim names Python functions and benchmark scripts: each must exist, so it cannot go stale."""
    import importlib
    import re
    from pathlib import Path

    from mbpg.algos import ELSEWHERE

    root = Path(__file__).resolve().parents[1]
    for hint in ELSEWHERE.values():
        functions = re.findall(r"(mbpg(?:\.\w+)+)\.(\w+)", hint)
        scripts = re.findall(r"(\w+\.py)", hint)
        assert functions and scripts, hint
        for module, name in functions:
            assert callable(getattr(importlib.import_module(module), name)), (module, name)
        for script in scripts:
            assert (root / "benchmarks" / script).is_file(), script


def test_same_seed_same_metrics_for_a_real_agent(tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["train", "ppo", *TINY["ppo"], "--seeds", "2", "--eval-every", "64", "--eval-episodes", "2",
                     "--out", str(out), "--no-tensorboard"]) == 0
        runs.append((out / "metrics.csv").read_text())
    assert runs[0] == runs[1]


@pytest.mark.parametrize("algo, options", [
    ("ppo", ["--steps", "64", "--n-envs", "2", "--n-steps", "32"]),
    ("sac", ["--steps", "40", "--chunk-steps", "20", "--learning-starts", "10", "--batch-size", "8", "--hidden", "8",
             "--buffer-size", "100"]),
])
def test_host_side_gymnasium_env_trains_with_the_same_agents(algo, options, tmp_path):
    """A MuJoCo id has no JAX port: it steps on the host, and the agent code is the same."""
    out = tmp_path / algo
    args = ["train", algo, "--env", "InvertedPendulum-v5", *options, "--eval-every", "20", "--eval-episodes", "1",
            "--out", str(out), "--no-tensorboard"]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["eval_return"]]
    assert rows and all(float(r["eval_return"]) >= 1 for r in rows)


def test_host_side_envs_refuse_vmapped_seeds(capsys):
    assert main(["train", "ppo", "--env", "InvertedPendulum-v5", "--seeds", "2", "--out", "/tmp/unused"]) == 2
    assert "one seed per process" in capsys.readouterr().err


def test_compare_trains_groups_by_gradient_type_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--algos", "ppo,apois", "--env", "CartPole-v1", "--steps", "1000", "--seeds", "2",
            "--eval-episodes", "1", "--budgets", "500", "1000", "--out", str(out),
            "--algo-options", "ppo=" + " ".join(TINY["ppo"][4:]), "apois=" + " ".join(TINY["apois"][4:])]
    assert main(args) == 0
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["algo"], r["gradient_type"], r["budget"]) for r in rows] == [
        ("ppo", "MFG", "500"), ("ppo", "MFG", "1000"), ("apois", "MFG", "500"), ("apois", "MFG", "1000")]
    assert all(len(r["per_seed"].split()) == 2 for r in rows if r["budget"] == "1000")
    assert (out / "compare.png").stat().st_size > 0
    before = (out / "ppo" / "metrics.csv").read_text()
    assert main(args) == 0 and "already reached" in capsys.readouterr().out  # finished runs are reused, not redone
    assert (out / "ppo" / "metrics.csv").read_text() == before
    # ... but only when they were made with these options: another seed once reused them silently
    assert main(["compare", "--seed", "5", *args[1:]]) == 2
    assert "seed=0, but this run has seed=5" in capsys.readouterr().err
    assert (out / "ppo" / "metrics.csv").read_text() == before
    assert main(["compare", "--algos", "ppo,sacc", "--out", str(out)]) == 2
    assert "did you mean sac" in capsys.readouterr().err.lower()
    assert main(["compare", "--algos", "ppo", "--algo-options", "sac=--batch-size 4", "--out", str(out)]) == 2


def test_off_policy_chunk_metrics_average_only_the_steps_that_updated():
    """A chunk in which SAC starts learning reports its losses over the steps that updated, not diluted by the
    zeros of the steps before learning_starts; a chunk with no update reports NaN (the logger skips it)."""
    env = make("Pendulum-v1")
    agent = make_agent("sac", SACConfig(batch_size=8, hidden=(8,), learning_starts=13, chunk_steps=20,
                                        buffer_size=64), env)
    state = agent.init(jax.random.key(0))
    _, metrics = jax.jit(agent.train_chunk)(state)
    # The chunk's own steps, one by one (train_chunk's key use), to read every step's metrics.
    key, key_steps = jax.random.split(state.key)
    _, infos = jax.lax.scan(agent.env_step, dataclasses.replace(state, key=key),
                            jax.random.split(key_steps, agent.steps_per_chunk))
    updated = np.asarray(infos["updated"]) > 0
    assert 0 < updated.sum() < agent.steps_per_chunk
    losses = [k for k in metrics if k not in ("train_episode_return",)]
    assert losses and "updated" not in metrics
    for name in losses:
        steps = np.asarray(infos[name])
        assert np.all(steps[~updated] == 0)
        np.testing.assert_allclose(metrics[name], steps[updated].mean(), rtol=1e-5, atol=1e-7)
    late = make_agent("sac", SACConfig(batch_size=8, hidden=(8,), learning_starts=100, chunk_steps=20,
                                       buffer_size=64), env)
    _, metrics = jax.jit(late.train_chunk)(late.init(jax.random.key(0)))
    assert all(np.isnan(metrics[name]) for name in losses)


def test_a_diverged_seed_stays_nan_in_the_curves_instead_of_an_earlier_return(tmp_path):
    """load_curves dropped 'nan' cells and kept the steps every seed shares, so one diverged seed made `compare`
    report every seed's earlier evaluation under the final budget."""
    from mbpg.train.compare import return_at_budget
    from mbpg.train.plot import load_curves

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"algo": "sac", "env": "Pendulum-v1"}')
    (run / "metrics.csv").write_text("step,seed,loss,eval_return\n100,0,1.0,-5.0\n100,1,1.0,-6.0\n150,0,1.0,\n"
                                     "150,1,1.0,\n200,0,1.0,-4.0\n200,1,nan,nan\n")
    (label, (steps, values)), = load_curves([run], "eval_return").items()
    assert steps.tolist() == [100, 200]  # the empty cells (no evaluation at 150) are not values
    at = return_at_budget(steps, values, 200)
    assert at[0] == -4.0 and np.isnan(at[1])
