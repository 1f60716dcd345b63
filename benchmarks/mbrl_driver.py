"""mbrl-lib side of benchmarks/bench_mbpo_speed.py: train mbrl-lib's MBPO on Pendulum-v1, time it, print one JSON line.

Runs inside benchmarks/.venv-mbrl (mbrl 0.2.0 with the pins and config patches that bench_mbpo_speed.py records;
no mbpg), started by bench_mbpo_speed.py:

    benchmarks/.venv-mbrl/bin/python benchmarks/mbrl_driver.py --steps 1500 --seed 0 [--json result.json]
    benchmarks/.venv-mbrl/bin/python benchmarks/mbrl_driver.py --print-settings   # the settings dict, no training

The configuration is mbrl-lib's own: the three YAML files its MBPO example composes (conf/algorithm/mbpo.yaml,
conf/dynamics_model/gaussian_mlp_ensemble.yaml, conf/overrides/mbpo_inv_pendulum.yaml, read from the installed
package with OmegaConf), merged under one root as Hydra would, then changed only where Pendulum-v1 or the
benchmark needs it (PENDULUM_CHANGES, printed in the result). Training is mbrl-lib's `mbrl.algorithms.mbpo.train`
itself, unmodified; the driver only wraps a few of the functions it calls, to read the clock and count work:

  exploration   `mbrl.util.common.rollout_agent_trajectories` (the initial exploration steps, before the loop)
  model fit     `mbrl.util.common.train_model_and_save_model_and_data` (ensemble training, epochs counted)
  rollouts      `mbrl.algorithms.mbpo.rollout_model_and_populate_sac_buffer` (branched model rollouts)
  SAC updates   `SAC.update_parameters` of mbrl's bundled pytorch_sac_pranz24
  evaluation    `mbrl.algorithms.mbpo.evaluate` (its one-episode evaluation after every epoch)
  env steps     `mbrl.util.common.step_env_and_add_to_buffer` (counted inside the loop only)

mbrl's loop tests overrides.num_steps only between epochs, so it runs num_steps rounded up to whole epochs (200
env steps here); the driver counts the env steps it really took. Env steps per second = those steps /
(training-loop wall-clock minus the per-epoch evaluations), where the training loop runs from the end of the
initial exploration to the return of `train`. Steady env steps per second
(the figure the benchmark compares) leaves out the first freq_train_model steps as well: before the first model
fit the SAC buffer is empty and no update runs, so it is (num_steps - freq_train_model) / (time from the start of
the first model fit to the end, minus the evaluations in it). The same steps per CPU-second of this process
over that window estimate the rate on an idle core (torch runs on ONE thread, mbrl-lib's fastest setting on 2
cores, as for SB3), the figure to read when other processes share the machine. At the end, 10 deterministic episodes (mean action) of the
final agent on a fresh unseeded Pendulum-v1.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

ENV_ID = "Pendulum-v1"
CONFIG_FILES = {"algorithm": "algorithm/mbpo.yaml", "dynamics_model": "dynamics_model/gaussian_mlp_ensemble.yaml",
                "overrides": "overrides/mbpo_inv_pendulum.yaml"}
"""Group -> file under mbrl/examples/conf: what `python -m mbrl.examples.main algorithm=mbpo
overrides=mbpo_inv_pendulum` composes (dynamics_model is main.yaml's default)."""
PENDULUM_CHANGES = {
    "overrides.env": "gym___Pendulum-v1",  # informational: the driver makes the env itself (gymnasium.make)
    "overrides.term_fn": "no_termination",  # Pendulum never terminates (inverted_pendulum's angle test would)
    "overrides.epoch_length": 200,  # = one Pendulum episode (mbrl resets the env at each epoch start; its own
                                    # 200-step cartpole config does the same); InvertedPendulum used 250
    "device": "cpu",
    # Hydra >= 1.1 instantiates nested configs recursively by default; 1.0.3, which mbrl 0.2.0 was written
    # for, did not. Without these two, Hydra would try to build algorithm.agent.action_space (_target_ gym.env.Box,
    # a module that no longer exists) and pass a built SiLU where GaussianMLP expects its config.
    "algorithm.agent._recursive_": False,
    "dynamics_model._recursive_": False,
}
"""Every change made to mbrl-lib's inverted-pendulum MBPO configuration (dotted key -> value)."""


def mbrl_conf_dir() -> Path:
    import mbrl

    return Path(mbrl.__file__).resolve().parent / "examples" / "conf"


def build_config(seed: int, steps: int, initial_steps: int | None):
    """mbrl-lib's composed MBPO config for Pendulum-v1 (an OmegaConf DictConfig), and the list of changes made."""
    from omegaconf import OmegaConf

    conf = mbrl_conf_dir()
    groups = {group: OmegaConf.load(conf / path) for group, path in CONFIG_FILES.items()}
    main_defaults = OmegaConf.load(conf / "main.yaml")
    root = {key: main_defaults[key] for key in ("log_frequency_agent", "save_video", "debug_mode")}
    cfg = OmegaConf.create({**groups, **root, "seed": seed, "device": main_defaults.device})
    changes = dict(PENDULUM_CHANGES)
    changes["overrides.num_steps"] = steps
    if initial_steps is not None:
        changes["algorithm.initial_exploration_steps"] = initial_steps
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg, changes


def settings_dict(cfg) -> dict:
    """The settings the mbpg side must match, read from the resolved config (names are mbrl-lib's meanings)."""
    a, m, o = cfg.algorithm, cfg.dynamics_model, cfg.overrides
    hidden_model = [int(m.hid_size)] * int(m.num_layers)
    # mbrl's schedule: [first epoch, last epoch, length at/before the first, length at/after the last], linear between
    epoch_lo, epoch_hi, length_lo, length_hi = (int(v) for v in o.rollout_schedule)
    return {
        "env": ENV_ID,
        "steps": int(o.num_steps),
        "initial_exploration_steps": int(a.initial_exploration_steps),
        "initial_exploration_policy": "random" if a.random_initial_explore else "untrained SAC agent, sampled",
        "real_env_action": "deterministic (mean) action of SAC",  # step_env_and_add_to_buffer with agent_kwargs {}
        "epoch_length": int(o.epoch_length),
        "ensemble_size": int(m.ensemble_size),
        "num_elites": int(o.num_elites),
        "model_hidden": hidden_model,
        "model_activation": str(m.activation_fn_cfg._target_).rsplit(".", 1)[-1],
        "model_deterministic": bool(m.deterministic),
        "model_learn_logvar_bounds": bool(m.learn_logvar_bounds),
        "model_propagation": str(m.propagation_method),
        "model_target_is_delta": bool(a.target_is_delta),
        "model_learned_rewards": bool(a.learned_rewards),
        "model_normalize_inputs": bool(a.normalize),
        "model_lr": float(o.model_lr),
        "model_weight_decay": float(o.model_wd),
        "model_batch_size": int(o.model_batch_size),
        "model_validation_ratio": float(o.validation_ratio),
        "model_train_every": int(o.freq_train_model),
        "model_max_epochs": o.get("num_epochs_train_model", None),  # None: until early stopping
        "model_patience": int(o.patience),
        "model_improvement_threshold": float(o.get("improvement_threshold", 0.01)),
        "model_bootstrap_permutes": bool(o.get("bootstrap_permutes", False)),
        "rollout_length_schedule": [epoch_lo, epoch_hi, length_lo, length_hi],
        "rollout_length": length_lo if length_lo == length_hi else None,  # None: it grows with the epoch
        "rollouts_per_step": int(o.effective_model_rollouts_per_step),
        "rollout_batch_per_retrain": int(o.effective_model_rollouts_per_step) * int(o.freq_train_model),
        "rollout_samples_action": bool(a.sac_samples_action),
        "model_buffer_epochs_retained": int(o.num_epochs_to_retain_sac_buffer),
        "real_data_ratio": float(a.real_data_ratio),
        "sac_updates_per_step": int(o.num_sac_updates_per_step),
        "sac_batch_size": int(o.sac_batch_size),
        "sac_hidden": [int(o.sac_hidden_size)] * 2,
        "sac_activation": "ReLU",  # pytorch_sac_pranz24's QNetwork and GaussianPolicy
        "sac_lr": float(o.sac_lr),
        "sac_gamma": float(o.sac_gamma),
        "sac_tau": float(o.sac_tau),
        "sac_initial_alpha": float(o.sac_alpha),
        "sac_automatic_entropy_tuning": bool(o.sac_automatic_entropy_tuning),
        "sac_target_entropy": float(o.sac_target_entropy),
        "sac_target_update_interval": int(o.sac_target_update_interval),
        "eval_episodes_during_training": int(a.num_eval_episodes),
    }


class Clock:
    """Accumulated wall-clock and call counts of wrapped functions."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.events: list[tuple[str, float, float]] = []  # (name, start, end) of every wrapped call
        self.first_cpu: dict[str, float] = {}  # process CPU time at the start of each name's first call

    def first(self, name: str) -> tuple[float, float]:
        return next((start, end) for event, start, end in self.events if event == name)

    def seconds_after(self, name: str, moment: float) -> float:
        return sum(end - start for event, start, end in self.events if event == name and start >= moment)

    def wrap(self, name: str, function, after=None):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self.first_cpu.setdefault(name, time.process_time())
            start = time.perf_counter()
            result = function(*args, **kwargs)
            end = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - start
            self.calls[name] = self.calls.get(name, 0) + 1
            self.events.append((name, start, end))
            if after:
                after(args, kwargs, result)
            return result

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1600,
                        help="env steps of the training loop (overrides.num_steps; mbrl rounds it up to whole epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--initial-steps", type=int, default=None,
                        help="initial exploration steps before the loop (default: mbrl-lib's 5000)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    parser.add_argument("--print-settings", action="store_true", help="print the settings dict as JSON and exit")
    args = parser.parse_args()

    started = time.perf_counter()
    cfg, changes = build_config(args.seed, args.steps, args.initial_steps)
    settings = settings_dict(cfg)
    if args.print_settings:
        print(json.dumps({"settings": settings, "changes": changes}), flush=True)
        return

    import gymnasium as gym
    import numpy as np
    import torch

    import mbrl.algorithms.mbpo as mbpo
    import mbrl.env.termination_fns as termination_fns
    import mbrl.models
    import mbrl.planning.sac_wrapper
    import mbrl.util.common
    from mbrl.third_party.pytorch_sac_pranz24.sac import SAC

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only allowed once per process)
        pass
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    clock = Clock()
    model_fits: list[dict] = []
    captured: dict = {}

    def record_fit(call_args, call_kwargs, _result):
        replay_buffer = call_args[3] if len(call_args) > 3 else call_kwargs["replay_buffer"]
        model_fits.append({"data": len(replay_buffer), "epochs": captured.pop("epochs", None)})

    def record_epochs(_args, _kwargs, result):
        captured["epochs"] = len(result[0])  # training losses, one per epoch

    class RecordedSACAgent(mbrl.planning.sac_wrapper.SACAgent):
        def __init__(self, sac_agent):
            super().__init__(sac_agent)
            captured["agent"] = self

    mbrl.util.common.rollout_agent_trajectories = clock.wrap("exploration",
                                                              mbrl.util.common.rollout_agent_trajectories)
    mbrl.util.common.train_model_and_save_model_and_data = clock.wrap(
        "model_fit", mbrl.util.common.train_model_and_save_model_and_data, after=record_fit)
    mbrl.models.ModelTrainer.train = clock.wrap("model_trainer_train", mbrl.models.ModelTrainer.train,
                                                after=record_epochs)
    mbrl.util.common.step_env_and_add_to_buffer = clock.wrap("env_steps", mbrl.util.common.step_env_and_add_to_buffer)
    mbpo.rollout_model_and_populate_sac_buffer = clock.wrap("rollouts", mbpo.rollout_model_and_populate_sac_buffer)
    mbpo.evaluate = clock.wrap("epoch_evaluation", mbpo.evaluate)
    mbpo.SACAgent = RecordedSACAgent
    SAC.update_parameters = clock.wrap("sac_updates", SAC.update_parameters)

    env, test_env = gym.make(ENV_ID), gym.make(ENV_ID)
    env.reset(seed=args.seed)
    env.action_space.seed(args.seed)
    test_env.reset(seed=args.seed + 1000)
    term_fn = getattr(termination_fns, cfg.overrides.term_fn)

    with tempfile.TemporaryDirectory(prefix="mbrl-mbpo-") as work_dir:
        train_start = time.perf_counter()
        best = mbpo.train(env, test_env, term_fn, cfg, silent=True, work_dir=work_dir)
        train_end = time.perf_counter()
        train_end_cpu = time.process_time()

    exploration_start, loop_start = clock.first("exploration")
    loop_seconds = train_end - loop_start
    timed_seconds = loop_seconds - clock.seconds_after("epoch_evaluation", loop_start)
    # Steady state: from the first model fit (at env step freq_train_model, before which the SAC buffer is empty
    # and no SAC update runs) to the end.
    # Env steps of the loop (the exploration calls the same function): mbrl's loop tests num_steps only between
    # epochs, so this is num_steps rounded up to whole epochs.
    steps = sum(1 for name, start, _ in clock.events if name == "env_steps" and start >= loop_start)
    first_fit = clock.first("model_fit")[0] if clock.calls.get("model_fit") else None
    steady_steps = steps - int(cfg.overrides.freq_train_model)
    steady_seconds = (train_end - first_fit - clock.seconds_after("epoch_evaluation", first_fit)
                      if first_fit else None)
    # CPU time of this process over the same window (one torch thread, so about the wall-clock it would take on
    # an otherwise idle core): the figure to read when other processes share the machine.
    steady_cpu = (train_end_cpu - clock.first_cpu["model_fit"] - clock.seconds_after("epoch_evaluation", first_fit)
                  if first_fit else None)

    # Final evaluation: deterministic (mean) actions of the final agent on a fresh unseeded env.
    agent = captured["agent"]
    eval_env = gym.make(ENV_ID)
    returns = []
    for _ in range(args.eval_episodes):
        obs, _ = eval_env.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = eval_env.step(agent.act(obs, sample=False))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)

    mean_return = sum(returns) / len(returns)
    result = {
        "side": "mbrl-lib", "env": ENV_ID, "seed": args.seed, "steps": steps,
        "initial_exploration_steps": int(cfg.algorithm.initial_exploration_steps),
        "asked_steps": int(cfg.overrides.num_steps),
        "steps_per_second": steps / timed_seconds,
        "steady_steps_per_second": steady_steps / steady_seconds if steady_seconds and steady_steps > 0 else None,
        "steady_steps": steady_steps, "steady_seconds": steady_seconds, "steady_cpu_seconds": steady_cpu,
        "steady_steps_per_cpu_second": steady_steps / steady_cpu if steady_cpu and steady_steps > 0 else None,
        "loop_seconds": loop_seconds, "timed_seconds": timed_seconds,
        "exploration_seconds": loop_start - exploration_start,
        "setup_seconds": exploration_start - train_start,
        "breakdown_seconds": {name: clock.seconds.get(name, 0.0) for name in
                              ("model_fit", "model_trainer_train", "rollouts", "sac_updates", "epoch_evaluation")},
        "calls": dict(clock.calls),
        "model_fits": model_fits,
        "mean_model_epochs": (sum(f["epochs"] for f in model_fits) / len(model_fits)) if model_fits else None,
        "eval_return": mean_return,
        "eval_return_std": math.sqrt(sum((r - mean_return) ** 2 for r in returns) / len(returns)),
        "eval_returns": returns, "eval_episodes": len(returns),
        "best_epoch_eval_return": float(best),
        "settings": settings, "changes": changes,
        "torch_threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - started,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{name: metadata.version(name) for name in ("mbrl", "hydra-core", "omegaconf", "gymnasium",
                                                                  "numpy")}},
    }
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
