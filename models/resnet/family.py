"""The convolutional families: ``model.family=resnet`` (``ResNetConfig``) and ``vgg``
(``VggConfig``: the same module without shortcuts, pooling between stages), both for
``task=classification``, counted per example. Sweeps grow their width: every stage and the
stem by one multiplier, depth kept."""

import dataclasses
from typing import Any

from isoflop.models import families, vision
from isoflop.models.resnet import counting
from isoflop.models.resnet.model import ResNet, ResNetConfig, VggConfig


def _from_run_config(config_class: type):
  def from_run_config(fields: dict[str, Any], run_config) -> ResNetConfig:
    """The config of a run; sizes that come as lists (JSON, the command line) become tuples.
    The data's fit (image shape, classes) is checked by ``check_data`` once it is loaded."""
    del run_config  # nothing derived from the run: the image size is the model's own field
    return config_class(**fields)
  return from_run_config


def for_cost_analysis(cfg: ResNetConfig, remat: bool, seq_len: int) -> ResNetConfig:
  """No loop to unroll (the stages are unrolled Python); ``remat=False`` drops recomputation."""
  del seq_len
  return cfg if remat else dataclasses.replace(cfg, remat="none")


def shape_candidates(base: ResNetConfig, *, aspect_ratio: float, head_size: int,
                     max_steps: int = 256):
  """Shapes of growing width for the sweep's rule, narrowest first: the stem grows by
  ``head_size`` channels at a time and every stage width by the same factor (rounded, at least
  1), so the base's width ratios hold; depth stays the base's (a ResNet's depth is a choice of
  stage depths, not a ratio), so ``aspect_ratio`` is not used."""
  del aspect_ratio
  for step in range(1, max_steps + 1):
    stem_width = step * head_size
    factor = stem_width / base.stem_width
    widths = tuple(max(1, round(w * factor)) for w in base.stage_widths)
    yield dataclasses.replace(base, stem_width=stem_width, stage_widths=widths)


def shape_overrides(cfg: ResNetConfig) -> dict[str, Any]:
  return {"model.stage_widths": cfg.stage_widths, "model.stem_width": cfg.stem_width}


def check_data(cfg: ResNetConfig, data: dict[str, Any], per_device_batch: int) -> None:
  vision.check_image_data(cfg, data, per_device_batch, batch_norm=cfg.batch_norm)


def _family(name: str, config_class: type) -> families.Family:
  return families.register(families.Family(
      name=name,
      config_class=config_class,
      make_model=ResNet,
      objectives=("classification",),
      unit="example",
      param_counts=counting.param_counts,
      n_by_convention=counting.n_by_convention,
      flops_per_unit=counting.flops_per_example,
      for_cost_analysis=for_cost_analysis,
      from_run_config=_from_run_config(config_class),
      shape_candidates=shape_candidates,
      shape_overrides=shape_overrides,
      check_data=check_data,
  ))


RESNET = _family("resnet", ResNetConfig)
VGG = _family("vgg", VggConfig)
