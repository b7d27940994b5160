"""Tables from logical axis names to mesh axes, and helpers to apply them.

Changing the parallelism is changing a table. Each logical name may appear more than once:
Flax goes through the table in order and gives a rule's mesh axes to the array's dimension of
that name when none of those axes is taken yet in that array. So activations (batch, length,
embed) shard the batch over data and fsdp and leave embed whole, while parameters (vocab,
embed) shard embed over fsdp; and a batch dimension next to an expert dimension (which takes
``expert`` first) falls back to the second batch rule.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

RULE_SETS: dict[str, Rules] = {
    # 2-D: batch over data+fsdp, parameters sharded over fsdp (ZeRO-3 style) and over tensor
    # along heads / mlp / vocab (Megatron style). Experts over ``expert``: outside the expert
    # layers that axis is one more data-parallel axis; inside them (activations laid out
    # expert-first) the batch falls back to data+fsdp and tokens move to their experts.
    "fsdp_tensor": (
        ("expert", "expert"),  # before batch: Flax applies rules in table order
        ("batch", ("data", "fsdp", "expert")),
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("embed", "fsdp"),
        ("hidden", "fsdp"),  # an LSTM's recurrent input
        ("kv", None),
        ("gate", None),  # an LSTM's four gates
        ("length", None),
        ("layers", None),
        ("position_buckets", None), ("token_types", None),  # T5's relative bias, BERT's types
        # Convolutions: a kernel's output channels over fsdp (activations' batch takes fsdp
        # first, so their channels stay whole), its input channels whole.
        ("channels", "fsdp"), ("channels_in", None),
        ("rank", None),  # a low-rank factor's inner axis (train/compression/lowrank.py)
        ("height", None), ("width", None),
    ),
    # Pure data parallelism: every device holds every parameter.
    "replicated": (
        ("expert", None),
        ("batch", ("data", "fsdp", "expert", "tensor")),
        ("vocab", None), ("heads", None), ("mlp", None), ("embed", None),
        ("hidden", None), ("kv", None), ("gate", None), ("length", None), ("layers", None),
        ("position_buckets", None), ("token_types", None),
        ("height", None), ("width", None), ("channels", None), ("channels_in", None),
        ("rank", None),
    ),
}


def mesh_axes(rules: Rules) -> tuple[str, ...]:
  """The mesh axes a rules table shards over, in the order a mesh lays them out (``tensor``
  innermost: its collectives are the most frequent)."""
  named = set()
  for _, axes in rules:
    if axes is not None:
      named.update((axes,) if isinstance(axes, str) else axes)
  order = ("replica", "data", "fsdp", "expert", "tensor")  # DiLoCo's replicas outermost
  return tuple(a for a in order if a in named) + tuple(sorted(named - set(order)))


def get_rules(name: str) -> Rules:
  if name not in RULE_SETS:
    raise ValueError(f"unknown sharding rules {name!r}; choose one of {sorted(RULE_SETS)}")
  return RULE_SETS[name]


def check_names(logical_specs: Any, rules: Rules, table: str, what: str = "parameter"
                ) -> None:
  """Raises a one-line ValueError for the first logical axis name that ``rules`` does not
  mention: Flax would replicate that dimension silently (an ``expert`` axis, say).
  ``logical_specs``: a tree of PartitionSpecs or of tuples of names."""
  known = {logical for logical, _ in rules}
  is_spec = lambda x: isinstance(x, (PartitionSpec, tuple))  # noqa: E731
  for path, spec in jax.tree_util.tree_leaves_with_path(logical_specs, is_leaf=is_spec):
    for name in spec:
      if isinstance(name, str) and name not in known:
        where = jax.tree_util.keystr(path, simple=True, separator="/")
        raise ValueError(
            f"logical axis {name!r} of {what} {where} has no rule in the sharding rules "
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
