"""Fuzzing the command line: any argument list ends in help, a one-line error, or a run; never a traceback.

The heavy parts (the lab sweep, the training loop) are replaced by a sentinel, so every example exercises the
parsing and validation that happen before them, in milliseconds.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mbpg.lab.run
import mbpg.train.run
from mbpg.cli import main


class ReachedTheRun(Exception):
    """Validation passed and the real work would start here."""


def stop(*args, **kwargs):
    raise ReachedTheRun


WORDS = ["lab", "train", "plot", "trian", "", "ppo", "sac", "trpo", "reinforce", "gridworld", "lqr", "chain",
         "--help", "--env", "--steps", "--seeds", "--seed", "--out", "--resume", "--estimators", "--model-errors",
         "--sample-sizes", "--n-estimates", "--horizon", "--baseline", "--error-kind", "--learning-rate",
         "--hidden", "--n-envs", "--n-steps", "--batch-size", "--clip", "--max-kl", "--metric", "--bootstrap",
         "CartPole-v1", "Pendulum-v1", "Pendulm-v1", "mvg-dp", "gpomdp", "svg", "magic", "constant", "learned",
         "adversarial", "0", "1", "-1", "2", "0.5", "1e9", "nan", "inf", "-0.3", "abc", "/nonexistent/dir"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), min_size=0, max_size=7))
def test_any_argument_list_ends_cleanly(monkeypatch, capsys, args):
    monkeypatch.setattr(mbpg.lab.run, "estimator_quality", stop)
    monkeypatch.setattr(mbpg.train.run, "train", stop)
    try:
        code = main(args)
    except SystemExit as exit_:  # tyro's own usage errors and --help
        code = exit_.code
    except ReachedTheRun:
        return
    assert code in (0, 2), f"exit code {code} for {args}"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2 and err.startswith("mbpg"):
        assert err.count("\n") == 1, f"a multi-line error for {args}: {err!r}"


@pytest.mark.parametrize("args", [
    ["lab", "--n-estimates", "0"],
    ["lab", "--sample-sizes", "-1"],
    ["lab", "--model-errors", "nan"],
    ["train", "ppo", "--steps", "-5"],
    ["train", "ppo", "--seeds", "0"],
    ["train", "ppo", "--hidden", "0"],
    ["train", "sac", "--batch-size", "0"],
])
def test_nonsense_numbers_are_refused_before_any_work(monkeypatch, capsys, args):
    monkeypatch.setattr(mbpg.lab.run, "estimator_quality", stop)
    monkeypatch.setattr(mbpg.train.run, "train", stop)
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("mbpg")
