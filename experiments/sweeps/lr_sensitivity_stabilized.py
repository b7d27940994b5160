"""The stabilized twin of ``lr_sensitivity_baseline.py``: the same runs with QK-norm and a
z-loss of 1e-4 (Wortsman et al. 2023's two fixes for attention-logit growth and output-logit
divergence).

  isoflop sweep --sweep=experiments/sweeps/lr_sensitivity_stabilized.py \\
    --workdir=runs/lr_sens_stabilized --workers=2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lr_sensitivity_baseline as baseline  # noqa: E402  the same grid


def get_sweep():
  return baseline.sweep(stabilized=True)
