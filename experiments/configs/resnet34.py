"""ResNet-34 on ImageNet: torchvision's architecture, 21,797,672 parameters (basic blocks,
stage depths 3/4/6/3), with ``resnet18.py``'s data and recipe; prepare ``imagenet2012`` with
TFDS first (see there)."""

from isoflop.experiments.configs import resnet18


def get_config():
  c = resnet18.get_config()
  c.model = resnet18.imagenet_model("basic", (3, 4, 6, 3))
  return c
