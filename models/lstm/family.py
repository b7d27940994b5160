"""The LSTM family (``model.family=lstm``): ``LstmLm`` and its accounting, for ``causal_lm``."""

import dataclasses
from typing import Any

from isoflop.models import families
from isoflop.models.lstm import counting
from isoflop.models.lstm.model import LstmConfig, LstmLm


def from_run_config(fields: dict[str, Any], run_config) -> LstmConfig:
  del run_config  # no positions table: any seq_len fits
  return LstmConfig(**fields)


def for_cost_analysis(cfg: LstmConfig, remat: bool, seq_len: int) -> LstmConfig:
  """Every timestep unrolled, so XLA counts each; ``remat=False`` also drops recomputation."""
  changes = {"time_unroll": seq_len}
  if not remat:
    changes["remat"] = "none"
  return dataclasses.replace(cfg, **changes)


def shape_candidates(base: LstmConfig, *, aspect_ratio: float, head_size: int,
                     max_steps: int = 256):
  """Shapes of growing width for the sweep's rule, narrowest first: d_model (and the cell, and
  any projection, in the base's ratios) grows by ``head_size`` at a time; depth stays the
  base's (LSTM LMs are shallow: Kaplan et al. used 1 to 4 layers), so ``aspect_ratio`` is
  not used."""
  del aspect_ratio
  hidden_ratio = None if base.d_hidden is None else base.d_hidden / base.d_model
  proj_ratio = None if base.d_proj is None else base.d_proj / base.d_model
  for step in range(1, max_steps + 1):
    d_model = step * head_size
    scaled = lambda ratio: None if ratio is None else max(1, round(ratio * d_model))
    yield dataclasses.replace(base, d_model=d_model, d_hidden=scaled(hidden_ratio),
                              d_proj=scaled(proj_ratio))


def shape_overrides(cfg: LstmConfig) -> dict[str, Any]:
  overrides = {"model.d_model": cfg.d_model, "model.n_layers": cfg.n_layers}
  for key in ("d_hidden", "d_proj"):
    if getattr(cfg, key) is not None:
      overrides[f"model.{key}"] = getattr(cfg, key)
  return overrides


FAMILY = families.register(families.Family(
    name="lstm",
    config_class=LstmConfig,
    make_model=LstmLm,
    objectives=("causal_lm",),
    unit="token",
    param_counts=counting.param_counts,
    n_by_convention=counting.n_by_convention,
    flops_per_unit=counting.flops_per_token,
    for_cost_analysis=for_cost_analysis,
    from_run_config=from_run_config,
    shape_candidates=shape_candidates,
    shape_overrides=shape_overrides,
))
