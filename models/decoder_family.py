"""The decoder family (``model.family=decoder``): ``models/transformer.py``'s Decoder, dense or
with routed experts (``model.num_experts``), and its accounting from ``models/counting.py``."""

import dataclasses
from typing import Any

import jax

from isoflop.models import counting, families, mup, transformer


def from_run_config(fields: dict[str, Any], run_config) -> transformer.TransformerConfig:
  """The decoder config of a run (``max_len`` defaults to ``seq_len``), checked against it."""
  fields = dict(fields)
  if fields.get("max_len") is None:
    fields["max_len"] = run_config.seq_len
  cfg = transformer.TransformerConfig(**fields)
  if cfg.positions == "learned" and run_config.seq_len > cfg.max_len:
    raise ValueError(f"seq_len={run_config.seq_len} is longer than model.max_len="
                     f"{cfg.max_len} learned positions; raise model.max_len "
                     "(which adds parameters: the model is then no longer the config's shape)")
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU (this backend is "
                     f"{jax.default_backend()}); use model.attention=xla")
  return cfg


def for_cost_analysis(cfg, remat: bool, seq_len: int):
  """Layers unrolled (XLA's cost analysis counts a loop body once); ``remat=False`` also
  turns rematerialization off, for model FLOPs."""
  del seq_len
  changes = {"scan_unroll": cfg.n_layers}
  if not remat:
    changes["remat"] = "none"
  return dataclasses.replace(cfg, **changes)


def lr_multipliers(cfg, roles, optimizer: str):
  """muP's learning-rate multipliers from each parameter's role; None under SP."""
  if cfg.parametrization == "sp":
    return None
  return mup.lr_multipliers(cfg, roles, optimizer)


def shape_candidates(base, *, aspect_ratio: float, head_size: int, max_heads: int = 256):
  """Every shape of the sweep's rule, narrowest first: width grows one head of fixed size at a
  time and depth follows it, n_layers = max(1, round(d_model / aspect_ratio)); the MLP keeps
  the base's d_ff / d_model (and expert width ratio), grouped-query attention its ratio."""
  ff_ratio = None if base.d_ff is None else base.d_ff / base.d_model
  expert_ratio = (None if getattr(base, "expert_d_ff", None) is None
                  else base.expert_d_ff / base.d_model)
  for heads in range(1, max_heads + 1):
    d_model = heads * head_size
    n_layers = max(1, round(d_model / aspect_ratio))
    changes = {}
    if expert_ratio is not None:
      changes["expert_d_ff"] = max(1, round(expert_ratio * d_model))
    moe_every = getattr(base, "moe_every", 1)
    if getattr(base, "num_experts", 0) and n_layers % moe_every:
      n_layers = max(moe_every, n_layers - n_layers % moe_every)
    d_ff = None if ff_ratio is None else max(1, round(ff_ratio * d_model))
    kv = None if base.n_kv_heads is None else max(1, heads * base.n_kv_heads // base.n_heads)
    while kv and heads % kv:
      kv -= 1
    yield dataclasses.replace(base, d_model=d_model, n_layers=n_layers, n_heads=heads,
                              n_kv_heads=kv, d_head=None, d_ff=d_ff, **changes)


def shape_overrides(cfg) -> dict[str, Any]:
  overrides = {"model.d_model": cfg.d_model, "model.n_layers": cfg.n_layers,
               "model.n_heads": cfg.n_heads}
  for key in ("n_kv_heads", "d_ff", "expert_d_ff"):
    if getattr(cfg, key, None) is not None:
      overrides[f"model.{key}"] = getattr(cfg, key)
  return overrides


FAMILY = families.register(families.Family(
    name="decoder",
    config_class=transformer.TransformerConfig,
    make_model=transformer.Decoder,
    objectives=("causal_lm", "classification"),  # classification: with model.num_classes
    unit="token",
    param_counts=counting.param_counts,
    n_by_convention=counting.n_by_convention,
    flops_per_unit=counting.flops_per_token,
    for_cost_analysis=for_cost_analysis,
    from_run_config=from_run_config,
    lr_multipliers=lr_multipliers,
    shape_candidates=shape_candidates,
    shape_overrides=shape_overrides,
))
