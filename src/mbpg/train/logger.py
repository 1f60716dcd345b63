"""A run directory: config.json, metrics.csv, TensorBoard events. Resuming truncates rows past the checkpoint."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        if resume_step is None:
            (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str, sort_keys=True))
            if self.metrics_path.exists():
                self.metrics_path.unlink()
        elif self.metrics_path.exists():
            with open(self.metrics_path, newline="") as handle:
                # Rows logged after the checkpoint belong to work that is about to be redone.
                self.rows = [r for r in csv.DictReader(handle) if int(float(r["step"])) <= resume_step]
            self._rewrite()
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        new_fields = [k for k in row if self.rows and k not in self.rows[0]]
        self.rows.append(row)
        if new_fields or not self.metrics_path.exists():
            self._rewrite()
        else:
            with open(self.metrics_path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self._fields()).writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(step))

    def _fields(self) -> list[str]:
        fields: dict[str, None] = {}
        for row in self.rows:
            fields.update(dict.fromkeys(row))
        return list(fields)

    def _rewrite(self) -> None:
        with open(self.metrics_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._fields() or ["step"], restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
