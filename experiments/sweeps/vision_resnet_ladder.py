"""ViT vs ResNet on the digits (issue 16), the ResNet side: four widths of ``resnet_tiny``
(stages of one basic block; stem and stage widths scaled together), each trained 1,000 steps of
64 images and evaluated on the 384 held-out digits every 50 steps, as
``vision_vit_ladder.py``."""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/resnet_tiny.py"
  s.grid = {}
  s.zipped = {"model": {"stem_width": [4, 8, 16, 32],
                        "stage_widths": [(4, 8, 16), (8, 16, 32), (16, 32, 64),
                                         (32, 64, 128)]}}
  s.overrides = {"steps": 1000, "eval_every": 50, "log_every": 50, "checkpoint_every": 1000}
  return s
