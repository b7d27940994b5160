"""Writes metric rows to ``metrics.jsonl`` and TensorBoard event files (no TensorFlow).

``metrics.jsonl`` is the record and ``tb/`` is derived from it: a run that resumes drops the
rows logged after its checkpoint (they are about to be logged again) and rebuilds ``tb/`` from
the rows kept, so every step is in each exactly once. With ``config.wandb.project`` set, the rows
also go to Weights & Biases (``wandb_log``), which cannot drop rows: it gets each step once.
"""

import json
import math
import os
import shutil
from typing import Any

import numpy as np

from isoflop.train import wandb_log


def _plain(value: Any) -> Any:
  value = np.asarray(value).item() if np.ndim(value) == 0 else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
  return value


def _truncate(path: str, last_step: int) -> list[dict[str, Any]]:
  """Drops rows logged after ``last_step``, atomically; returns the rows kept."""
  if not os.path.exists(path):
    return []
  kept_lines, kept_rows = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a row cut short by a kill (or a blank line)
      if isinstance(row, dict) and row.get("step", math.inf) <= last_step:
        kept_lines.append(line if line.endswith("\n") else line + "\n")
        kept_rows.append(row)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept_lines)
  os.replace(tmp, path)
  return kept_rows


def _add_to_tensorboard(writer, row: dict[str, Any]) -> None:
  """One event per row, holding every number of the row as a scalar (strings such as "nan",
  lists such as ``loss_per_seed`` and nulls are left out)."""
  from tensorboardX.proto.summary_pb2 import Summary
  values = [Summary.Value(tag=key, simple_value=value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
  if values:
    writer.add_summary(Summary(value=values), row["step"])


def _rebuilt_tensorboard(tb_dir: str, rows: list[dict[str, Any]]):
  """A writer on a fresh ``tb_dir`` holding ``rows``. The events are written into a staging
  directory that then replaces ``tb_dir``, so a kill leaves the old directory or the new one
  (or, between the two renames, both under the staging names, which the next run discards)."""
  from tensorboardX import FileWriter  # TensorFlow-free event writer
  staging, retired = f"{tb_dir}.rebuilding", f"{tb_dir}.replaced"
  for leftover in (staging, retired):  # from a run killed while it rebuilt
    shutil.rmtree(leftover, ignore_errors=True)
  writer = FileWriter(staging)
  for row in rows:
    _add_to_tensorboard(writer, row)
  writer.flush()  # on disk before the old directory goes
  if os.path.exists(tb_dir):
    os.rename(tb_dir, retired)
  # The writer's open file moves with its directory (POSIX rename), so the rows this run
  # logs from now on are appended to the same event file, in step order after the rebuilt ones.
  os.rename(staging, tb_dir)
  shutil.rmtree(retired, ignore_errors=True)
  return writer


class MetricsLog:
  """Appends one JSON object per row to ``<workdir>/metrics.jsonl``; mirrors numbers to
  ``<workdir>/tb``. Each row is flushed so a killed run keeps every row it logged.

  Opening it drops the rows logged after ``resume_step`` (the step the run continues from; 0
  for a fresh start) and rebuilds ``tb/`` from the rows kept.

  ``record`` (what config.json holds) with ``config.wandb.project`` set also mirrors the rows
  to a W&B run, with the config as its config and the counts in its summary; rows kept from
  before a resume that W&B lacks (it was off until now) are sent first."""

  def __init__(self, workdir: str, *, resume_step: int = 0,
               record: dict[str, Any] | None = None):
    # W&B first: if it cannot start, the workdir's files are left untouched.
    self._wandb = (wandb_log.WandbRun(workdir, record)
                   if record is not None and wandb_log.enabled(record["config"]) else None)
    path = os.path.join(workdir, "metrics.jsonl")
    kept = _truncate(path, resume_step)
    self._tb = _rebuilt_tensorboard(os.path.join(workdir, "tb"), kept)
    self._file = open(path, "a", encoding="utf-8")
    if self._wandb is not None:
      for row in kept:
        self._wandb.log(row)

  def write(self, row: dict[str, Any]) -> None:
    row = {key: _plain(value) for key, value in row.items()}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    _add_to_tensorboard(self._tb, row)
    if self._wandb is not None:
      self._wandb.log(row)

  def close(self) -> None:
    self._file.close()
    self._tb.close()
    if self._wandb is not None:
      self._wandb.close()
