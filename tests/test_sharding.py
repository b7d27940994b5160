"""Mesh construction and the logical-to-mesh rules table."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib


def test_minus_one_fills_the_remaining_devices():
  assert mesh_lib.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == \
      {"data": 2, "fsdp": 2, "tensor": 2}
  mesh = mesh_lib.build_mesh({"data": 1, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "available"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "does not divide"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, "positive"),
    ({"pipeline": 2}, "unknown mesh axes"),
])
def test_bad_meshes_are_refused(sizes, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.build_mesh(sizes)


def test_rules_shard_parameters_and_activations_differently():
  rules = rules_lib.get_rules("fsdp_tensor")
  assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("tensor", "fsdp")
  assert nn.logical_to_mesh_axes(("layers", "embed", "heads", "kv"), rules) == \
      P(None, "fsdp", "tensor", None)
  # Activations: the batch takes data and fsdp, so embed stays whole.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == \
      P(("data", "fsdp"), None, None)
  mesh = mesh_lib.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert rules_lib.data_parallel_size(mesh, rules) == 4
  assert rules_lib.data_parallel_size(mesh, rules_lib.get_rules("replicated")) == 8


def test_indivisible_shapes_are_named():
  mesh = mesh_lib.build_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  sharding = jax.sharding.NamedSharding(mesh, P(None, "tensor"))
  with pytest.raises(ValueError, match="w has a dimension of size 6"):
    rules_lib.check_divisible({"w": jax.ShapeDtypeStruct((4, 6), "float32")}, {"w": sharding})


def test_unknown_rules_name():
  with pytest.raises(ValueError, match="unknown sharding rules"):
    rules_lib.get_rules("pipeline")
