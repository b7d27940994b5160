"""A small CIFAR-style ResNet (about 78K parameters: three stages of one basic block, widths
16/32/64) classifying scikit-learn's 8x8 digits: trains on a CPU in well under two minutes,
the convolutional counterpart of ``tiny.py`` for ``task=classification``.

The 3x3 stride-1 stem keeps the 8x8 image (the ImageNet stem would pool it to 2x2 at once);
stages 2 and 3 halve it to 4x4 and 2x2. Each block's last BatchNorm scale starts at zero
(Goyal et al. 2017), so the network starts as its stem and shortcuts. 21% of the digits are
held out (384 images, 6 batches of 64 exactly); the last step is evaluated on all of them.
"""

from isoflop.experiments.configs import base
from isoflop.models.resnet import ResNetConfig


def get_config():
  c = base.get_config()
  c.task = "classification"
  c.steps = 400
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 400
  c.eval_batches = 6
  c.checkpoint_every = 400
  c.data.source = "digits"
  c.data.eval_fraction = 0.2137  # 384 of the 1,797 digits: 6 batches of 64 exactly
  c.data.normalize = True
  c.model = base.family_model_block(
      "resnet", ResNetConfig, num_classes=10, image_size=8, channels=1, block="basic",
      stage_depths=(1, 1, 1), stage_widths=(16, 32, 64), stem="cifar", stem_width=16,
      zero_init_residual=True)
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.05
  return c
