"""The Maximal Update Parametrization for the decoder (Yang et al. 2022, "Tensor Programs V",
Table 3 for Adam, Table 8 for SGD), relative to a base width.

With width multiplier m = d_model / base_width:
  hidden matrices (q, k, v, attention out, MLP in/out)   init std / sqrt(m); Adam lr / m
  embeddings (token, learned positions), biases, norms  init as SP;           Adam lr x 1
  (roles come from the parameters' logical axis names: models/param_roles.py)
  readout (the untied output matrix)                    init as SP, logits x 1/m; Adam lr x 1
  attention logits                                      scaled by sqrt(d_head at base) / d_head
``mup_zero_readout=True`` starts the readout at zero instead (Yang et al. suggest it): the
random readout adds a part to the logits that shrinks like 1/sqrt(width), which the
coordinate check sees at small widths; it is not the default because it slows early training
of the base model (measured in docs/reproductions.md, "µP").
Under SGD the learning rates go instead: embeddings and vectors x m, hidden x 1, readout x 1/m.
At m = 1 every multiplier is 1 and, with heads of a fixed size, the base model is SP's own
(unless the readout starts at zero). ``sp`` changes nothing at all.
"""

from typing import Any

import jax

from isoflop.models import param_roles

PARAMETRIZATIONS = ("sp", "mup")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


def width_multiplier(cfg) -> float:
  if cfg.parametrization != "mup":
    return 1.0
  return cfg.d_model / (cfg.mup_base_width or cfg.d_model)


def hidden_init_std(cfg, std: float) -> float:
  return std / width_multiplier(cfg) ** 0.5


def attention_scale(cfg) -> float:
  """SP: 1/sqrt(d_head). muP: 1/d_head times a width-independent multiplier,
  sqrt(base head dim), which makes the base model's scale SP's; with heads of a fixed size (the
  shape rule's way of widening) the two then agree at every width."""
  if cfg.parametrization != "mup":
    return cfg.head_dim ** -0.5
  return (cfg.mup_base_head_dim or cfg.head_dim) ** 0.5 / cfg.head_dim


def zero_readout(cfg) -> bool:
  return cfg.parametrization == "mup" and cfg.mup_zero_readout


def output_multiplier(cfg) -> float:
  return 1.0 / width_multiplier(cfg)


def lr_table(cfg, optimizer: str) -> dict[str, float]:
  """Learning-rate multiplier of each parameter role (all 1.0 under SP)."""
  m = width_multiplier(cfg)
  if cfg.parametrization != "mup":
    return dict.fromkeys(param_roles.KINDS, 1.0)
  if optimizer in SGD_FAMILY:
    return {"embedding": m, "vector": m, "hidden": 1.0, "readout": 1.0 / m}
  # Adam family (adam, adamw, lion, adafactor, rmsprop, adagrad): scale-invariant updates.
  return {"embedding": 1.0, "vector": 1.0, "hidden": 1.0 / m, "readout": 1.0}


def lr_multipliers(cfg, roles: Any, optimizer: str) -> Any:
  """A tree like the parameters of learning-rate multipliers, from their roles
  (``param_roles.label``)."""
  table = lr_table(cfg, optimizer)
  return jax.tree.map(lambda kind: table[kind], param_roles.kinds(roles))
