"""The plain (VGG-style) counterpart of ``resnet_tiny.py``: the same stem, stage depths and
widths with no shortcuts (``model.family=vgg``), each stage two 3x3 convs and a 2x2 max-pool
before the next (conv-conv-pool), on the same digits and schedule.

Without shortcuts there is no residual to zero-initialize, so every BatchNorm starts at one.
``--config.model.downsample=stride`` gives instead the ResNet paper's "plain" network: the
identical stack with stride-2 first convs, only the shortcuts removed.
"""

from isoflop.experiments.configs import base, resnet_tiny
from isoflop.models.resnet import VggConfig


def get_config():
  c = resnet_tiny.get_config()
  c.model = base.family_model_block(
      "vgg", VggConfig, num_classes=10, image_size=8, channels=1, block="basic",
      stage_depths=(1, 1, 1), stage_widths=(16, 32, 64), stem="cifar", stem_width=16)
  return c
