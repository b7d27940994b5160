"""The train state and its creation directly into its shardings."""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import optax
from jax.sharding import Mesh

from isoflop.sharding import rules as rules_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32); step keys are fold_in(rng, step): resumable
  first_nonfinite_step: jax.Array  # -1, or the (1-based, as logged) first non-finite step


def _init_fn(task, tx: optax.GradientTransformation, batch_shapes) -> Callable:
  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    dummy = {k: jax.numpy.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
    params = task.init_params(params_rng, dummy)  # boxed: carries logical axis names
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=tx.init(params), rng=jax.random.key_data(state_rng),
                      first_nonfinite_step=jax.numpy.full((), -1, jax.numpy.int32))
  return init


def abstract_state(task, tx, batch_shapes, mesh: Mesh, rules) -> tuple[Any, Any, Any]:
  """(shapes, logical PartitionSpecs, NamedShardings) of the unboxed state; allocates nothing."""
  init = _init_fn(task, tx, batch_shapes)
  boxed = jax.eval_shape(init, jax.random.key(0))
  logical_specs = nn.get_partition_spec(boxed)
  shardings = rules_lib.logical_to_sharding(logical_specs, mesh, rules)
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, boxed,
                        is_leaf=_is_box)
  return shapes, logical_specs, shardings


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def create_state(task, tx, batch_shapes, rng: jax.Array, shardings) -> TrainState:
  """Initializes every array on its own shards: parameters are never whole on one device."""
  init = _init_fn(task, tx, batch_shapes)
  return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
