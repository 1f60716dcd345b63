"""Stable-Baselines3 side of benchmarks/bench_sb3.py: train one case, evaluate it, print one JSON line.

Runs inside benchmarks/.venv-sb3 (torch, stable-baselines3, gymnasium; no mbpg), started by bench_sb3.py:

    benchmarks/.venv-sb3/bin/python benchmarks/sb3_driver.py --algo sac --steps 20000 --seed 0

Torch is pinned to one thread (SB3 SAC on Pendulum-v1 is about 4.5x slower with two threads on the 2-core machine
this was written on). The hyperparameters are the ones mbpg's SACConfig / PPOConfig default to, all passed
explicitly so that a change of SB3 defaults cannot change the comparison. Env steps per second are timed around
`model.learn` alone (imports, model construction and evaluation excluded).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

ENVS = {"sac": "Pendulum-v1", "ppo": "CartPole-v1"}


def build(algo: str, seed: int):
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env

    if algo == "sac":  # = mbpg SACConfig(): the SB3 zoo's Pendulum-v1 setting
        return SAC("MlpPolicy", gym.make(ENVS[algo]), learning_rate=1e-3, buffer_size=1_000_000, learning_starts=100,
                   batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto_1.0",
                   target_entropy="auto", policy_kwargs=dict(net_arch=[256, 256], activation_fn=torch.nn.ReLU),
                   seed=seed, device="cpu", verbose=0)
    # = mbpg PPOConfig(): the SB3 zoo's CartPole-v1 setting with constant learning rate and clip range
    env = make_vec_env(ENVS[algo], n_envs=8, seed=seed)  # DummyVecEnv: the 8 envs stepped in this process
    return PPO("MlpPolicy", env, learning_rate=1e-3, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
               gae_lambda=0.8, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, normalize_advantage=True,
               policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh),
               seed=seed, device="cpu", verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ENVS), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()

    started = time.perf_counter()
    import gymnasium as gym
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only allowed once per process)
        pass

    model = build(args.algo, args.seed)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    learn_seconds = time.perf_counter() - start

    # Seedless evaluation: a fresh, unseeded env; episodes run back to back to their end or time limit.
    returns, lengths = evaluate_policy(model, Monitor(gym.make(ENVS[args.algo])), n_eval_episodes=args.eval_episodes,
                                       deterministic=True, return_episode_rewards=True)
    result = {
        "algo": args.algo, "env": ENVS[args.algo], "seed": args.seed, "steps": int(model.num_timesteps),
        "learn_seconds": learn_seconds, "steps_per_second": model.num_timesteps / learn_seconds,
        "eval_return": float(sum(returns) / len(returns)),
        "eval_return_std": float((sum((r - sum(returns) / len(returns)) ** 2 for r in returns) / len(returns)) ** 0.5),
        "eval_episodes": len(returns), "eval_lengths": [int(n) for n in lengths],
        "torch_threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - started,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{name: metadata.version(name) for name in ("stable-baselines3", "gymnasium", "numpy")}},
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
