"""The convolutional vision families (``model.family=resnet`` and ``vgg``): one module,
``ResNet``, with or without shortcuts: ``from isoflop.models.resnet import ResNet,
ResNetConfig``."""

from isoflop.models.resnet.model import ResNet, ResNetConfig, VggConfig

__all__ = ["ResNet", "ResNetConfig", "VggConfig"]
