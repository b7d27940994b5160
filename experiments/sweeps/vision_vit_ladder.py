"""ViT vs ResNet on the digits (issue 16), the ViT side: four widths of ``vit_tiny`` (4 layers,
heads of 16 dimensions, more of them as the width grows), each trained 1,000 steps of 64
images and evaluated on the 384 held-out digits every 50 steps, so each run gives an error
curve against training compute; ``experiments/analysis/vision_frontier.py`` fits their
frontier."""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/vit_tiny.py"
  s.grid = {}
  s.zipped = {"model": {"d_model": [16, 32, 64, 128], "n_heads": [1, 2, 4, 8]}}
  s.overrides = {"steps": 1000, "eval_every": 50, "log_every": 50, "checkpoint_every": 1000}
  return s
