"""`mbpg sweep SPEC`: algorithms x environments x seeds x option grids, run in-process by default or as Ray Tune
trials on a cluster (`--ray ADDRESS`; Ray is an optional extra: `pip install 'mbpg[ray]'`).

A spec is YAML, JSON or a Python file defining `SPEC = {...}`:

    algos: [ppo, trpo, reinforce]          # required
    envs: [CartPole-v1, Pendulum-v1]       # required
    seeds: 3                               # a count (0, 1, 2) or a list of seeds
    steps: 20000                           # env steps per trial
    eval_every: 2000                       # optional, default steps / 10
    eval_episodes: 10                      # optional
    options: {ppo: "--n-steps 64"}         # optional, fixed options per algorithm
    grid: {ppo: {learning-rate: [3e-4, 1e-3]}}   # optional, every combination is a trial

Every trial trains one seed into OUT/trials/TRIAL_ID through the same path as `mbpg train`, and its outcome
(finished, or failed with its error) is a row of OUT/results.csv, rewritten after each trial, so a crash of one
trial (an algorithm that cannot run on an env, a diverging model) is recorded and the sweep goes on. Re-running
the same spec skips trials whose run already reached the budget. `mbpg plot OUT` draws the finished trials.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import re
import shlex
import time
import traceback
from pathlib import Path

from rich.console import Console

from mbpg.train.loop import CHECKPOINT_NAME, run_reached

RESULTS = "results.csv"
SPEC_KEYS = ("algos", "envs", "seeds", "steps", "eval_every", "eval_episodes", "options", "grid")
FIELDS = ("trial", "algo", "env", "seed", "options", "status", "eval_return", "steps", "seconds", "run_dir", "error")


@dataclasses.dataclass
class SweepArgs:
    spec: Path
    """The sweep specification (.yaml, .yml, .json, or .py defining SPEC)."""
    out: Path = Path("runs/sweep")
    """Directory of the sweep: results.csv and one run directory per trial under trials/."""
    ray: str | None = None
    """Run trials as Ray Tune trials on this cluster address ('auto' joins a running cluster, 'local' starts
    one in this process); default: in-process, one trial after another."""


@dataclasses.dataclass(frozen=True)
class Trial:
    id: str
    algo: str
    env: str
    seed: int
    options: tuple[str, ...]
    steps: int
    eval_every: int
    eval_episodes: int

    def argv(self, run_dir: Path) -> list[str]:
        return ["--env", self.env, "--steps", str(self.steps), "--seed", str(self.seed), "--seeds", "1",
                "--out", str(run_dir), "--eval-every", str(self.eval_every), "--eval-episodes",
                str(self.eval_episodes), "--no-tensorboard", *self.options]


def load_spec(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"sweep spec {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}".splitlines()[0]) from None
    elif suffix == ".json":
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    elif suffix == ".py":
        import runpy

        spec = runpy.run_path(str(path)).get("SPEC")
        if spec is None:
            raise ValueError(f"{path} defines no SPEC dict; add SPEC = {{'algos': [...], 'envs': [...], ...}}.")
    else:
        raise ValueError(f"sweep spec {path} must end in .yaml, .yml, .json or .py.")
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a mapping with keys {', '.join(SPEC_KEYS)}.")
    return spec


def _names(spec: dict, key: str) -> list[str]:
    value = spec.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"the spec's {key!r} must be a non-empty list of names.")
    return value


def _positive_int(spec: dict, key: str, default: int | None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"the spec's {key!r} must be a positive integer; got {value!r}.")
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def expand_trials(spec: dict) -> list[Trial]:
    """Every (algo, env, seed, grid point), validated before anything trains."""
    from mbpg.algos import get_algorithm
    from mbpg.envs import make

    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], SPEC_KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown key {unknown[0]!r} in the sweep spec; keys are {', '.join(SPEC_KEYS)}.{hint}")
    algos, envs = _names(spec, "algos"), _names(spec, "envs")
    for algo in algos:
        get_algorithm(algo)
    for env in envs:
        make(env)  # unknown ids fail here with close matches
    seeds = spec.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"the spec's 'seeds' must be a positive count or a list of seeds; got {seeds}.")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"the spec's 'seeds' must be a positive count or a list of non-negative ints; got {seeds!r}.")
    steps = _positive_int(spec, "steps", None)
    eval_every = _positive_int(spec, "eval_every", max(1, steps // 10))
    eval_episodes = _positive_int(spec, "eval_episodes", 10)
    options, grid = spec.get("options") or {}, spec.get("grid") or {}
    for key, table in (("options", options), ("grid", grid)):
        if not isinstance(table, dict) or any(a not in algos for a in table):
            raise ValueError(f"the spec's {key!r} must map algorithms of 'algos' ({', '.join(algos)}) to values.")
    trials = []
    for algo in algos:
        fixed = options.get(algo, "")
        if not isinstance(fixed, (str, list)) or (isinstance(fixed, list) and any(isinstance(v, (dict, list))
                                                                               for v in fixed)):
            raise ValueError(f"the spec's options for {algo} must be one string of CLI options or a list of them "
                             f"(e.g. \"--learning-rate 3e-4\"); got {fixed!r}.")
        fixed = shlex.split(fixed) if isinstance(fixed, str) else [str(v) for v in fixed]
        axes = grid.get(algo, {})
        if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
            raise ValueError(f"grid for {algo} must map option names to non-empty lists of values.")
        names = [name.lstrip("-").replace("_", "-") for name in axes]
        for point in itertools.product(*axes.values()):
            grid_args = [a for name, value in zip(names, point) for a in (f"--{name}", str(value))]
            for env in envs:
                for seed in seeds:
                    label = "-".join([algo, env, f"s{seed}", *(f"{n}={v}" for n, v in zip(names, point))])
                    argv = tuple(fixed + grid_args)
                    # The readable label drops characters and leaves out the fixed options and budgets; the hash
                    # of everything the trial runs with keeps two different trials out of one run directory.
                    digest = hashlib.sha1(json.dumps([algo, env, seed, argv, steps, eval_every, eval_episodes])
                                          .encode()).hexdigest()[:8]
                    trials.append(Trial(f"{_slug(label)}-{digest}", algo, env, seed, argv, steps, eval_every,
                                        eval_episodes))
    ids = [t.id for t in trials]
    if len(set(ids)) < len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"the spec asks for the trial {twice} more than once (a repeated seed or grid value); "
                         "list each once.")
    _check_options(trials)
    return trials


def _check_options(trials: list[Trial]) -> None:
    """Parse each distinct (algorithm, options) once before anything trains: a misspelt option otherwise failed
    every trial, each recorded as a bare 'SystemExit: 2'."""
    import contextlib
    import io

    from mbpg.train.run import parse_train

    for algo, argv in dict.fromkeys((t.algo, t.options) for t in trials):
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                parse_train(algo, list(argv))
        except SystemExit:
            reason = " ".join(line.strip() for line in errors.getvalue().splitlines() if line.strip("│╭╰─ "))
            raise ValueError(f"the options for {algo} do not parse: {shlex.join(argv)}; see `mbpg train {algo} "
                             f"--help`. {reason[-300:]}") from None


def _final_return(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.csv"
    if not metrics.exists():
        return None
    with open(metrics, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval_return")]
    return float(rows[-1]["eval_return"]) if rows else None


def run_trial(trial: Trial, out: Path) -> dict:
    """Train one trial (resuming a killed one); never raises: a failure is a row with its error."""
    from mbpg.train.run import parse_train, run_training

    run_dir = Path(out) / "trials" / trial.id
    row = {"trial": trial.id, "algo": trial.algo, "env": trial.env, "seed": trial.seed,
           "options": shlex.join(trial.options), "run_dir": str(run_dir), "steps": trial.steps}
    started = time.perf_counter()
    try:
        if not run_reached(run_dir, trial.steps):
            argv = trial.argv(run_dir) + (["--resume"] if (run_dir / CHECKPOINT_NAME).exists() else [])
            run_training(trial.algo, parse_train(trial.algo, argv), console=Console(quiet=True))
        return {**row, "status": "finished", "eval_return": _final_return(run_dir),
                "seconds": round(time.perf_counter() - started, 1), "error": ""}
    except (Exception, SystemExit) as error:  # a trial's crash is data, not the end of the sweep
        message = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
        (run_dir).mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return {**row, "status": "failed", "eval_return": None, "seconds": round(time.perf_counter() - started, 1),
                "error": message}


def read_results(out: Path) -> dict[str, dict]:
    path = Path(out) / RESULTS
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["trial"]: row for row in csv.DictReader(handle)}


def write_results(out: Path, rows: dict[str, dict]) -> Path:
    path = Path(out) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows.values():
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})
    os.replace(partial, path)
    return path


def _run_with_ray(trials: list[Trial], out: Path, address: str, console: Console) -> list[dict]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ValueError("--ray needs Ray Tune, an optional extra: pip install 'mbpg[ray]' (or run the sweep "
                         "in-process by leaving out --ray).") from None
    out = Path(out).resolve()
    by_id = {t.id: t for t in trials}
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})

    def trainable(config):
        row = run_trial(by_id[config["trial"]], out)
        tune.report({k: ("" if v is None else v) for k, v in row.items()})

    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                       param_space={"trial": tune.grid_search(list(by_id))},
                       run_config=tune.RunConfig(name="mbpg-sweep", storage_path=str(out / "ray"), verbose=0))
    grid = tuner.fit()
    rows = []
    for result in grid:
        trial_id = (result.config or {}).get("trial")
        if result.error is not None or not result.metrics:
            trial = by_id[trial_id]
            rows.append({"trial": trial.id, "algo": trial.algo, "env": trial.env, "seed": trial.seed,
                         "options": shlex.join(trial.options), "status": "failed", "error": str(result.error)})
        else:
            rows.append({k: result.metrics.get(k) for k in FIELDS})
    console.print(f"Ray Tune ran {len(rows)} trial(s) on {address}")
    return rows


def run_sweep(args: SweepArgs, console: Console | None = None) -> Path:
    console = console or Console()
    trials = expand_trials(load_spec(args.spec))
    rows = read_results(args.out)
    todo = [t for t in trials if not (rows.get(t.id, {}).get("status") == "finished"
                                      and run_reached(Path(args.out) / "trials" / t.id, t.steps))]
    console.print(f"[bold]mbpg sweep[/] {args.spec}: {len(trials)} trials, {len(trials) - len(todo)} already "
                  f"finished, {len(todo)} to run {'on Ray at ' + args.ray if args.ray else 'in-process'}")
    if args.ray:
        for row in _run_with_ray(todo, args.out, args.ray, console):
            rows[row["trial"]] = row
    else:
        for index, trial in enumerate(todo, 1):
            row = run_trial(trial, args.out)
            rows[trial.id] = row
            write_results(args.out, rows)
            detail = f"return {row['eval_return']:.1f}" if row["status"] == "finished" and row["eval_return"] \
                is not None else row["error"]
            console.print(f"[{index}/{len(todo)}] {trial.id}: {row['status']} ({detail})")
    path = write_results(args.out, {t.id: rows[t.id] for t in trials if t.id in rows})
    failed = sum(rows[t.id]["status"] == "failed" for t in trials if t.id in rows)
    console.print(f"results: {path} ({len(trials) - failed} finished, {failed} failed)")
    return path


def sweep_run_dirs(out: Path) -> tuple[list[Path], dict[str, str]]:
    """The finished trials' run directories and a label per run (algo on env, plus grid options) for plots."""
    rows = read_results(out)
    if not rows:
        raise ValueError(f"{out} holds no {RESULTS}; is it a sweep directory?")
    runs, labels = [], {}
    for row in rows.values():
        if row["status"] == "finished":
            run = Path(row["run_dir"])
            runs.append(run)
            labels[str(run)] = f"{row['algo']} on {row['env']}" + (f" [{row['options']}]" if row["options"] else "")
    if not runs:
        raise ValueError(f"no finished trials in {Path(out) / RESULTS}.")
    return runs, labels
