"""ViT-Ti/16 on ImageNet-1k: ``vit_b16.py``'s model and recipe at d 192, 12 layers, 3 heads
(MLP 768); the shape of DeiT-Ti (Touvron et al. 2021) and of Steiner et al. 2021's Ti/16.

Parameters: 5,717,416 by ``models/vit/counting.py`` (embedding 185,664; blocks and final norm
5,338,752; head 193,000), the count of timm's ``vit_tiny_patch16_224`` (5.7M; DeiT's Table 1
gives 5M). Training FLOPs per image (chinchilla) 7.535e9.

Data: ``data.source="tfds:imagenet2012"``, prepared by the user and read on demand (see
``vit_b16.py``).
"""

from isoflop.experiments.configs import vit_b16


def get_config():
  return vit_b16.imagenet(d_model=192, n_heads=3)
