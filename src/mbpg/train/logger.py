"""A run directory: config.json, metrics.csv, TensorBoard events. Resuming truncates rows past the checkpoint."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path


class RunLogger:
    """metrics.csv, appended row by row and rewritten (atomically) only when a row brings a new column, and the
    TensorBoard events, drained to disk by `flush` before each checkpoint so that a killed run keeps every row and
    event up to its last checkpoint."""

    def __init__(self, run_dir: Path, config: dict, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.fields: dict[str, None] = {}
        config_path = self.run_dir / "config.json"
        if resume_step is not None and config_path.exists():
            # A resume may change what the checkpoint does not pin (--steps, evaluation options): record it.
            try:
                previous = json.loads(config_path.read_text())
            except json.JSONDecodeError:  # the checkpoint, not this file, decides what may be resumed
                previous = {}
            config = {**previous, **config, "resumed_at_steps": [*previous.get("resumed_at_steps", []), resume_step]}
        config_path.write_text(json.dumps(config, indent=2, default=str, sort_keys=True))
        if resume_step is None:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            # A fresh run in a directory whose earlier run died before its first checkpoint: its events would
            # mix into this run's curves.
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        elif self.metrics_path.exists():
            with open(self.metrics_path, newline="") as handle:
                reader = csv.DictReader(handle)
                # Rows logged after the checkpoint belong to work that is about to be redone.
                self.rows = [r for r in reader if int(float(r["step"])) <= resume_step]
                self.fields = dict.fromkeys(reader.fieldnames or ())
            self._rewrite()
        self.writer = None
        if tensorboard:
            # Events at steps >= purge_step are hidden; the checkpoint's own step is kept, as in metrics.csv.
            self.writer = self._open_writer(None if resume_step is None else resume_step + 1)

    def _open_writer(self, purge_step: int | None):
        from tensorboardX import SummaryWriter

        # Event file names carry the time in whole seconds: a writer reopened within the same second would
        # truncate the previous file, so a nanosecond suffix keeps the names distinct and in order (TensorBoard
        # reads a directory's files in name order, which a resume's purge relies on).
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step,
                             filename_suffix=f".{time.time_ns()}")

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        new_fields = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new_fields or not self.metrics_path.exists():
            self.fields.update(dict.fromkeys(new_fields))
            self._rewrite()
        else:
            with open(self.metrics_path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=list(self.fields), restval="").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(step))

    def flush(self) -> None:
        """Put every event logged so far on disk (call before a checkpoint). tensorboardX's flush leaves events
        in its writer thread's queue; closing drains it, and the next events go to a new file in the same
        directory, which TensorBoard reads as one run."""
        if self.writer is not None:
            self.writer.close()
            self.writer = self._open_writer(None)

    def _rewrite(self) -> None:
        """Write all rows to a temporary file and rename it over metrics.csv: a kill mid-write leaves the old file,
        never a truncated one that would lose rows a checkpoint already covers."""
        temporary = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.fields) or ["step"], restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.metrics_path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
