import json
import math

import numpy as np
import pytest

from mbpg.cli import main
from mbpg.envs import garnet
from mbpg.lab import estimator_quality, summarise_draws
from mbpg.lab.report import read_csv


def test_summary_statistics_on_known_draws():
    rng = np.random.default_rng(0)
    truth = np.array([1.0, 0.0])
    draws = truth + np.array([0.5, 0.0]) + rng.normal(size=(20_000, 2)) * [0.1, 0.2]
    stats = summarise_draws(draws, truth)
    assert abs(stats["bias"] - 0.5) < 0.01
    assert abs(stats["variance"] - (0.01 + 0.04)) < 0.003
    assert np.isclose(stats["mse"], stats["bias"] ** 2 + stats["variance"])  # the decomposition is exact
    assert 0.9 < stats["cosine"] < 1.0


def test_quality_grid_is_complete_and_consistent():
    mdp = garnet(5, 2, 2, gamma=0.6, seed=1)
    logits = np.random.default_rng(0).normal(size=(5, 2))
    rows = estimator_quality(mdp, logits, ["gpomdp", "fmg"], [0.0, 0.5], [2], n_estimates=300, horizon=16, seed=0)
    assert len(rows) == 4
    gpomdp = [r for r in rows if r.estimator == "gpomdp"]
    fmg = {r.model_error: r for r in rows if r.estimator == "fmg"}
    # Model-free rows do not depend on the model.
    assert gpomdp[0].mse == gpomdp[1].mse and gpomdp[0].population_bias == 0
    # FMG's exact bias is zero with an exact model and grows with the model error; the sampled bias agrees:
    # E||mean - truth||^2 = population_bias^2 + variance / n_estimates.
    assert fmg[0.0].population_bias == 0 and fmg[0.5].population_bias > 0.01
    for row in fmg.values():
        expected = row.population_bias**2 + row.variance / row.n_estimates
        assert 0.2 * expected < row.bias**2 < 3 * expected
    assert all(np.isclose(r.mse, r.bias**2 + r.variance) for r in rows)
    again = estimator_quality(mdp, logits, ["gpomdp", "fmg"], [0.0, 0.5], [2], n_estimates=300, horizon=16, seed=0)
    assert [r.mse for r in rows] == [r.mse for r in again]  # same seed, same numbers


def test_pathwise_estimators_report_no_population_gradient_and_unstable_models_no_q():
    """svg's mean is not the MVG gradient once the model is wrong (its inferred noise absorbs the error), so the
    lab reports no population bias for it rather than MVG's; and Q on a model where the policy is unstable is
    undefined (NaN), not the finite nonsense of an unstable evaluation."""
    import jax.numpy as jnp

    from mbpg.envs import double_integrator
    from mbpg.values import evaluate_lqr, exact_action_value_fn

    lqr = double_integrator(gamma=0.8)
    gain = 0.5 * np.asarray(lqr.optimal_gain())
    rows = estimator_quality(lqr, gain, ["svg", "mvg-dp"], [0.05], [2], n_estimates=20, seed=0)
    population = {r.estimator: r.population_bias for r in rows}
    assert np.isnan(population["svg"]) and np.isfinite(population["mvg-dp"]) and population["mvg-dp"] > 0
    unstable = -np.asarray(lqr.optimal_gain()) * 4.0
    assert not bool(evaluate_lqr(lqr, jnp.asarray(unstable)).stable)
    assert np.isnan(exact_action_value_fn(lqr, jnp.asarray(unstable))(jnp.ones(2), jnp.ones(1)))
    assert np.isfinite(exact_action_value_fn(lqr, jnp.asarray(gain))(jnp.ones(2), jnp.ones(1)))


def test_cli_lab_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["lab", "chain", "--estimators", "gpomdp", "mvg-dp", "--model-errors", "0", "0.3",
                 "--sample-sizes", "2", "4", "--n-estimates", "20", "--horizon", "12", "--out", str(out)])
    assert code == 0
    for name in ("results.csv", "config.json", "report.md", "mse_vs_model_error.png", "bias_variance.png",
                 "cosine_vs_n.png"):
        assert (out / name).stat().st_size > 0, name
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 * 2 * 2 and {r.estimator for r in rows} == {"gpomdp", "mvg-dp"}
    assert json.loads((out / "config.json").read_text())["scenario"] == "chain"
    report = (out / "report.md").read_text()
    assert "Which gradient wins" in report and "![mse](mse_vs_model_error.png)" in report
    assert "MSE to the true gradient" in capsys.readouterr().out


def test_cli_rejects_unknown_scenario_and_estimator(tmp_path, capsys):
    assert main(["lab", "gridwrld", "--out", str(tmp_path)]) == 2
    assert "unknown lab scenario 'gridwrld'" in capsys.readouterr().err
    assert main(["lab", "--estimators", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown estimator 'magic'" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert "Did you mean train" in capsys.readouterr().err


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lab", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--scenario", "--estimators", "--error-kind", "--model-errors", "--sample-sizes",
                   "--n-estimates", "--horizon", "--baseline", "--n-rollouts", "--seed", "--out"):
        assert option in text, option
    assert "Independent estimates per grid point" in text


def test_an_estimator_with_nan_mse_never_wins_a_grid_point():
    """A NaN MSE (Q undefined where the policy is unstable on the model) met first stayed 'best' (NaN < x is
    False): report.md named mvg-dp the winner 'x inf' at LQR model errors where it was undefined."""
    from mbpg.lab.quality import QualityRow, best_per_point
    from mbpg.lab.report import winners_table

    def row(name, mse, error=1.0):
        return QualityRow(name, "MVG", "relative", error, 0.1, 4, 0.0, mse, mse, 1.0, 0.1, math.nan, 0.0, 10)

    for rows in ([row("mvg-dp", math.nan), row("gpomdp", 5.0), row("fmg", 8.0)],
                 [row("gpomdp", 5.0), row("mvg-dp", math.nan), row("fmg", 8.0)]):
        assert best_per_point(rows)[(1.0, 4)].estimator == "gpomdp"
        assert winners_table(rows) == [["1", "gpomdp (x1.60)"]]
    assert winners_table([row("mvg-dp", math.nan)]) == [["1", "n/a (no finite MSE)"]]
