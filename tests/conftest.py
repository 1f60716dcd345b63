"""Shared fixtures. Also gives the whole test session one persistent JAX compilation cache, in a fresh temporary
directory, before JAX is imported: the xdist workers and the `mbpg` subprocesses of the CLI tests (which inherit
the environment) compile many of the same programs, and each is then compiled once per session rather than once per
process. The directory is new every session, so no test can pass on a program compiled by an older tree; a cached
executable is the same compiled program, so every number is the same as without the cache. Set
JAX_COMPILATION_CACHE_DIR yourself to choose (or keep) the directory."""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process to get here (pytest's main one) creates it
    _cache = tempfile.mkdtemp(prefix="mbpg-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Exactness tests compare in float64."""
    with jax.enable_x64(True):
        yield


def random_mdp_arrays(seed: int, n_states: int, n_actions: int):
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
    rewards = rng.normal(size=(n_states, n_actions))
    initial = rng.dirichlet(np.ones(n_states))
    return transitions, rewards, initial


def assert_unbiased(draws: np.ndarray, expected: np.ndarray, z: float = 4.5):
    """Every entry of the mean of the draws lies within z standard errors of `expected`.

    With a fixed seed the outcome is deterministic; z = 4.5 makes a false alarm over a few dozen entries a
    one-in-a-few-thousand event while a bias of a few standard errors still fails.
    """
    draws = draws.reshape(draws.shape[0], -1)
    expected = np.asarray(expected).reshape(-1)
    standard_error = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
    deviation = np.abs(draws.mean(0) - expected)
    scores = deviation / np.maximum(standard_error, 1e-12)
    worst = int(np.argmax(scores))
    assert scores[worst] < z, (
        f"entry {worst}: mean {draws.mean(0)[worst]:.5g} vs expected {expected[worst]:.5g} "
        f"({scores[worst]:.2f} standard errors of {standard_error[worst]:.3g})"
    )
    return scores
