"""The grid of the same cost as ``search_tiny_shakespeare.py``: 32 AdamW learning rates
log-spaced over the search's range (every 4th of them is an 8-point grid, every 2nd a
16-point one), the same 100-step runs of the tiny decoder.

  isoflop sweep --sweep=experiments/sweeps/grid_lr_tiny_shakespeare.py --workdir=runs/grid_lr \\
    --workers=2
"""

import os
import sys

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_tiny_shakespeare as search  # noqa: E402  the same runs and range

POINTS = 32


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny_shakespeare.py"
  lrs = np.geomspace(search.LR_LOW, search.LR_HIGH, POINTS)
  s.grid = {"optimizer": {"lr": [float(f"{lr:.6g}") for lr in lrs]}}
  s.overrides = search.OVERRIDES
  return s
