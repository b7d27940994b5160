"""The encoder family (``model.family=encoder``): ``Encoder`` with BERT's MLM head, for
``task=masked_lm``, sized by the decoder's shape rule (width one head at a time, depth from
the aspect ratio)."""

from typing import Any

import jax

from isoflop.models import decoder_family, families
from isoflop.models.encoder import counting
from isoflop.models.encoder.model import Encoder, EncoderConfig


def from_run_config(fields: dict[str, Any], run_config) -> EncoderConfig:
  """The encoder config of a run (``max_len`` defaults to ``seq_len``), checked against it."""
  fields = dict(fields)
  if fields.get("max_len") is None:
    fields["max_len"] = run_config.seq_len
  cfg = EncoderConfig(**fields)
  if cfg.positions == "learned" and run_config.seq_len > cfg.max_len:
    raise ValueError(f"seq_len={run_config.seq_len} is longer than model.max_len="
                     f"{cfg.max_len} learned positions; raise model.max_len or lower seq_len")
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU (this backend is "
                     f"{jax.default_backend()}); use model.attention=xla")
  return cfg


FAMILY = families.register(families.Family(
    name="encoder",
    config_class=EncoderConfig,
    make_model=Encoder,
    objectives=("masked_lm", "classification"),  # classification: with model.num_classes
    unit="token",
    param_counts=counting.param_counts,
    n_by_convention=counting.n_by_convention,
    flops_per_unit=counting.flops_per_token,
    for_cost_analysis=decoder_family.for_cost_analysis,  # layers unrolled, as the decoder
    from_run_config=from_run_config,
    shape_candidates=decoder_family.shape_candidates,  # the same fields drive the same rule
    shape_overrides=decoder_family.shape_overrides,
))
