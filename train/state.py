"""The train state and its creation directly into its shardings."""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import optax
from jax.sharding import Mesh, PartitionSpec

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


def abstract_state(task, tx, batch_shapes, mesh: Mesh, rules, ensemble: int = 1
                   ) -> tuple[Any, Any, Any]:
  """(shapes, logical PartitionSpecs of one member, NamedShardings) of the unboxed state;
  allocates nothing. With ``ensemble`` > 1 every array gets a leading, unsharded seed axis."""
  init = _init_fn(task, tx, batch_shapes)
  boxed = jax.eval_shape(init, jax.random.key(0))
  logical_specs = nn.get_partition_spec(boxed)
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, boxed,
                        is_leaf=_is_box)
  placed = logical_specs
  if ensemble > 1:
    placed = jax.tree.map(lambda spec: PartitionSpec(None, *spec), logical_specs,
                          is_leaf=lambda x: isinstance(x, PartitionSpec))
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((ensemble, *s.shape), s.dtype), shapes)
  shardings = rules_lib.logical_to_sharding(placed, mesh, rules)
  return shapes, logical_specs, shardings


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def create_state(task, tx, batch_shapes, rng: jax.Array, shardings) -> TrainState:
  """Initializes every array on its own shards: parameters are never whole on one device.
  A batch of keys (one per seed) gives an ensemble state with a leading seed axis."""
  init = _init_fn(task, tx, batch_shapes)
  one = lambda r: nn.meta.unbox(init(r))  # noqa: E731
  return jax.jit(jax.vmap(one) if rng.ndim else one, out_shardings=shardings)(rng)
