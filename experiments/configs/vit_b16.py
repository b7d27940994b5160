"""ViT-B/16 (Dosovitskiy et al. 2021) on ImageNet-1k: 224 px RGB, 16 x 16 patches (196 and a
class token), d 768, 12 layers, 12 heads, MLP 3,072, learned positions, LayerNorm eps 1e-6,
exact GELU, 1,000 classes.

Parameters: 86,567,656 by ``models/vit/counting.py`` (embedding 742,656: patch kernel and bias
590,592, 197-row position table 151,296, class token 768; blocks and final norm 85,056,000;
head 769,000), the count of timm's ``vit_base_patch16_224`` (86.6M; the paper's Table 1 gives
86M). Training FLOPs per image (chinchilla) 1.054e11, i.e. 17.6 GMACs forward.

Data: ``data.source="tfds:imagenet2012"``, which the user prepares (TFDS's manual download,
``tfds build imagenet2012 --file_format=array_record``). Its images differ in size, so they are
read on demand (``train/data/images_stream.py``): the shorter side resized to 224, then a
random 224 x 224 crop for training and the centre crop for held-out images. A hundredth of the
training split is held out (big_vision's minival).

The recipe is DeiT's (Touvron et al. 2021) at batch 1,024: AdamW, lr 1e-3 (5e-4 x batch /
512), weight decay 0.05, 5 warmup epochs, cosine, label smoothing 0.1, mixup 0.8, flips, 300
epochs. DeiT's RandAugment, CutMix, random erasing and stochastic depth are not implemented
here, so expect lower accuracy than its 81.8% top-1. ``imagenet`` is shared by the Ti/16 and
S/16 configs.
"""

from isoflop.experiments.configs import base
from isoflop.models.vit import VitConfig

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's training split
BATCH = 1024
EPOCH = IMAGENET_TRAIN // BATCH  # 1,251 steps


def imagenet(d_model: int, n_heads: int, n_layers: int = 12):
  """A ViT/16 of this width classifying ImageNet-1k with DeiT's recipe."""
  c = base.get_config()
  c.task = "classification"
  c.batch_size = BATCH
  c.steps = 300 * EPOCH
  c.log_every = 100
  c.eval_every = 5 * EPOCH
  c.eval_batches = 12  # 12 x 1,024 of the 12,812 held-out images
  c.checkpoint_every = 5 * EPOCH
  c.classification.label_smoothing = 0.1
  c.data.source = "tfds:imagenet2012"
  c.data.eval_fraction = 0.01
  c.data.normalize = True
  c.data.augment.flip = True
  c.data.augment.mixup_alpha = 0.8
  c.model = base.family_model_block(
      "vit", VitConfig, num_classes=1000, image_size=224, channels=3, patch_size=16,
      d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=4 * d_model, pool="cls",
      positions="learned", patch_embed="conv", norm="layernorm", norm_eps=1e-6,
      activation="gelu_exact", use_bias=True, dtype="bfloat16")
  o = c.optimizer
  o.name = "adamw"
  o.lr = 5e-4 * BATCH / 512
  o.schedule = "cosine"
  o.warmup_steps = 5 * EPOCH
  o.min_lr_ratio = 0.01  # DeiT's 1e-5 floor
  o.b2 = 0.999
  o.weight_decay = 0.05
  return c


def get_config():
  return imagenet(d_model=768, n_heads=12)
