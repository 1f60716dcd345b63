"""The lab atlas on a tiny grid: complete, paired, consistent with its own raw table, deterministic per seed."""

import json

import numpy as np
import pytest

from mbpg.cli import main
from mbpg.lab.atlas import AtlasConfig, AtlasGrid, by_point, read_csv, run_atlas_grid, summarise

TINY = dict(families=("gridworld 3x3 slip .1",), gammas=(0.5,), sample_sizes=(2, 6), n_estimates=30)


@pytest.fixture(scope="module")
def tiny():
    return run_atlas_grid(AtlasGrid(**TINY), seed=0)


def test_every_point_has_every_estimator_and_consistent_statistics(tiny):
    rows = tiny["rows"]
    points = by_point(rows)
    assert len(points) == 5 * 2 and not tiny["skipped"]  # 5 models x 2 sample sizes
    assert all(set(entry) == {"gpomdp", "mvg-dp", "fmg", "auto", "equal-mix"} for entry in points.values())
    for row in rows:
        assert np.isclose(row.mse, row.bias**2 + row.variance, rtol=1e-6)
        assert np.isclose(row.normalised_mse, row.mse / row.truth_norm2)
    for entry in points.values():  # the selector's mean weights lie on the simplex
        assert np.isclose(sum(entry[name].weight for name in ("gpomdp", "mvg-dp", "fmg")), 1.0, atol=1e-4)
    # With an exact model every candidate is unbiased for the truth; the model-free row is the same estimator at
    # every model error (paired draws differ only by the model's randomness).
    exact = points[("gridworld 3x3 slip .1", "dial", 0.0, 0.5, 6)]
    assert exact["mvg-dp"].variance < exact["gpomdp"].variance


def test_summary_ratios_match_the_raw_rows(tiny):
    summary = summarise(tiny["rows"])
    points = by_point(tiny["rows"])
    for point in summary["per_point"]:
        entry = points[point["point"]]
        best = min(("gpomdp", "mvg-dp", "fmg"), key=lambda e: entry[e].mse)
        assert point["best"] == best and np.isclose(point["auto_ratio"], entry["auto"].mse / entry[best].mse)
        assert np.isclose(point["auto_to_equal_mix"], entry["auto"].mse / entry["equal-mix"].mse)
        assert point["interval"][0] <= point["auto_ratio"] <= point["interval"][1]  # the bootstrap brackets it
    assert summary["worst_auto_ratio"] == max(p["auto_ratio"] for p in summary["per_point"])
    assert "equal-mix" not in summary["wins"]  # a reference column, not a contender
    means = summary["mean_normalised_mse"]
    assert np.isclose(means["auto"], np.mean([e["auto"].normalised_mse for e in points.values()]))


def test_cli_atlas_writes_outputs_and_is_deterministic(tmp_path, tiny):
    out = tmp_path / "atlas"
    args = ["lab", "atlas", "--families", "gridworld 3x3 slip .1", "--gammas", "0.5", "--sample-sizes", "2", "6",
            "--n-estimates", "30", "--out", str(out)]
    assert main(args) == 0
    for name in ("atlas.csv", "report.md", "config.json", "atlas_winner.png", "atlas_auto_ratio.png"):
        assert (out / name).stat().st_size > 0, name
    rows = read_csv(out / "atlas.csv")
    assert [r.mse for r in rows] == pytest.approx([r.mse for r in tiny["rows"]], rel=1e-12)  # same seed
    assert "auto's MSE / best fixed MSE: worst" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["n_estimates"] == 30


@pytest.mark.parametrize("args, message", [
    (["--families", "nowhere"], "unknown atlas families"),
    (["--sample-sizes", "1", "4"], "must each be >= 2"),
    (["--gammas", "1.0"], "must lie in"),
])
def test_cli_atlas_rejects_bad_grids(tmp_path, capsys, args, message):
    assert main(["lab", "atlas", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_atlas_help_and_the_default_grid_is_the_documented_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lab", "atlas", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--full" in text and "--out" in text
    grid = AtlasConfig().grid()
    assert grid.n_points == 180 and grid.sample_sizes == (4, 16, 64) and grid.gammas == (0.8, 0.9)
