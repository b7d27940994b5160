"""One pure training step: loss, gradients (optionally accumulated), optimizer update."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from isoflop.train import privacy as privacy_lib
from isoflop.train.state import TrainState

NOISE_DOMAIN = 2**31 - 1  # DP noise keys: fold_in(step key, this), apart from the parts' keys


def group_norms(prefix: str, tree: Any, stacked: Any) -> dict[str, jax.Array]:
  """L2 norms per top-level module; modules under a scanned layer axis get one per layer.

  ``stacked`` mirrors ``tree`` with True where the leaf's leading axis is ``layers``.
  Keys look like ``grad_norm/embed`` and ``grad_norm/layers/attention/03``.
  """
  sums: dict[str, jax.Array] = {}
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for (path, leaf), is_stacked in zip(leaves, jax.tree.leaves(stacked)):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    sq = jnp.square(leaf.astype(jnp.float32))
    if is_stacked:
      per_layer = jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)
      for i in range(leaf.shape[0]):
        key = f"{prefix}/{'/'.join(names[:2])}/{i:02d}"
        sums[key] = sums.get(key, 0.0) + per_layer[i]
    else:
      key = f"{prefix}/{names[0]}"
      sums[key] = sums.get(key, 0.0) + jnp.sum(sq)
  return {k: jnp.sqrt(v) for k, v in sums.items()}


def _weighted_sums(metrics, weight):
  """{name: (mean, weight)} -> {name: (mean * weight, weight)}, for adding across parts."""
  return {k: (m * w, w) for k, (m, w) in metrics.items()}, weight


def make_train_step(task, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    microbatches: int = 1, l1: float = 0.0, l2: float = 0.0,
                    decay_mask: Any = None, layer_norms_stacked: Any = None,
                    unroll_microbatches: bool = False,
                    privacy: privacy_lib.Privacy | None = None, example_axes: Any = None
                    ) -> Callable:
  """Returns ``step(state, batch) -> (state, metrics)``, pure and ready for ``jax.jit``.

  The task gives each batch's mean objective and the weight it covers (target tokens,
  examples). With ``microbatches`` > 1 the batch is split into equal parts whose gradients and
  metrics are added weighted by their weights and divided once by the total: the full-batch
  gradient of the mean even when parts hold different numbers of targets. Model state (e.g.
  BatchNorm statistics) passes from one microbatch to the next. L1/L2 penalties apply where
  ``decay_mask`` (a tree of bools like the parameters, ``param_roles.decay_mask``) is True:
  matrices, not norms or biases. ``layer_norms_stacked`` (a tree of bools, see
  ``group_norms``) turns on per-group norms of params, grads, updates.
  ``unroll_microbatches`` unrolls the accumulation loop: the same computation, for XLA's
  cost analysis, which counts a loop body once. A task with a distillation teacher takes the
  teacher's variables as the step's third argument (frozen: no gradient flows to them).
  ``privacy`` (train/privacy.py) makes the gradient DP-SGD's: per-example gradients clipped,
  summed over every microbatch, noised once and divided by the batch's examples;
  ``example_axes`` are the mesh axes of the batch's leading dimension.
  """
  if (l1 or l2) and decay_mask is None:
    raise ValueError("L1/L2 penalties need decay_mask (param_roles.decay_mask)")

  def objective(params, model_state, batch, rng, teacher_variables):
    terms, new_model_state = task.losses(params, model_state, batch, rng, train=True,
                                         teacher_variables=teacher_variables)
    loss = terms.objective
    if l1 or l2:
      decayed = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask)) if m]
      if l1:
        loss = loss + l1 * sum(jnp.sum(jnp.abs(p)) for p in decayed)
      if l2:
        loss = loss + l2 * sum(jnp.sum(jnp.square(p)) for p in decayed)
    return loss, (terms.weight, terms.metrics, new_model_state)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def private_gradients(params, model_state, batch, rng, teacher_variables):
    """DP-SGD's gradient of the batch (model_state is empty: privacy.check_run)."""
    def part_sums(index, part):
      grads, examples, metrics, n_clipped = privacy_lib.clipped_sums(
          grad_fn, privacy.clip_norm, example_axes, params, model_state, part,
          jax.random.fold_in(rng, index), teacher_variables)
      metrics["dp_clipped_fraction"] = (n_clipped.astype(jnp.float32),
                                        jnp.asarray(examples, jnp.float32))
      return grads, metrics

    if microbatches == 1:
      grads, metric_sums = part_sums(0, batch)
    else:
      split = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
          .swapaxes(0, 1), batch)
      first = jax.tree.map(lambda x: x[0], split)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(part_sums, 0, first))

      def accumulate(sums, inputs):
        return jax.tree.map(jnp.add, sums, part_sums(*inputs)), None

      (grads, metric_sums), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(microbatches), split),
          unroll=microbatches if unroll_microbatches else 1)
    examples = jax.tree.leaves(batch)[0].shape[0]
    grads = privacy_lib.noised_mean(grads, examples, privacy,
                                    jax.random.fold_in(rng, NOISE_DOMAIN))
    metrics = {k: total / jnp.maximum(w, 1e-12) for k, (total, w) in metric_sums.items()}
    return grads, metrics

  def step(state: TrainState, batch, teacher_variables=None
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if privacy is not None:
      model_state = state.model_state
      grads, metrics = private_gradients(state.params, model_state, batch, rng,
                                         teacher_variables)
    elif microbatches == 1:
      (_, (_, metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch,
                                                      rng, teacher_variables)
      metrics = {k: mean for k, (mean, _) in metrics.items()}
    else:
      # Microbatch i takes rows i, i+M, ...: every device keeps its own rows, no resharding.
      split = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
          .swapaxes(0, 1), batch)

      def micro_sums(model_state, index, micro):
        (_, (weight, metrics, model_state)), grads = grad_fn(
            state.params, model_state, micro, jax.random.fold_in(rng, index), teacher_variables)
        grads = jax.tree.map(lambda g: g * weight.astype(g.dtype), grads)
        return (grads, *_weighted_sums(metrics, weight)), model_state

      def accumulate(carry, inputs):
        sums, model_state = carry
        new_sums, model_state = micro_sums(model_state, *inputs)
        return (jax.tree.map(jnp.add, sums, new_sums), model_state), None

      first = jax.tree.map(lambda x: x[0], split)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(micro_sums, state.model_state, 0, first)[0])
      ((grads, metric_sums, weight), model_state), _ = jax.lax.scan(
          accumulate, (zeros, state.model_state), (jnp.arange(microbatches), split),
          unroll=microbatches if unroll_microbatches else 1)
      grads = jax.tree.map(lambda g: g / weight.astype(g.dtype), grads)
      metrics = {k: total / jnp.maximum(w, 1e-12) for k, (total, w) in metric_sums.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    masks = state.masks
    if task.pruner is not None:  # pruned weights back to zero; masks recomputed on schedule
      params, masks = task.pruner.update(params, masks, state.step + 1)
    metrics = dict(metrics)
    if task.pruner is not None:
      metrics["sparsity"] = task.pruner.sparsity(masks)
    metrics["lr"] = schedule(state.step)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["update_norm"] = optax.tree.norm(updates)
    if layer_norms_stacked is not None:
      metrics.update(group_norms("param_norm", params, layer_norms_stacked))
      metrics.update(group_norms("grad_norm", grads, layer_norms_stacked))
      metrics.update(group_norms("update_norm", updates, layer_norms_stacked))
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    first_bad = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step + 1,
                          state.first_nonfinite_step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state, first_nonfinite_step=first_bad,
                              masks=masks)
    return new_state, metrics

  return step
