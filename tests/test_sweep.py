"""`mbpg sweep`: specs expand to validated trials, crashed trials are recorded and the sweep goes on, re-runs skip
finished trials, `mbpg plot` reads the sweep, and bad specs fail in one line."""

import csv
import importlib.util
import json

import pytest

from mbpg.cli import main
from mbpg.train.sweep import expand_trials

TINY_PPO = "--n-envs 2 --n-steps 32"


def write_spec(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def rows_of(out):
    with open(out / "results.csv", newline="") as handle:
        return {r["trial"]: r for r in csv.DictReader(handle)}


def test_sweep_records_failures_goes_on_and_skips_finished_trials(tmp_path, capsys):
    spec = write_spec(tmp_path, f"""
algos: [sac, ppo]
envs: [CartPole-v1]
seeds: [3]
steps: 256
eval_episodes: 1
options: {{ppo: "{TINY_PPO}"}}
""")
    out = tmp_path / "sweep"
    assert main(["sweep", spec, "--out", str(out)]) == 0
    rows = rows_of(out)
    sac_id, ppo_id = (next(i for i in rows if i.startswith(f"{algo}-CartPole-v1-s3-")) for algo in ("sac", "ppo"))
    assert rows[sac_id]["status"] == "failed"
    assert "continuous actions" in rows[sac_id]["error"]
    assert (out / "trials" / sac_id / "error.txt").exists()  # the traceback is kept for the user
    ppo = rows[ppo_id]
    assert ppo["status"] == "finished" and float(ppo["eval_return"]) > 0 and ppo["options"] == TINY_PPO
    config = json.loads((out / "trials" / ppo_id / "config.json").read_text())
    assert config["seed"] == 3 and config["config"]["n_steps"] == 32
    metrics = (out / "trials" / ppo_id / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(["sweep", spec, "--out", str(out)]) == 0
    assert "1 already finished, 1 to run" in capsys.readouterr().out  # the failed trial is retried, ppo is not
    assert (out / "trials" / ppo_id / "metrics.csv").read_text() == metrics
    # Another learning rate is another trial: it once shared the finished run's id and directory and was skipped.
    changed = write_spec(tmp_path, open(spec).read().replace(TINY_PPO, TINY_PPO + " --learning-rate 0.5"),
                         "changed.yaml")
    capsys.readouterr()
    assert main(["sweep", changed, "--out", str(out)]) == 0
    assert "0 already finished, 2 to run" in capsys.readouterr().out
    figure = tmp_path / "sweep.png"
    assert main(["plot", str(out), "--out", str(figure), "--bootstrap", "20"]) == 0 and figure.stat().st_size > 0


def test_grids_multiply_trials_and_python_specs_work(tmp_path):
    spec = {"algos": ["ppo", "trpo"], "envs": ["CartPole-v1", "Pendulum-v1"], "seeds": 2, "steps": 100,
            "grid": {"ppo": {"learning-rate": [1e-3, 3e-4], "gae_lambda": [0.9, 0.95]}}}
    trials = expand_trials(spec)
    assert len(trials) == (4 + 1) * 2 * 2 and len({t.id for t in trials}) == len(trials)
    first = next(t for t in trials if t.algo == "ppo")
    assert first.options == ("--learning-rate", "0.001", "--gae-lambda", "0.9")
    path = write_spec(tmp_path, f"SPEC = {spec!r}\n", "spec.py")
    from mbpg.train.sweep import load_spec

    assert expand_trials(load_spec(path)) == trials


@pytest.mark.parametrize("text, message", [
    ("algos: [ppo]\nenvs: [CartPole-v1]\nstep: 100\n", "unknown key 'step'"),
    ("algos: [ppx]\nenvs: [CartPole-v1]\nsteps: 100\n", "unknown algorithm 'ppx'"),
    ("algos: [ppo]\nenvs: [CartPol-v1]\nsteps: 100\n", "CartPole-v1"),
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 100\nseeds: 0\n", "'seeds' must be a positive count"),
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: -5\n", "'steps' must be a positive integer"),
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 100\ngrid: {sac: {tau: [0.1]}}\n", "'grid' must map algorithms"),
    ("algos: [ppo\n", "not valid YAML"),
    # checked before anything trains (each trial once failed as a bare 'SystemExit: 2')
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 100\ngrid: {ppo: {learnin-rate: [0.1]}}\n", "do not parse"),
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 100\noptions: {ppo: 5}\n", "one string of CLI options"),
    ("algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 100\nseeds: [0, 0]\n", "more than once"),
])
def test_bad_specs_are_one_clear_line(tmp_path, capsys, text, message):
    assert main(["sweep", write_spec(tmp_path, text), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_ray_is_optional_and_named_when_missing(tmp_path, capsys):
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("Ray is installed here; benchmarks/bench_sweep.py runs the Ray path")
    spec = write_spec(tmp_path, f"algos: [ppo]\nenvs: [CartPole-v1]\nsteps: 256\noptions: {{ppo: '{TINY_PPO}'}}\n")
    assert main(["sweep", spec, "--out", str(tmp_path / "o"), "--ray", "local"]) == 2
    assert "pip install 'mbpg[ray]'" in capsys.readouterr().err
