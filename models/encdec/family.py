"""The encoder-decoder family (``model.family=encdec``): ``EncoderDecoder`` and its accounting,
for the ``span_corruption`` objective. Standard parametrization only (no µP table is derived
for cross-attention), so ``lr_multipliers`` keeps the default: none."""

import dataclasses
from typing import Any

import jax

from isoflop.models import families
from isoflop.models.encdec import counting
from isoflop.models.encdec.model import EncDecConfig, EncoderDecoder


def from_run_config(fields: dict[str, Any], run_config) -> EncDecConfig:
  """The model config of a run, checked against the backend (relative and rotary positions
  take any seq_len: there is no table of absolute positions)."""
  del run_config
  cfg = EncDecConfig(**fields)
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU (this backend is "
                     f"{jax.default_backend()}); use model.attention=xla")
  return cfg


def for_cost_analysis(cfg: EncDecConfig, remat: bool, seq_len: int) -> EncDecConfig:
  """Both stacks unrolled (XLA's cost analysis counts a loop body once); ``remat=False`` also
  turns rematerialization off, for model FLOPs."""
  del seq_len
  changes = {"scan_unroll": cfg.max_layers}
  if not remat:
    changes["remat"] = "none"
  return dataclasses.replace(cfg, **changes)


def shape_candidates(base: EncDecConfig, *, aspect_ratio: float, head_size: int,
                     max_heads: int = 256):
  """Every shape of the sweep's rule, narrowest first: width grows one head of ``head_size`` at
  a time, the encoder's depth follows it, max(1, round(d_model / aspect_ratio)), and the
  decoder's keeps the base's decoder:encoder ratio; the MLP keeps the base's d_ff / d_model."""
  ff_ratio = None if base.d_ff is None else base.d_ff / base.d_model
  depth_ratio = base.n_decoder_layers / base.n_encoder_layers
  for heads in range(1, max_heads + 1):
    d_model = heads * head_size
    n_encoder = max(1, round(d_model / aspect_ratio))
    yield dataclasses.replace(
        base, d_model=d_model, n_heads=heads, d_head=head_size, n_encoder_layers=n_encoder,
        n_decoder_layers=max(1, round(n_encoder * depth_ratio)),
        d_ff=None if ff_ratio is None else max(1, round(ff_ratio * d_model)))


def shape_overrides(cfg: EncDecConfig) -> dict[str, Any]:
  overrides = {"model.d_model": cfg.d_model, "model.n_encoder_layers": cfg.n_encoder_layers,
               "model.n_decoder_layers": cfg.n_decoder_layers, "model.n_heads": cfg.n_heads}
  for key in ("d_head", "d_ff"):
    if getattr(cfg, key) is not None:
      overrides[f"model.{key}"] = getattr(cfg, key)
  return overrides


FAMILY = families.register(families.Family(
    name="encdec",
    config_class=EncDecConfig,
    make_model=EncoderDecoder,
    objectives=("span_corruption",),
    unit="token",
    param_counts=counting.param_counts,
    n_by_convention=counting.n_by_convention,
    flops_per_unit=counting.flops_per_token,
    for_cost_analysis=for_cost_analysis,
    from_run_config=from_run_config,
    shape_candidates=shape_candidates,
    shape_overrides=shape_overrides,
))
