"""Low-communication training: DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed
Low-Communication Training of Language Models").

``diloco.replicas`` = M copies of the model, one per slice of a ``replica`` mesh axis (each copy
sharded within its slice by the run's rules, as any run), each take ``diloco.inner_steps`` = H
steps of the run's own optimizer on their own part of every batch (the batch splits into M
equal parts, replica-major, so each part already lives on its replica's devices). Every H steps
the replicas meet once: the outer gradient is the global parameters minus the replicas' mean,
and the outer optimizer (Nesterov momentum, lr 0.7, momentum 0.9, the paper's) updates the
global parameters, which every replica then continues from. Nothing crosses between replicas
in between. H = 1 with an outer SGD of lr 1 is synchronous data parallelism (tested).

The train state's ``params`` are the global parameters (what evaluation, checkpoints' readers
and the tools see); ``opt_state`` holds each replica's inner optimizer state (leading replica
axis); ``outer`` holds the replicas' parameters and the outer optimizer's state. All of it is
checkpointed, so a resumed run is bitwise the uninterrupted one.

``comm_bytes`` (metrics.jsonl, every run): the bytes moved between the data-parallel groups so
far by an ideal ring all-reduce of the fp32 (or param_dtype) gradient, 2 (M - 1) P bytes of
values per exchange among M groups of P parameters: every step for data parallelism (M = the
data-parallel size), every H steps for DiLoCo (M = replicas; traffic inside a replica is not
between replicas and not counted).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

AXIS = "replica"
OUTER_OPTIMIZERS = ("nesterov", "sgd")


@dataclasses.dataclass(frozen=True)
class DilocoSettings:
  replicas: int
  inner_steps: int
  outer_optimizer: str
  outer_lr: float
  outer_momentum: float

  def describe(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def settings_from_config(config, device_count: int | None = None) -> DilocoSettings | None:
  """None when ``diloco.replicas`` is None (off); one-line ValueErrors otherwise."""
  block = config.get("diloco")
  if block is None or block.get("replicas") is None:
    return None
  if block.replicas < 1 or block.inner_steps < 1:
    raise ValueError(f"diloco.replicas={block.replicas} and diloco.inner_steps="
                     f"{block.inner_steps} must both be positive")
  if device_count is not None and device_count % block.replicas:
    raise ValueError(f"diloco.replicas={block.replicas} does not divide the {device_count} "
                     "devices; use a divisor of the device count")
  if block.outer_optimizer not in OUTER_OPTIMIZERS:
    raise ValueError(f"diloco.outer_optimizer={block.outer_optimizer!r} is not one of "
                     f"{OUTER_OPTIMIZERS}")
  if not block.outer_lr > 0:
    raise ValueError(f"diloco.outer_lr={block.outer_lr} must be > 0")
  for name, on in (("ensemble", config.ensemble > 1),
                   ("privacy", config.get("privacy") and
                    config.privacy.get("noise_multiplier") is not None),
                   ("prune", config.prune.method is not None),
                   ("init_from", bool(config.init_from)),
                   ("distill", config.distill.teacher is not None)):
    if on:
      raise ValueError(f"diloco does not combine with {name} yet; turn one of them off")
  return DilocoSettings(int(block.replicas), int(block.inner_steps), block.outer_optimizer,
                        float(block.outer_lr), float(block.outer_momentum))


def rules(base_rules):
  """The run's rules with a ``replica`` axis: the batch splits over replicas first (each
  replica's part of the batch on its own devices); parameters never name it."""
  out = [(AXIS, AXIS)]
  for name, axes in base_rules:
    if name == "batch":
      axes = (AXIS,) + ((axes,) if isinstance(axes, str) else tuple(axes or ()))
    out.append((name, axes))
  return tuple(out)


def outer_optimizer(settings: DilocoSettings) -> optax.GradientTransformation:
  if settings.outer_optimizer == "nesterov":
    return optax.sgd(settings.outer_lr, momentum=settings.outer_momentum, nesterov=True)
  return optax.sgd(settings.outer_lr)


def _replicated(tree, count: int):
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *x.shape)), tree)


def abstract_state(shapes, logical_specs, outer_tx, settings: DilocoSettings):
  """(shapes, logical specs) of the DiLoCo state from those of one model's state."""
  M = settings.replicas
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  with_axis = lambda tree: jax.tree.map(lambda s: PartitionSpec(AXIS, *s), tree,  # noqa: E731
                                        is_leaf=is_spec)
  stacked = lambda tree: jax.tree.map(  # noqa: E731
      lambda s: jax.ShapeDtypeStruct((M, *s.shape), s.dtype), tree)
  outer_shapes = jax.eval_shape(outer_tx.init, shapes.params)
  outer_specs = optax.tree_map_params(
      outer_tx, lambda _, spec: spec, outer_shapes, logical_specs.params,
      transform_non_params=lambda _: PartitionSpec(),
      is_leaf=lambda x: is_spec(x) or isinstance(x, jax.ShapeDtypeStruct))
  shapes = shapes.replace(opt_state=stacked(shapes.opt_state),
                          outer={"replica_params": stacked(shapes.params),
                                 "opt_state": outer_shapes})
  specs = logical_specs.replace(opt_state=with_axis(logical_specs.opt_state),
                                outer={"replica_params": with_axis(logical_specs.params),
                                       "opt_state": outer_specs})
  return shapes, specs


def expand(state, outer_tx, settings: DilocoSettings):
  """One model's fresh state -> the DiLoCo state: every replica starts from the same
  parameters and a fresh inner optimizer state."""
  M = settings.replicas
  return state.replace(opt_state=_replicated(state.opt_state, M),
                       outer={"replica_params": _replicated(state.params, M),
                              "opt_state": outer_tx.init(state.params)})


def make_step(inner_step: Callable, outer_tx, settings: DilocoSettings, inner_rules):
  """The DiLoCo step from the run's own (inner) step: every replica takes one inner step on
  its part of the batch; every ``inner_steps`` steps the outer step syncs them."""
  M, H = settings.replicas, settings.inner_steps

  def step(state, batch):
    batch_M = jax.tree.map(lambda x: x.reshape(M, x.shape[0] // M, *x.shape[1:]), batch)
    base_key = jax.random.wrap_key_data(state.rng)
    keys = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(base_key, r)))(
        jnp.arange(M))
    inner = state.replace(step=jnp.broadcast_to(state.step, (M,)),
                          params=state.outer["replica_params"], rng=keys,
                          first_nonfinite_step=jnp.broadcast_to(state.first_nonfinite_step,
                                                                (M,)),
                          outer={})
    with nn.logical_axis_rules(inner_rules):  # inside, each replica is an ordinary run
      new_inner, metrics_M = jax.vmap(inner_step, spmd_axis_name=AXIS)(inner, batch_M)
    done = state.step + 1

    def sync(replica_params):
      mean = jax.tree.map(lambda p: jnp.mean(p, axis=0), replica_params)
      outer_grad = jax.tree.map(jnp.subtract, state.params, mean)
      updates, outer_opt = outer_tx.update(outer_grad, state.outer["opt_state"], state.params)
      params = optax.apply_updates(state.params, updates)
      return params, outer_opt, _replicated(params, M)

    def keep(replica_params):
      return state.params, state.outer["opt_state"], replica_params

    params, outer_opt, replica_params = jax.lax.cond(done % H == 0, sync, keep,
                                                     new_inner.params)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics_M)
    new_state = state.replace(step=done, params=params, opt_state=new_inner.opt_state,
                              first_nonfinite_step=jnp.max(new_inner.first_nonfinite_step),
                              outer={"replica_params": replica_params, "opt_state": outer_opt})
    return new_state, metrics

  return step


def communication(record: dict[str, Any], settings: DilocoSettings | None,
                  data_parallel: int, param_itemsize: int) -> dict[str, Any]:
  """``config.json``'s ``comm``: bytes moved between groups per exchange, and steps between
  exchanges (see the module doc)."""
  params = record["param_counts_padded"]["total"]
  groups = settings.replicas if settings else data_parallel
  return {"groups": groups, "steps_per_exchange": settings.inner_steps if settings else 1,
          "bytes_per_exchange": int(2 * (groups - 1) * params * param_itemsize),
          "convention": "ring all-reduce of the gradient (DiLoCo: the outer gradient), "
                        "2 (groups - 1) x parameters x bytes per value"}


def comm_bytes(comm: dict[str, Any], steps_done: int) -> int:
  return int(steps_done // comm["steps_per_exchange"] * comm["bytes_per_exchange"])

