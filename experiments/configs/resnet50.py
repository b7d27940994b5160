"""ResNet-50 on ImageNet: torchvision's architecture (v1.5: the bottleneck strides in its 3x3
conv), 25,557,032 parameters (bottleneck blocks, stage depths 3/4/6/3, outputs 4 x the widths
64-512), with ``resnet18.py``'s data and recipe; prepare ``imagenet2012`` with TFDS first (see
there)."""

from isoflop.experiments.configs import resnet18


def get_config():
  c = resnet18.get_config()
  c.model = resnet18.imagenet_model("bottleneck", (3, 4, 6, 3))
  return c
