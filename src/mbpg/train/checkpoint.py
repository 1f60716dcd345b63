"""Checkpoints that survive a kill -9 and refuse to load when corrupt or from another run.

Format: one JSON header line (format version, SHA-256 of the payload, user metadata) followed by the payload,
Equinox's leaf serialisation of the state pytree. Files are written to a temporary name, fsynced and renamed,
so a checkpoint on disk is always either the old one or the complete new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "mbpg-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or made for a different configuration."""


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def save_checkpoint(path: Path | str, state, metadata: dict | None = None) -> Path:
    """Atomically write `state` (any pytree of arrays, Equinox modules and typed PRNG keys) with `metadata`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, _keys_to_data(state))
    payload = buffer.getvalue()
    header = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload),
              "metadata": metadata or {}}
    # A kill mid-write leaves a temporary file behind; the next save removes it (only one writer per run).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is a normal output file
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(json.dumps(header, sort_keys=True).encode() + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_metadata(path: Path | str) -> dict:
    header, _ = _read(Path(path))
    return header["metadata"]


def load_checkpoint(path: Path | str, template, expected_metadata: dict | None = None):
    """Load into the structure of `template` (a freshly initialised state of the same configuration).

    Raises CheckpointError when the file is missing, truncated, fails its checksum, differs in structure or shapes
    from `template`, or when a key of `expected_metadata` disagrees with what was saved.
    """
    path = Path(path)
    header, payload = _read(path)
    for key, value in (expected_metadata or {}).items():
        saved = header["metadata"].get(key)
        if saved != value:
            raise CheckpointError(f"checkpoint {path} was made with {key}={saved!r}, but this run has {key}={value!r}; "
                                  "resume with the configuration of the original run, or start a new run directory.")
    data_template = _keys_to_data(template)
    try:
        loaded = eqx.tree_deserialise_leaves(io.BytesIO(payload), data_template)
    except Exception as error:  # eqx raises several types for structure and shape mismatches
        raise CheckpointError(f"checkpoint {path} does not match this run's state ({error}); it was made for a "
                              "different algorithm or network size, or by an mbpg version whose state differs: "
                              "start a new run directory.") from None
    for saved, expected in zip(jax.tree.leaves(loaded), jax.tree.leaves(data_template)):
        if np.shape(saved) != np.shape(expected) or np.asarray(saved).dtype != np.asarray(expected).dtype:
            raise CheckpointError(f"checkpoint {path} holds an array of shape {np.shape(saved)} where this run "
                                  f"expects {np.shape(expected)}; it was made for a different configuration.")
    return jax.tree.map(lambda new, old: jax.random.wrap_key_data(new) if _is_key(old) else new, loaded, template)


def _read(path: Path) -> tuple[dict, bytes]:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}.")
    raw = path.read_bytes()
    newline = raw.find(b"\n")
    try:
        header = json.loads(raw[:newline]) if newline > 0 else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mbpg checkpoint, or one truncated inside its header (bad or "
                              "missing header): point --resume at a run directory made by mbpg, or delete the file and "
                              "train again without --resume (the run starts over).")
    payload = raw[newline + 1:]
    if len(payload) != header["bytes"] or hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch: {len(payload)} of "
                              f"{header['bytes']} bytes, or altered). mbpg keeps one checkpoint per run, so there is "
                              "no earlier one to fall back to: delete it and train again without --resume (the run "
                              "starts over).")
    return header, payload
