"""Residual connections at equal depth on the digits (issue 16): ``resnet_tiny``'s stack with
1, 2, 4 and 8 basic blocks per stage (8 to 50 conv layers), with and without its shortcuts
(``model.skip``; the same strided convs, only the identity and projection shortcuts removed),
each 400 steps of 64 images, evaluated on the 384 held-out digits at the end. Without
shortcuts ``zero_init_residual`` has nothing to zero, so it is off for both."""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/resnet_tiny.py"
  s.grid = {"model": {"skip": [True, False]}}
  s.zipped = {"model": {"stage_depths": [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)]}}
  s.overrides = {"checkpoint_every": 1000, "model": {"zero_init_residual": False}}
  return s
