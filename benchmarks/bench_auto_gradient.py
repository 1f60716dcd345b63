"""`--gradient auto` in training: learning curves of the adaptive selector against each fixed gradient type
(MFG, MVG, FMG), 5 seeds each, on the default gridworld, an LQR and Pendulum-v1.

    .venv/bin/python benchmarks/bench_auto_gradient.py                      # everything (~75 min on 2 cores)
    .venv/bin/python benchmarks/bench_auto_gradient.py --part lab           # gridworld and LQR only (~5 min)
    .venv/bin/python benchmarks/bench_auto_gradient.py --part pendulum
    .venv/bin/python benchmarks/bench_auto_gradient.py --report-only        # table and figure from --out

- gridworld / LQR: `mbpg.lab.training` (policy-gradient ascent with the lab's estimators gpomdp, mvg-dp, fmg and
  auto; the model is re-fitted every iteration from all real transitions so far; the curve is the EXACT return
  J(theta) of every iterate, so there is no evaluation noise).
- Pendulum-v1: REINFORCE (`mbpg train reinforce --gradient ...`, 16 envs x 200 steps per update, gamma 0.9), the
  deterministic policy evaluated on 10 episodes per seed.

The claim checked (issue 6): auto is never worse than the best fixed type by more than the seed-to-seed spread.
Per env, the score of a run is the mean over the curve's points of the return (area under the learning curve,
so speed counts as much as the end point) and its last point; "spread" is the standard deviation over seeds of
the best fixed type's score. Writes results.json, results.md and learning_curves.png to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench_model_based_trpo import read_curve  # (steps, eval returns [seeds, points]) of a run

# auto cross-fits its weights at these N (10, 200 trajectories, 16 environments: >= CROSS_FIT_MIN_UNITS);
# auto-is is the same selector with in-sample weights, for comparison (auto-cf, always cross-fitted, equals auto
# here and is not re-run).
GRADIENTS = {"pendulum": ("mfg", "mvg", "fmg", "auto", "auto-is"),
             "gridworld": ("gpomdp", "mvg-dp", "fmg", "auto", "auto-is"),
             "lqr": ("gpomdp", "mvg-dp", "fmg", "auto", "auto-is")}
TYPE = {"mfg": "MFG", "gpomdp": "MFG", "mvg": "MVG", "mvg-dp": "MVG", "fmg": "FMG", "auto": "auto",
        "auto-cf": "auto", "auto-is": "auto"}
PENDULUM_STEPS = 1_536_000
PENDULUM_OPTIONS = ["--n-envs", "16", "--n-steps", "200", "--gamma", "0.9"]
# The LQR's score-function gradients are noisy (per-coordinate sd ~15x the gradient at N = 50): with N = 50 and
# no baseline no estimator made progress in 100 steps (exact J drifted from -8.685 to -8.83..-8.87, J* = -8.18),
# so the LQR runs take N = 200 with the leave-one-out constant baseline (for every candidate alike).
LAB_OPTIONS = {"gridworld": {"iterations": 30, "n_trajectories": 10},
               "lqr": {"iterations": 80, "n_trajectories": 200, "learning_rate": 0.02, "max_step": 0.1,
                       "baseline": "constant"}}


def run_pendulum(out: Path, seeds: int, console: Console, only=None) -> dict:
    from mbpg.train.run import parse_train, run_training

    curves = {}
    for gradient in GRADIENTS["pendulum"]:
        if only and gradient not in only:
            continue
        run = out / "pendulum" / gradient
        for stale in ("checkpoint.eqx", "metrics.csv"):
            if (run / stale).exists():
                (run / stale).unlink()
        parsed = parse_train("reinforce", ["--env", "Pendulum-v1", "--steps", str(PENDULUM_STEPS), "--seeds",
                                           str(seeds), "--out", str(run), "--eval-every", "96000", "--eval-episodes",
                                           "10", "--no-tensorboard", "--gradient", gradient, *PENDULUM_OPTIONS])
        start = time.perf_counter()
        run_training("reinforce", parsed, console=Console(quiet=True))
        console.print(f"pendulum {gradient}: {time.perf_counter() - start:.0f} s")
        curves[gradient] = read_curve(run / "metrics.csv")
    return curves


def run_lab(env_name: str, seeds: int, console: Console, only=None) -> dict:
    from mbpg.lab.training import LabTrainingConfig, train_lab

    curves = {}
    for gradient in GRADIENTS[env_name]:
        if only and gradient not in only:
            continue
        start = time.perf_counter()
        returns = np.stack([train_lab(LabTrainingConfig(env=env_name, gradient=gradient, seed=seed,
                                                        **LAB_OPTIONS[env_name]))["returns"]
                            for seed in range(seeds)])
        console.print(f"{env_name} {gradient}: {time.perf_counter() - start:.0f} s")
        curves[gradient] = (np.arange(returns.shape[1]), returns)
    return curves


def score(curves: dict) -> dict:
    """Per gradient: per-seed mean-over-curve and last-point returns, and the verdict for each selector."""
    rows = {}
    for gradient, (_, returns) in curves.items():
        rows[gradient] = {"area": returns.mean(1).tolist(), "final": returns[:, -1].tolist()}
    verdict = {}
    for selector in (g for g in rows if TYPE[g] == "auto"):
        for measure in ("area", "final"):
            fixed = {g: np.mean(r[measure]) for g, r in rows.items() if TYPE[g] != "auto"}
            best = max(fixed, key=fixed.get)
            spread = float(np.std(rows[best][measure], ddof=1))
            gap = float(fixed[best] - np.mean(rows[selector][measure]))
            verdict[f"{selector}, {measure}"] = {"best_fixed": best, "gap": gap, "spread": spread, "ok": gap <= spread}
    return {"runs": rows, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "lab", "pendulum"], default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", action="append", help="train only this gradient (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-auto-gradient"))
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild from --out")
    args = parser.parse_args()
    console = Console(width=160)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "curves.json"

    def save(env_name: str, curves: dict) -> dict:  # re-read first: --part lab and --part pendulum may run at once
        saved = json.loads(store.read_text()) if store.exists() else {}
        saved.setdefault(env_name, {}).update({g: [s.tolist(), r.tolist()] for g, (s, r) in curves.items()})
        store.write_text(json.dumps(saved))
        return saved

    saved = json.loads(store.read_text()) if store.exists() else {}
    if not args.report_only:
        if args.part in ("all", "lab"):
            for env_name in ("gridworld", "lqr"):
                saved = save(env_name, run_lab(env_name, args.seeds, console, args.only))
        if args.part in ("all", "pendulum"):
            saved = save("pendulum", run_pendulum(args.out, args.seeds, console, args.only))
    else:  # the Pendulum curves are re-read from their run directories (the metrics are the record)
        finished = {g: read_curve(args.out / "pendulum" / g / "metrics.csv") for g in GRADIENTS["pendulum"]
                    if (args.out / "pendulum" / g / "metrics.csv").exists()}
        if finished:
            saved = save("pendulum", finished)
    curves = {env: {g: (np.asarray(s), np.asarray(r)) for g, (s, r) in runs.items()} for env, runs in saved.items()}
    results = {env: score(runs) for env, runs in curves.items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(args.out, results, console)
    draw(args.out, curves)


def report(out: Path, results: dict, console: Console) -> None:
    lines = ["| env | gradient | mean return over the curve (per-seed mean ± sd) | final return (mean ± sd) |",
             "|---|---|---|---|"]
    table = Table(title="--gradient auto vs fixed gradient types (5 seeds)")
    for column in ("env", "gradient", "mean over curve", "final"):
        table.add_column(column)
    verdicts = []
    for env, result in results.items():
        for gradient, run in result["runs"].items():
            cells = [env, f"{gradient} ({TYPE[gradient]})",
                     f"{np.mean(run['area']):.4g} ± {np.std(run['area'], ddof=1):.2g}",
                     f"{np.mean(run['final']):.4g} ± {np.std(run['final'], ddof=1):.2g}"]
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
        for measure, v in result["verdict"].items():
            verdicts.append(f"- {env}, {measure}: best fixed {v['best_fixed']}; {v['gap']:.3g} below it "
                            f"(negative: above), seed spread (sd of the best) {v['spread']:.3g}: "
                            f"{'within' if v['ok'] else 'NOT within'} the spread")
    console.print(table)
    for line in verdicts:
        console.print(line)
    (out / "results.md").write_text("\n".join(lines + [""] + verdicts) + "\n")


def draw(out: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mbpg.lab.report import STYLES

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for axis, (env, runs) in zip(axes[0], curves.items()):
        for gradient, (steps, returns) in runs.items():
            mean, sd = returns.mean(0), returns.std(0, ddof=1)
            kind = TYPE[gradient]
            line, = axis.plot(steps, mean, STYLES.get(kind.upper(), "-"), label=f"{gradient} ({kind})",
                              linewidth=2.2 if kind == "auto" else 1.4)
            axis.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        axis.set_title(env)
        axis.set_xlabel("env steps" if env == "pendulum" else "iteration")
        axis.set_ylabel("eval return" if env == "pendulum" else "exact J(theta)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("--gradient auto vs fixed gradient types (mean ± sd over 5 seeds)")
    figure.tight_layout()
    figure.savefig(out / "learning_curves.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
