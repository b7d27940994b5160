"""Tables from logical axis names to mesh axes, and helpers to apply them.

Changing the parallelism is changing a table. Each logical name may appear more than once:
Flax takes, for every dimension, the first rule whose mesh axes are still unused in that
array. So activations (batch, length, embed) shard the batch over data and fsdp and leave
embed whole, while parameters (vocab, embed) shard embed over fsdp.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

RULE_SETS: dict[str, Rules] = {
    # 2-D: batch over data+fsdp, parameters sharded over fsdp (ZeRO-3 style) and over tensor
    # along heads / mlp / vocab (Megatron style).
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("embed", "fsdp"),
        ("kv", None),
        ("length", None),
        ("layers", None),
    ),
    # Pure data parallelism: every device holds every parameter.
    "replicated": (
        ("batch", ("data", "fsdp", "tensor")),
        ("vocab", None), ("heads", None), ("mlp", None), ("embed", None),
        ("kv", None), ("length", None), ("layers", None),
    ),
}


def get_rules(name: str) -> Rules:
  if name not in RULE_SETS:
    raise ValueError(f"unknown sharding rules {name!r}; choose one of {sorted(RULE_SETS)}")
  return RULE_SETS[name]


def check_names(logical_specs: Any, rules: Rules, table: str) -> None:
  """Raises a one-line ValueError for the first logical axis name that ``rules`` does not
  mention: Flax would replicate that dimension silently (an ``expert`` axis, say)."""
  known = {logical for logical, _ in rules}
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  for path, spec in jax.tree_util.tree_leaves_with_path(logical_specs, is_leaf=is_spec):
    for name in spec:
      if isinstance(name, str) and name not in known:
        where = jax.tree_util.keystr(path, simple=True, separator="/")
        raise ValueError(
            f"logical axis {name!r} of parameter {where} has no rule in the sharding rules "
            f"table {table!r} (it names {sorted(known)}); add a rule for {name!r} to that "
            "table in sharding/rules.py (None replicates it)")


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on ``mesh``."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a host batch whose leading dimension is ``batch``."""
  names = ("batch",) + (None,) * (ndim - 1)
  return NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch dimension is split."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  size = 1
  for axis in axes:
    size *= mesh.shape[axis]
  return size


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
  """Raises a one-line ValueError for the first array a sharding cannot split evenly."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  for (path, leaf), sharding in zip(leaves, jax.tree_util.tree_leaves(shardings)):
    spec = sharding.spec
    for dim, axes in zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec))):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      ways = 1
      for axis in axes:
        ways *= sharding.mesh.shape[axis]
      if dim % ways:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        raise ValueError(
            f"{name} has a dimension of size {dim} that mesh axes {axes} ({ways} ways) cannot "
            "split evenly; change the mesh sizes or the model shape")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
