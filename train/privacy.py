"""Differentially private training (DP-SGD, Abadi et al. 2016) for every family.

Each example's gradient is clipped to ``clip_norm`` in global L2 norm (Optax's
``per_example_global_norm_clip``), the clipped gradients are summed, Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` is added once per step, and the sum is divided by the
batch size; the optimizer then takes this gradient as any other. Per-example gradients come
from ``jax.vmap`` over the batch, placed on the batch's mesh axes (``spmd_axis_name``) so they
stay sharded like the batch; each example then runs as a batch of one, its own ``batch`` axis
unsharded. They cost one gradient per example of memory: ``microbatches`` bounds it (clipped
sums add across microbatches; the noise is drawn once per step).

Sampling: batches are fixed-size slices of the run's shuffled stream (``shuffled``). The
privacy spent is computed by Google's ``dp-accounting`` (its RDP accountant) for the
Poisson-subsampled Gaussian mechanism at sampling rate q = batch_size / training examples,
composed over the steps taken: the usual practice for shuffled batches (Abadi et al. 2016;
Opacus and TF Privacy report it the same way), which is an approximation: a formal guarantee
for shuffling needs Poisson sampling in the data pipeline, which this trainer does not do.
``dp_epsilon`` (at ``privacy.delta``) is logged on every training row.
"""

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

SAMPLINGS = ("shuffled",)


@dataclasses.dataclass(frozen=True)
class Privacy:
  noise_multiplier: float
  clip_norm: float
  delta: float
  sampling: str = "shuffled"

  def describe(self, sampling_rate: float) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "sampling_rate": sampling_rate,
            "accountant": "dp_accounting RDP, Poisson-subsampled Gaussian"}


def settings_from_config(config) -> Privacy | None:
  """The run's DP-SGD settings, or None when ``privacy.noise_multiplier`` is None (off)."""
  block = config.get("privacy")
  if block is None or block.get("noise_multiplier") is None:
    return None
  if block.noise_multiplier < 0:
    raise ValueError(f"privacy.noise_multiplier={block.noise_multiplier} must be >= 0 (0 clips "
                     "without noise: no privacy)")
  if not block.clip_norm > 0:
    raise ValueError(f"privacy.clip_norm={block.clip_norm} must be > 0: it bounds each "
                     "example's gradient norm")
  if not 0 < block.delta < 1:
    raise ValueError(f"privacy.delta={block.delta} must be in (0, 1); use less than "
                     "1 / (training examples)")
  if block.sampling not in SAMPLINGS:
    raise ValueError(f"privacy.sampling={block.sampling!r} is not one of {SAMPLINGS}")
  return Privacy(float(block.noise_multiplier), float(block.clip_norm), float(block.delta),
                 block.sampling)


def check_run(settings: Privacy, config, num_train_examples: int | None,
              model_state: Any) -> float:
  """Refuses what DP-SGD cannot account for; returns the sampling rate q."""
  if num_train_examples is None:
    raise ValueError(f"privacy needs a finite training set to account for, but data.source="
                     f"{config.data.source} is an unlimited stream; use a dataset (shakespeare, "
                     "digits, files:, tfds:)")
  if jax.tree.leaves(model_state):
    raise ValueError("privacy: per-example gradients cannot update batch statistics "
                     "(BatchNorm mixes examples); use a family without model state")
  if config.batch_size > num_train_examples:
    raise ValueError(f"privacy: batch_size={config.batch_size} exceeds the "
                     f"{num_train_examples} training examples")
  return config.batch_size / num_train_examples


def _per_example_rules(rules, example_axes):
  """The rules inside the per-example map: the mapped example axis holds ``example_axes``, so
  no activation of one example may use them (a batch of one stays whole, and an ``embed``
  dimension does not take the ``fsdp`` the batch otherwise claims first)."""
  taken = set(example_axes if isinstance(example_axes, tuple) else (example_axes,))
  inner = []
  for name, axes in rules:
    kept = () if axes is None or name == "batch" else tuple(
        a for a in ((axes,) if isinstance(axes, str) else axes) if a not in taken)
    inner.append((name, kept[0] if len(kept) == 1 else (kept or None)))
  return tuple(inner)


def clipped_sums(grad_fn: Callable, clip_norm: float, example_axes: Any,
                 params, model_state, batch, rng, teacher_variables):
  """Per-example gradients of ``grad_fn`` (``value_and_grad`` of the step's objective), each
  clipped to ``clip_norm``. Returns (sum of clipped gradients, examples, metric sums as the
  step's ``{name: (mean * weight, weight)}``, how many examples were clipped)."""
  examples = jax.tree.leaves(batch)[0].shape[0]
  inner_rules = _per_example_rules(nn.get_logical_axis_rules(), example_axes)

  def one(example, index):
    single = jax.tree.map(lambda x: x[None], example)
    with nn.logical_axis_rules(inner_rules):
      (_, (weight, metrics, _)), grads = grad_fn(params, model_state, single,
                                                 jax.random.fold_in(rng, index),
                                                 teacher_variables)
    return grads, {k: (m * w, w) for k, (m, w) in metrics.items()}

  grads_B, metrics_B = jax.vmap(one, spmd_axis_name=example_axes)(batch, jnp.arange(examples))
  leaves, treedef = jax.tree.flatten(grads_B)
  clipped, n_clipped = optax.per_example_global_norm_clip(leaves, clip_norm)
  metric_sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics_B)
  return jax.tree.unflatten(treedef, clipped), examples, metric_sums, n_clipped


def noised_mean(grad_sum, examples: int, settings: Privacy, key: jax.Array):
  """(sum + N(0, (noise_multiplier * clip_norm)^2)) / examples, one noise draw per leaf."""
  leaves, treedef = jax.tree.flatten(grad_sum)
  keys = jax.random.split(key, len(leaves))
  std = settings.noise_multiplier * settings.clip_norm
  noised = [(g + std * jax.random.normal(k, g.shape, g.dtype)) / examples
            for g, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noised)


def epsilon(settings: Privacy, steps: int, sampling_rate: float) -> float | None:
  """ε at ``settings.delta`` after ``steps`` steps; None when it is unbounded (no noise) and
  0 before the first step."""
  if steps == 0:
    return 0.0
  if settings.noise_multiplier == 0:
    return None
  import dp_accounting  # imported here: only private runs need it

  event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      sampling_rate, dp_accounting.GaussianDpEvent(settings.noise_multiplier)), steps)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(event)
  value = accountant.get_epsilon(settings.delta)
  return None if not math.isfinite(value) else float(value)
