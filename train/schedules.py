"""Learning-rate schedules by name, each preceded by a linear warmup from 0."""

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "linear", "wsd", "inverse_sqrt")


def make_schedule(name: str, *, peak_lr: float, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float = 0.0, decay_fraction: float = 0.2) -> optax.Schedule:
  """Peak ``peak_lr`` after ``warmup_steps``; decays (where the schedule does) to
  ``min_lr_ratio * peak_lr`` at ``total_steps``.

  wsd is warmup-stable-decay (Hägele et al. 2024): constant until the last
  ``decay_fraction`` of the run, then a linear decay. inverse_sqrt decays as
  sqrt(warmup / step) after the warmup.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
  if peak_lr <= 0:
    raise ValueError(f"optimizer.lr={peak_lr} must be positive")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"optimizer.warmup_steps={warmup_steps} must be in [0, steps={total_steps}]")
  if not 0.0 <= decay_fraction <= 1.0:
    raise ValueError(f"optimizer.decay_fraction={decay_fraction} must be in [0, 1]")
  end_lr = peak_lr * min_lr_ratio
  main_steps = max(total_steps - warmup_steps, 1)
  if name == "constant":
    main = optax.constant_schedule(peak_lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(peak_lr, main_steps, alpha=min_lr_ratio)
  elif name == "linear":
    main = optax.linear_schedule(peak_lr, end_lr, main_steps)
  elif name == "wsd":
    decay_steps = max(int(round(decay_fraction * total_steps)), 1)
    stable_steps = max(main_steps - decay_steps, 0)
    main = optax.join_schedules(
        [optax.constant_schedule(peak_lr), optax.linear_schedule(peak_lr, end_lr, decay_steps)],
        [stable_steps])
  else:  # inverse_sqrt
    offset = max(warmup_steps, 1)
    # join_schedules also evaluates this branch at negative steps during the warmup.
    main = lambda step: peak_lr * jnp.sqrt(offset / (jnp.maximum(step, 0) + offset))
  if warmup_steps == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup_steps), main],
                              [warmup_steps])
