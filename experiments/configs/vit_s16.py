"""ViT-S/16 on ImageNet-1k: ``vit_b16.py``'s model and recipe at d 384, 12 layers, 6 heads
(MLP 1,536); the shape of DeiT-S (Touvron et al. 2021) and of Steiner et al. 2021's S/16.

Parameters: 22,050,664 by ``models/vit/counting.py`` (embedding 371,328; blocks and final
norm 21,294,336; head 385,000), the count of timm's ``vit_small_patch16_224`` (22.1M; DeiT's
Table 1 gives 22M). Training FLOPs per image (chinchilla) 2.762e10.

Data: ``data.source="tfds:imagenet2012"``, prepared by the user at 224 x 224 (see
``vit_b16.py``).
"""

from isoflop.experiments.configs import vit_b16


def get_config():
  return vit_b16.imagenet(d_model=384, n_heads=6)
