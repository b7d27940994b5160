"""Pruning during training: magnitude masks held in the train state.

Three methods (``config.prune.method``):
  magnitude  one shot: at ``start_step`` (0: at initialization) the smallest-magnitude
             ``sparsity`` of the selected weights are zeroed, and stay zero
  gradual    Zhu & Gupta (2017): every ``every`` steps from ``start_step`` to ``end_step`` the
             target sparsity follows s_t = s (1 - (1 - (t - t0) / (t1 - t0))^3), held after t1
  nm         N:M structured sparsity (2:4 by default): at ``start_step``, in every group of M
             consecutive weights along a matrix's input (contraction) dimension, the N largest
             in magnitude are kept

Which weights: the parameter-role labeller's ``hidden`` matrices by default (``prune.roles``
may add ``readout``); embeddings, norms and biases never. Scope (``prune.scope``): ``layer``
ranks each matrix (each layer of a stacked one, each expert) on its own; ``global`` ranks all
selected weights together (a global sort: fine at research scale, heavy on a large sharded
model). Masks are boolean trees holding only the selected parameters, saved with the state, so
a resumed run continues with the same masks; pruned weights are zeroed after every optimizer
update, so they stay exactly zero (the optimizer's moments for them are kept but unused).
"""

import dataclasses
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from isoflop.models import param_roles

METHODS = ("magnitude", "gradual", "nm")
SCOPES = ("layer", "global")
PRUNABLE_ROLES = (param_roles.HIDDEN, param_roles.READOUT)


@dataclasses.dataclass(frozen=True)
class PruneSettings:
  method: str
  sparsity: float  # the final fraction of the selected weights that are zero
  n: int
  m: int
  start_step: int
  end_step: int
  every: int
  scope: str
  roles: tuple[str, ...]

  def target(self, step):
    """Sparsity wanted after ``step`` completed steps (a Python int or a traced array)."""
    if self.method != "gradual":
      return jnp.where(step >= self.start_step, self.sparsity, 0.0)
    progress = jnp.clip((step - self.start_step) / (self.end_step - self.start_step), 0.0, 1.0)
    return self.sparsity * (1.0 - (1.0 - progress) ** 3)

  def prunes_at(self, step):
    """Whether masks are recomputed after ``step`` completed steps."""
    if self.method != "gradual":
      return step == self.start_step
    inside = (step >= self.start_step) & (step <= self.end_step)
    return inside & (((step - self.start_step) % self.every == 0) | (step == self.end_step))


def settings_from_config(block, steps: int | None = None) -> PruneSettings | None:
  """The ``prune`` config block, checked; None when ``prune.method`` is None (off).
  ``start_fraction`` / ``end_fraction``, when set, place the start and end at those fractions
  of the run's ``steps`` (what a sweep of runs of different lengths needs)."""
  if block is None or block.get("method") is None:
    return None
  for key in ("start_fraction", "end_fraction"):
    fraction = block.get(key)
    if fraction is not None:
      if not 0.0 <= fraction <= 1.0 or steps is None:
        raise ValueError(f"prune.{key}={fraction} must be a fraction of the run's steps in "
                         "[0, 1]")
      block = block.copy_and_resolve_references()
      block[key.replace("fraction", "step")] = int(round(fraction * steps))
  method = block.method
  if method not in METHODS:
    raise ValueError(f"prune.method={method!r} is unknown; choose one of {', '.join(METHODS)}")
  n, m = int(block.n), int(block.m)
  if method == "nm":
    if not 0 < n < m:
      raise ValueError(f"prune.n={n}, prune.m={m}: N:M sparsity keeps N of every M weights, so "
                       "it needs 0 < N < M (e.g. prune.n=2 prune.m=4)")
    sparsity = 1.0 - n / m
  else:
    sparsity = float(block.sparsity)
    if not 0.0 <= sparsity < 1.0:
      raise ValueError(f"prune.sparsity={sparsity} must be in [0, 1): the fraction of the "
                       "selected weights set to zero")
  start, end, every = int(block.start_step), int(block.get("end_step") or 0), int(block.every)
  if start < 0:
    raise ValueError(f"prune.start_step={start} must be >= 0")
  if method == "gradual" and end <= start:
    raise ValueError(f"prune.end_step={end} must be after prune.start_step={start} for "
                     "gradual pruning; set it to the step where the final sparsity is reached")
  if every <= 0:
    raise ValueError(f"prune.every={every} must be a positive number of steps")
  if block.scope not in SCOPES:
    raise ValueError(f"prune.scope={block.scope!r} is unknown; choose one of {', '.join(SCOPES)}")
  roles = tuple(block.roles)
  if not roles or set(roles) - set(PRUNABLE_ROLES):
    raise ValueError(f"prune.roles={roles} must name some of {', '.join(PRUNABLE_ROLES)} "
                     "(embeddings, norms and biases are not pruned)")
  if method == "nm" and block.scope == "global":
    raise ValueError("prune.scope=global does not apply to N:M sparsity, which is per group "
                     "of M weights; use prune.scope=layer")
  return PruneSettings(method, sparsity, n, m, start, end, every, block.scope, roles)


def _flat(tree) -> dict[tuple, Any]:
  return flax.traverse_util.flatten_dict(tree) if tree else {}


def _nest(flat: dict[tuple, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat) if flat else {}


def _spec_names(spec) -> tuple[str, ...]:
  return tuple(spec)


class Pruner:
  """Masks for the parameters a ``PruneSettings`` selects; every method is pure and jit-able."""

  def __init__(self, settings: PruneSettings, param_specs: Any, roles: Any, param_shapes: Any):
    self.settings = settings
    specs = _flat(param_specs)
    self.axes = {}  # path -> (copies, inputs, outputs) dimension indices
    for path, role in _flat(roles).items():
      if role.kind in settings.roles:
        self.axes[path] = param_roles.matrix_axes(_spec_names(specs[path]))
    if not self.axes:
      raise ValueError(f"prune: the model has no parameters of role {', '.join(settings.roles)}"
                       " to prune")
    shapes = _flat(param_shapes)
    self.shapes = {path: tuple(shapes[path].shape) for path in self.axes}
    if settings.method == "nm":
      for path, (_, inputs, _) in self.axes.items():
        size = int(np.prod([self.shapes[path][i] for i in inputs]))
        if size % settings.m:
          name = "/".join(map(str, path))
          raise ValueError(f"prune.m={settings.m} does not divide {name}'s input dimension "
                           f"{size} (shape {self.shapes[path]}); pick an M that divides it")

  @property
  def selected_size(self) -> int:
    return sum(int(np.prod(shape)) for shape in self.shapes.values())

  def planned_pruned(self, sparsity: float | None = None) -> int:
    """Weights zero at ``sparsity`` (default: the final one), as the masks will count them."""
    s = self.settings.sparsity if sparsity is None else sparsity
    if self.settings.method == "nm":
      return self.selected_size * (self.settings.m - self.settings.n) // self.settings.m
    if self.settings.scope == "global":
      return int(np.round(s * self.selected_size))
    total = 0
    for path, (copies, _, _) in self.axes.items():
      shape = self.shapes[path]
      count = int(np.prod([shape[i] for i in copies]))
      total += count * int(np.round(s * (int(np.prod(shape)) // count)))
    return total

  def mask_specs(self, param_specs: Any) -> dict:
    """Each mask's logical PartitionSpec: its parameter's (masks shard like their
    parameters)."""
    specs = _flat(param_specs)
    return _nest({path: specs[path] for path in self.axes})

  def ones(self, dtype=jnp.bool_) -> dict:
    return _nest({path: jnp.ones(shape, dtype) for path, shape in self.shapes.items()})

  def initial(self, params: Any) -> tuple[Any, dict]:
    """(params, masks) at initialization: pruned already when the method prunes at step 0."""
    return self.update(params, self.ones(), 0)

  def update(self, params: Any, masks: dict, step) -> tuple[Any, dict]:
    """After ``step`` completed steps: masks recomputed from the weights' magnitudes when a
    pruning step falls there, then applied, so pruned weights are exactly zero."""
    masks = jax.lax.cond(self.settings.prunes_at(step),
                         lambda: self._masks(params, masks, self.settings.target(step)),
                         lambda: masks)
    return apply_masks(params, masks), masks

  def sparsity(self, masks: dict) -> jax.Array:
    """The fraction of the selected weights that are pruned."""
    pruned = sum(jnp.sum(~m, dtype=jnp.int32) for m in jax.tree.leaves(masks))
    return pruned.astype(jnp.float32) / self.selected_size

  def _masks(self, params, masks, sparsity) -> dict:
    flat_params = _flat(params)
    # Already-pruned weights rank first (magnitude 0), so sparsity only grows.
    magnitude = {path: jnp.abs(flat_params[path].astype(jnp.float32))
                 * _flat(masks)[path] for path in self.axes}
    if self.settings.method == "nm":
      return _nest({path: self._nm_mask(magnitude[path], path) for path in self.axes})
    if self.settings.scope == "global":
      return _nest(self._global_masks(magnitude, sparsity))
    return _nest({path: self._layer_mask(magnitude[path], path, sparsity)
                  for path in self.axes})

  def _layer_mask(self, magnitude, path, sparsity):
    copies, _, _ = self.axes[path]
    shape = magnitude.shape
    rows = int(np.prod([shape[i] for i in copies]))
    flat = magnitude.reshape(rows, -1)
    k = jnp.round(sparsity * flat.shape[1]).astype(jnp.int32)
    return (_ranks(flat) >= k).reshape(shape)

  def _global_masks(self, magnitude, sparsity):
    paths = list(self.axes)
    joined = jnp.concatenate([magnitude[p].reshape(-1) for p in paths])
    k = jnp.round(sparsity * joined.shape[0]).astype(jnp.int32)
    kept = _ranks(joined[None])[0] >= k
    out, offset = {}, 0
    for p in paths:
      size = magnitude[p].size
      out[p] = kept[offset:offset + size].reshape(magnitude[p].shape)
      offset += size
    return out

  def _nm_mask(self, magnitude, path):
    copies, inputs, outputs = self.axes[path]
    shape = magnitude.shape
    sizes = [int(np.prod([shape[i] for i in group])) for group in (copies, inputs, outputs)]
    m = self.settings.m
    grouped = magnitude.reshape(sizes[0], sizes[1] // m, m, sizes[2])
    # Rank within each group of M, largest first: keep the N largest.
    order = jnp.argsort(-grouped, axis=2, stable=True)
    ranks = jnp.argsort(order, axis=2, stable=True)
    return (ranks < self.settings.n).reshape(shape)


def _ranks(rows: jax.Array) -> jax.Array:
  """Each entry's rank by magnitude within its row (0 = smallest); ties by position, so
  exactly k entries rank below k."""
  order = jnp.argsort(rows, axis=1, stable=True)
  return jnp.argsort(order, axis=1, stable=True)


def apply_masks(params: Any, masks: dict) -> Any:
  """``params`` with the masked-out weights set to zero."""
  flat_masks = _flat(masks)
  if not flat_masks:
    return params
  flat = _flat(params)
  for path, mask in flat_masks.items():
    flat[path] = jnp.where(mask, flat[path], jnp.zeros((), flat[path].dtype))
  return _nest(flat)


def make(config, param_specs: Any, roles: Any, param_shapes: Any) -> Pruner | None:
  """The run's pruner, or None without ``config.prune.method``."""
  settings = settings_from_config(config.get("prune"), config.steps)
  return None if settings is None else Pruner(settings, param_specs, roles, param_shapes)


def describe(pruner: Pruner, n_params: dict[str, int]) -> dict[str, Any]:
  """What config.json records: the method and the non-zero counts the masks will leave, N under
  each convention less the pruned weights (pruned matrices count in every convention)."""
  pruned = pruner.planned_pruned()
  s = pruner.settings
  return {"method": s.method, "sparsity": s.sparsity, "scope": s.scope, "roles": list(s.roles),
          "n": s.n if s.method == "nm" else None, "m": s.m if s.method == "nm" else None,
          "selected_params": pruner.selected_size, "pruned_params": pruned,
          "n_params_nonzero": {k: int(v) - pruned for k, v in n_params.items()}}
