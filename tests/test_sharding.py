"""Mesh construction and the logical-to-mesh rules table."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib


def test_minus_one_fills_the_remaining_devices():
  assert mesh_lib.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == \
      {"data": 2, "fsdp": 2, "expert": 1, "tensor": 2}
  mesh = mesh_lib.build_mesh({"data": 1, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 2}


def test_mesh_axes_are_the_ones_the_rules_table_names():
  for name in ("fsdp_tensor", "replicated"):
    assert rules_lib.mesh_axes(rules_lib.get_rules(name)) == ("data", "fsdp", "expert", "tensor")
  table = (("batch", ("data", "pipeline")), ("embed", None))
  assert rules_lib.mesh_axes(table) == ("data", "pipeline")
  mesh = mesh_lib.build_mesh({"data": 2, "pipeline": 4}, axes=rules_lib.mesh_axes(table))
  assert dict(mesh.shape) == {"data": 2, "pipeline": 4}
  with pytest.raises(ValueError, match="mesh axis 'tensor' \\(size 2\\) is not one that the "
                                       "sharding rules table 'mine' shards over"):
    mesh_lib.build_mesh({"data": 4, "tensor": 2}, axes=rules_lib.mesh_axes(table), table="mine")


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "available"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "does not divide"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, "positive"),
    ({"pipeline": 2}, "mesh axis 'pipeline' \\(size 2\\) is not one that"),
])
def test_bad_meshes_are_refused(sizes, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.build_mesh(sizes)


def test_device_counts_in_mesh_messages_agree_with_their_nouns():
  with pytest.raises(ValueError, match=r"= 2 devices, but 1 is available"):
    mesh_lib.resolve_mesh_shape({"data": 2, "fsdp": 1, "tensor": 1}, 1)
  with pytest.raises(ValueError, match=r"= 1 device, but 2 are available"):
    mesh_lib.resolve_mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 2)


def test_rules_shard_parameters_and_activations_differently():
  rules = rules_lib.get_rules("fsdp_tensor")
  assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("tensor", "fsdp")
  assert nn.logical_to_mesh_axes(("layers", "embed", "heads", "kv"), rules) == \
      P(None, "fsdp", "tensor", None)
  # Activations: the batch takes data, fsdp and expert, so embed stays whole.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == \
      P(("data", "fsdp", "expert"), None, None)
  # Inside expert layers (expert-first), the batch falls back to data and fsdp.
  assert nn.logical_to_mesh_axes(("expert", "batch", None, "embed"), rules) == \
      P("expert", ("data", "fsdp"), None, None)
  assert nn.logical_to_mesh_axes(("expert", "embed", "mlp"), rules) == P("expert", "fsdp", "tensor")
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


def test_a_logical_axis_without_a_rule_is_an_error():
  rules = rules_lib.get_rules("fsdp_tensor")
  with pytest.raises(ValueError, match="'stage' of parameter pp/kernel .*'fsdp_tensor'"):
    rules_lib.check_names({"pp": {"kernel": P("stage", "embed", "mlp")}}, rules,
                          "fsdp_tensor")
  from isoflop.models import logical
  with nn.logical_axis_rules(rules), pytest.raises(ValueError, match="'stage'"):
    logical.constrain(jax.numpy.zeros((2, 4)), ("batch", "stage"))


def test_a_table_missing_an_axis_the_model_uses_fails_the_build(tiny_config, monkeypatch):
  from isoflop.train import build
  without_mlp = tuple(r for r in rules_lib.RULE_SETS["fsdp_tensor"] if r[0] != "mlp")
  monkeypatch.setitem(rules_lib.RULE_SETS, "without_mlp", without_mlp)
  tiny_config.mesh.rules = "without_mlp"
  with pytest.raises(ValueError, match="logical axis 'mlp'"):
    build.prepare(tiny_config)


def test_vocab_padding_lets_tensor_parallelism_split_the_vocabulary(tiny_config, tmp_path):
  from isoflop.train import loop
  tiny_config.model.update(vocab_size=63, tie_embeddings=False)  # odd, like GPT-2's 50,257
  tiny_config.mesh.update(data=4, tensor=2)
  tiny_config.steps = 2
  with pytest.raises(ValueError, match="cannot split evenly"):
    loop.train(tiny_config, str(tmp_path / "unpadded"), progress=False)
  tiny_config.model.vocab_pad_multiple = 16
  result = loop.train(tiny_config, str(tmp_path / "padded"), progress=False)
  assert result.state.params["embed"]["embedding"].shape == (64, 32)
  assert result.record["param_counts_padded"]["total"] > result.record["param_counts"]["total"]
  assert np.isfinite(result.rows[-1]["loss"])
