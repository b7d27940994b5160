"""The train state and its creation directly into its shardings."""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import optax
from jax.sharding import Mesh, PartitionSpec

from isoflop.sharding import rules as rules_lib


ONE_OFF_COMPILE = {"xla_backend_optimization_level": 0}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # the family's mutable collections ({} for most): BatchNorm statistics
  rng: jax.Array  # raw key data (uint32); step keys are fold_in(rng, step): resumable
  first_nonfinite_step: jax.Array  # -1, or the (1-based, as logged) first non-finite step
  # Pruning masks (train/compression/pruning.py): booleans for the pruned parameters only,
  # nested like them; {} without pruning.
  masks: Any = flax.struct.field(default_factory=dict)
  # DiLoCo (train/diloco.py): the replicas' parameters and the outer optimizer's state; {}
  # otherwise.
  outer: Any = flax.struct.field(default_factory=dict)


def _variables_fn(task, batch_shapes) -> Callable:
  def init_variables(rng):
    dummy = {k: jax.numpy.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
    return task.init_variables(rng, dummy)  # boxed: carries logical axis names
  return init_variables


def _init_fn(task, tx: optax.GradientTransformation, batch_shapes) -> Callable:
  init_variables = _variables_fn(task, batch_shapes)

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    variables = nn.meta.unbox(init_variables(params_rng))
    params = variables.pop("params")
    masks = {}
    if task.pruner is not None:  # pruned from the start when the method prunes at step 0
      params, masks = task.pruner.initial(params)
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=tx.init(params), model_state=variables,
                      rng=jax.random.key_data(state_rng),
                      first_nonfinite_step=jax.numpy.full((), -1, jax.numpy.int32), masks=masks)
  return init


def _abstract_key() -> jax.ShapeDtypeStruct:
  """A key's shape and dtype, made without running anything: under a mesh of compile-only
  devices (a TPU plan, train/tpu_plan.py) nothing can run."""
  return jax.eval_shape(lambda: jax.random.key(0))


def abstract_variables(task, batch_shapes) -> dict[str, Any]:
  """The parameters' and model state's shapes (``{"params": ..., <collection>: ...}``), still
  Flax-boxed with their logical axis names; allocates nothing. Call it under the run's
  logical-axis rules so an activation axis without a rule is caught here
  (``models/logical.py``)."""
  return jax.eval_shape(_variables_fn(task, batch_shapes), _abstract_key())


def abstract_state(task, tx, batch_shapes, mesh: Mesh, rules, ensemble: int = 1,
                   boxed_variables: Any = None) -> tuple[Any, Any, Any]:
  """(shapes, logical PartitionSpecs of one member, NamedShardings) of the state; allocates
  nothing. Optimizer-state leaves shaped like a parameter take that parameter's spec (found by
  ``optax.tree_map_params``), the rest are replicated. ``boxed_variables``: ``abstract_variables``'s
  result, if already at hand. With ``ensemble`` > 1 every array gets a
  leading, unsharded seed axis."""
  shapes = jax.eval_shape(_init_fn(task, tx, batch_shapes), _abstract_key())
  if boxed_variables is None:  # the caller's, when it traced them already
    boxed_variables = abstract_variables(task, batch_shapes)
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  variable_specs = dict(nn.get_partition_spec(boxed_variables))
  param_specs = variable_specs.pop("params")
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  a group's absent params
  opt_specs = optax.tree_map_params(
      tx, lambda leaf, spec: leaf if masked(leaf) else spec, shapes.opt_state, param_specs,
      transform_non_params=lambda _: PartitionSpec(),
      is_leaf=lambda x: is_spec(x) or masked(x) or isinstance(x, jax.ShapeDtypeStruct))
  scalar = PartitionSpec()
  mask_specs = {} if task.pruner is None else task.pruner.mask_specs(param_specs)
  logical_specs = TrainState(step=scalar, params=param_specs, opt_state=opt_specs,
                             model_state=variable_specs, rng=scalar, first_nonfinite_step=scalar,
                             masks=mask_specs)
  placed = logical_specs
  if ensemble > 1:
    placed = jax.tree.map(lambda spec: PartitionSpec(None, *spec), logical_specs,
                          is_leaf=is_spec)
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((ensemble, *s.shape), s.dtype), shapes)
  shardings = rules_lib.logical_to_sharding(placed, mesh, rules)
  return shapes, logical_specs, shardings


def seed_keys(seed: int, ensemble: int = 1) -> jax.Array:
  """The initial key of a run, or of each member of a seed ensemble (member i: seed + i)."""
  if ensemble == 1:
    return jax.random.key(seed)
  return jax.vmap(jax.random.key)(seed + jax.numpy.arange(ensemble))


def create_state(task, tx, batch_shapes, rng: jax.Array, shardings,
                 expand: Callable | None = None) -> TrainState:
  """Initializes every array on its own shards: parameters are never whole on one device.
  A batch of keys (one per seed) gives an ensemble state with a leading seed axis.
  ``expand`` turns the fresh state into another layout (DiLoCo's replicas)."""
  init = _init_fn(task, tx, batch_shapes)
  init = jax.vmap(init) if rng.ndim else init
  if expand is not None:
    plain = init
    init = lambda key: expand(plain(key))  # noqa: E731
  jitted = jax.jit(init, out_shardings=shardings)
  # Run once, so not worth XLA's backend optimizations: they tripled the start-up's compile
  # time of a small model's initialization on CPU (3.1 s -> 0.9 s without), same values.
  return jitted.lower(rng).compile(compiler_options=ONE_OFF_COMPILE)(rng)
