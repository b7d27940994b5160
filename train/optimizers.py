"""Optax optimizers by name, with clipping and weight decay masked off norms and biases."""

from typing import Any, Callable

import jax
import optax

from isoflop.train import schedules

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
              "adafactor", "lion")
# These take a decoupled weight decay (scaled by the learning rate, applied after the
# adaptive rescaling). The others get it added to the gradient (classic L2-style decay).
_DECOUPLED = ("adamw", "adafactor", "lion")


def decay_mask(params: Any) -> Any:
  """True for matrices (ndim >= 2 once a scanned ``layers`` axis is ignored), False for norm
  scales and biases, which weight decay and L1/L2 penalties should leave alone."""

  def is_matrix(path, leaf) -> bool:
    names = [getattr(key, "key", getattr(key, "name", "")) for key in path]
    stacked = "layers" in names  # scanned blocks carry a leading per-layer axis
    return leaf.ndim - int(stacked) >= 2

  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: Any, total_steps: int,
                   lr_multipliers: tuple[tuple[float, ...], Callable] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``cfg`` is the ``optimizer`` ConfigDict: name, lr, schedule, warmup_steps, min_lr_ratio,
  decay_fraction, b1, b2, eps, momentum, weight_decay, clip_norm.

  ``lr_multipliers`` = (the multipliers in use, params -> a tree of them), e.g. muP's, gives
  parameter groups their own learning rate schedule x multiplier through
  ``optax.multi_transform``; clipping stays global. Without it the optimizer is the plain one."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {OPTIMIZERS}")
  if cfg.weight_decay < 0 or cfg.clip_norm < 0:
    raise ValueError("optimizer.weight_decay and optimizer.clip_norm must be >= 0")
  lr = schedules.make_schedule(
      cfg.schedule, peak_lr=cfg.lr, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
      min_lr_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
  wd = cfg.weight_decay

  def build(lr):
    return _build(cfg, lr, wd)

  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if wd > 0 and cfg.name not in _DECOUPLED:
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  if lr_multipliers is None:
    parts.append(build(lr))
  else:
    values, multipliers_of = lr_multipliers

    def label(m: float) -> str:
      return f"lr_x{m!r}"

    def scaled(m: float) -> optax.Schedule:
      return lambda step: lr(step) * m

    transforms = {label(m): build(scaled(m)) for m in set(values)}
    parts.append(optax.multi_transform(
        transforms, lambda params: jax.tree.map(label, multipliers_of(params))))
  return optax.chain(*parts), lr


def _build(cfg, lr, wd) -> optax.GradientTransformation:
  builders = {
      "sgd": lambda: optax.sgd(lr),
      "momentum": lambda: optax.sgd(lr, momentum=cfg.momentum),
      "nesterov": lambda: optax.sgd(lr, momentum=cfg.momentum, nesterov=True),
      "adagrad": lambda: optax.adagrad(lr, eps=cfg.eps),
      "rmsprop": lambda: optax.rmsprop(lr, decay=cfg.b2, eps=cfg.eps),
      "adam": lambda: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      "adamw": lambda: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                                   mask=decay_mask),
      "adafactor": lambda: optax.adafactor(lr, weight_decay_rate=wd or None,
                                           weight_decay_mask=decay_mask),
      "lion": lambda: optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=wd, mask=decay_mask),
  }
  return builders[cfg.name]()

