"""Optax optimizers by name, with clipping and weight decay masked off norms and biases."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from isoflop.models import param_roles
from isoflop.train import schedules

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
              "adafactor", "lion")
# These take a decoupled weight decay (scaled by the learning rate, applied after the
# adaptive rescaling). The others get it added to the gradient (classic L2-style decay).
_DECOUPLED = ("adamw", "adafactor", "lion")


def _mask_like(mask: Any) -> Callable[[Any], Any]:
  """optax's mask callable from a tree of bools shaped like the parameters. Inside a
  ``multi_transform`` group optax hands it trees whose other groups are ``MaskedNode``s; those
  stay as they are."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

  def mask_of(params):
    return jax.tree.map(lambda p, m: p if is_masked(p) else m, params, mask, is_leaf=is_masked)
  return mask_of


def make_optimizer(cfg: Any, total_steps: int, roles: Any, lr_multipliers: Any = None,
                   trainable: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``cfg`` is the ``optimizer`` ConfigDict: name, lr, schedule, warmup_steps, min_lr_ratio,
  decay_fraction, b1, b2, eps, momentum, weight_decay, clip_norm, independent_weight_decay
  (True: ``independent_decay`` instead of the optimizer's own decay).

  ``roles`` (``models.param_roles.label``, a tree like the parameters) decides where weight
  decay applies: matrices, not biases or norm scales. ``lr_multipliers``, a tree like the
  parameters of floats (e.g. muP's), gives parameter groups their own learning rate schedule x
  multiplier through ``optax.multi_transform``; clipping stays global. Without it the
  optimizer is the plain one. ``trainable``, a tree like the parameters of bools
  (``train/finetune.py``), freezes the False ones: they get ``set_to_zero`` (no update, no
  weight decay, no optimizer state) and clipping sees only the trainable gradients."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {OPTIMIZERS}")
  if cfg.weight_decay < 0 or cfg.clip_norm < 0:
    raise ValueError("optimizer.weight_decay and optimizer.clip_norm must be >= 0")
  lr = schedules.make_schedule(
      cfg.schedule, peak_lr=cfg.lr, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
      min_lr_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
  independent = bool(cfg.get("independent_weight_decay", False)) and cfg.weight_decay > 0
  wd = 0.0 if independent else cfg.weight_decay  # independent: applied after the optimizer
  decay_mask = _mask_like(param_roles.decay_mask(roles))

  def build(lr):
    return _build(cfg, lr, wd, decay_mask)

  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if wd > 0 and cfg.name not in _DECOUPLED:
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  if lr_multipliers is None:
    parts.append(build(lr))
  else:
    values = jax.tree.leaves(lr_multipliers)

    def label(m: float) -> str:
      return f"lr_x{m!r}"

    def scaled(m: float) -> optax.Schedule:
      return lambda step: lr(step) * m

    transforms = {label(m): build(scaled(m)) for m in set(values)}
    labels = jax.tree.map(label, lr_multipliers)
    parts.append(optax.multi_transform(transforms, lambda params: labels))
  if independent:
    peak = cfg.lr if cfg.lr else 1.0
    parts.append(optax.masked(
        independent_decay(cfg.weight_decay, lambda step: lr(step) / peak), decay_mask))
  tx = optax.chain(*parts)
  if trainable is not None:
    groups = jax.tree.map(lambda t: "trainable" if t else "frozen", trainable)
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               lambda params: groups)
  return tx, lr


def independent_decay(weight_decay: float, schedule_ratio: optax.Schedule
                      ) -> optax.GradientTransformation:
  """Weight decay independent of the learning rate (Loshchilov & Hutter's original form;
  Wortsman et al. 2023, Sec. 3.2.2): p <- p - lr_t * update - (lr_t / lr_peak) * wd * p. The
  decay follows the schedule's shape but not its size, so changing the learning rate leaves
  the decay alone (optax's AdamW multiplies it by lr_t: there wd * lr is what matters)."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    factor = weight_decay * schedule_ratio(state.count)
    updates = jax.tree.map(lambda u, p: u - (factor * p).astype(u.dtype), updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def _build(cfg, lr, wd, decay_mask) -> optax.GradientTransformation:
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

