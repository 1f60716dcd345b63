import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpg.train.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint


def make_state(seed=0, width=8):
    key = jax.random.key(seed)
    return {"network": eqx.nn.MLP(3, 2, width, 2, key=key), "step": jnp.asarray(7), "key": jax.random.key(seed + 1),
            "buffer": np.arange(12.0).reshape(3, 4)}


def test_round_trip_restores_every_leaf_including_keys(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path / "ckpt", state, {"algo": "sac", "step": 7})
    loaded = load_checkpoint(path, make_state(seed=5), expected_metadata={"algo": "sac"})
    for a, b in zip(jax.tree.leaves(eqx.filter(state, eqx.is_array)), jax.tree.leaves(eqx.filter(loaded, eqx.is_array))):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.random.uniform(loaded["key"]) == jax.random.uniform(state["key"])
    assert read_metadata(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary files left behind


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_state())
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, make_state())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, make_state())
    path.write_bytes(b"hello world\n123")
    with pytest.raises(CheckpointError, match="not an mbpg checkpoint"):
        load_checkpoint(path, make_state())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing", make_state())


def test_mismatched_configuration_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_state(width=8), {"algo": "sac"})
    with pytest.raises(CheckpointError, match="different"):
        load_checkpoint(path, make_state(width=16))
    with pytest.raises(CheckpointError, match="algo='sac', but this run has algo='ppo'"):
        load_checkpoint(path, make_state(), expected_metadata={"algo": "ppo"})


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt", make_state(), {"step": 1})

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(path, make_state(seed=3), {"step": 2})
    monkeypatch.undo()
    assert read_metadata(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_the_leftover_of_a_killed_write_is_removed_and_the_messages_name_the_fix(tmp_path):
    """A kill mid-write left `.ckpt.*.tmp` behind for good (tens of MB a kill); the corrupt-file message said to
    restart 'from the previous one', which does not exist."""
    path = save_checkpoint(tmp_path / "ckpt", make_state())
    (tmp_path / ".ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    save_checkpoint(path, make_state(seed=3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert path.stat().st_mode & 0o044  # readable like any output file, not mkstemp's 0600
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"no earlier one.*without --resume \(the run starts over\)"):
        load_checkpoint(path, make_state())
    path.write_bytes(raw[:10])  # cut inside its header
    with pytest.raises(CheckpointError, match="truncated inside its header"):
        load_checkpoint(path, make_state())
