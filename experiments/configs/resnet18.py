"""ResNet-18 on ImageNet (ILSVRC-2012): torchvision's architecture, 11,689,512 parameters (1,000
classes, the 7x7 ImageNet stem, 224 x 224 RGB), trained by the recipe of Goyal et al. 2017:
SGD with momentum 0.9, lr 0.1 per 256 images with a 5-epoch linear warmup, weight decay 1e-4
(on conv and head kernels only), 90 epochs, each block's last BatchNorm scale at zero.

The data is not downloaded: prepare ``imagenet2012`` with TFDS first (the manual download of
the ILSVRC-2012 archives, then ``tfds build imagenet2012`` in array_record format, see the
TFDS catalogue), and point ``data.tfds_data_dir`` at it. Its images differ in size and are read
on demand (``train/data/images_stream.py``): the shorter side resized to ``model.image_size``
(224), then a random square crop for training, the centre crop for held-out images; the
held-out images are ``data.eval_fraction`` of the training split, not ILSVRC's validation
set. ``resnet34.py`` and ``resnet50.py`` change only
the model block.
"""

from isoflop.experiments.configs import base
from isoflop.models.resnet import ResNetConfig

IMAGES = 1_281_167  # ILSVRC-2012 training images
EPOCH_STEPS = IMAGES // 256


def imagenet_model(block: str, stage_depths: tuple[int, ...]):
  """A torchvision ResNet's ``c.model`` block: 1,000 classes, ImageNet stem, widths 64-512."""
  return base.family_model_block(
      "resnet", ResNetConfig, num_classes=1000, image_size=224, channels=3, block=block,
      stage_depths=stage_depths, stage_widths=(64, 128, 256, 512), stem="imagenet",
      stem_width=64, zero_init_residual=True, dtype="bfloat16")


def get_config():
  c = base.get_config()
  c.task = "classification"
  c.classification.label_smoothing = 0.0
  c.batch_size = 256
  c.steps = 90 * EPOCH_STEPS
  c.log_every = 100
  c.eval_every = EPOCH_STEPS
  c.eval_batches = 50
  c.checkpoint_every = EPOCH_STEPS
  c.data.source = "tfds:imagenet2012"
  c.data.eval_fraction = 0.02
  c.data.normalize = True
  c.data.augment.flip = True
  c.model = imagenet_model("basic", (2, 2, 2, 2))
  o = c.optimizer
  o.name = "momentum"
  o.momentum = 0.9
  o.lr = 0.1 * c.batch_size / 256
  o.schedule = "cosine"
  o.min_lr_ratio = 0.0
  o.warmup_steps = 5 * EPOCH_STEPS
  o.weight_decay = 1e-4  # coupled (L2 added to the gradient), as torchvision's SGD
  o.clip_norm = 0.0
  return c
