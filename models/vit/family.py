"""The ViT family (``model.family=vit``): ``Vit`` for ``task=classification``, counted per
example (an image), sized by the decoder's shape rule (width one head at a time, depth from
the aspect ratio)."""

import dataclasses
from typing import Any

import jax

from isoflop.models import decoder_family, families, vision
from isoflop.models.vit import counting
from isoflop.models.vit.model import Vit, VitConfig


def from_run_config(fields: dict[str, Any], run_config) -> VitConfig:
  """The ViT config of a run; ``seq_len`` means nothing for images and is not consulted."""
  del run_config
  cfg = VitConfig(**fields)
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU (this backend is "
                     f"{jax.default_backend()}); use model.attention=xla")
  return cfg


def shape_candidates(base: VitConfig, *, aspect_ratio: float, head_size: int,
                     max_heads: int = 256):
  """The decoder's rule (width = heads x head_size, n_layers = max(1, round(d_model /
  aspect_ratio)), the base's d_ff / d_model kept); with sin-cos positions the widths not
  divisible by 4 are left out."""
  sincos = base.positions == "sincos"
  rule_base = dataclasses.replace(base, positions="learned") if sincos else base
  for cfg in decoder_family.shape_candidates(rule_base, aspect_ratio=aspect_ratio,
                                             head_size=head_size, max_heads=max_heads):
    if sincos and cfg.d_model % 4:
      continue
    yield dataclasses.replace(cfg, positions=base.positions) if sincos else cfg


FAMILY = families.register(families.Family(
    name="vit",
    config_class=VitConfig,
    make_model=Vit,
    objectives=("classification",),
    unit="example",
    param_counts=counting.param_counts,
    n_by_convention=counting.n_by_convention,
    flops_per_unit=counting.flops_per_example,
    for_cost_analysis=decoder_family.for_cost_analysis,  # layers unrolled, as the decoder
    from_run_config=from_run_config,
    shape_candidates=shape_candidates,
    shape_overrides=decoder_family.shape_overrides,
    check_data=lambda cfg, data, per_device_batch: vision.check_image_data(cfg, data,
                                                                           per_device_batch),
))
