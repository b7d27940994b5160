"""Writes metric rows to ``metrics.jsonl`` and TensorBoard event files (no TensorFlow)."""

import json
import math
import os
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
  value = np.asarray(value).item() if np.ndim(value) == 0 else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible rather than invalid
  return value


class MetricsLog:
  """Appends one JSON object per row to ``<workdir>/metrics.jsonl``; mirrors numbers to
  ``<workdir>/tb``. Each row is flushed so a killed run keeps every row it logged."""

  def __init__(self, workdir: str):
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # TensorFlow-free event writer
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, row: dict[str, Any]) -> None:
    row = {key: _plain(value) for key, value in row.items()}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, row["step"])

  def close(self) -> None:
    self._file.close()
    self._tb.close()
