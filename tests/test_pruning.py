"""Pruning during training: the stated sparsity through training, masks sharded like their
parameters, N:M groups, embeddings untouched, non-zero counts recorded, bad settings refused."""

import json

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import pytest

from isoflop.train import build, loop
from isoflop.train.compression import pruning

# method -> (prune overrides, {completed step: sparsity the schedule asks for})
METHODS = {
    "magnitude": ({"method": "magnitude", "sparsity": 0.5, "start_step": 3},
                  {2: 0.0, 4: 0.5, 8: 0.5}),
    "gradual": ({"method": "gradual", "sparsity": 0.75, "start_step": 2, "end_step": 6,
                 "every": 2}, {2: 0.0, 4: 0.75 * (1 - 0.5 ** 3), 6: 0.75, 8: 0.75}),
    "nm": ({"method": "nm", "n": 2, "m": 4, "start_step": 0}, {2: 0.5, 8: 0.5}),
    "global": ({"method": "magnitude", "sparsity": 0.6, "scope": "global", "start_step": 0},
               {2: 0.6, 8: 0.6}),
}


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_pruned_run_holds_the_stated_sparsity(tiny_config, tmp_path, method):
  overrides, expected = METHODS[method]
  c = tiny_config
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  for key, value in overrides.items():
    c.prune[key] = value
  prepared = build.prepare(c)
  result = loop.run(prepared, str(tmp_path / "run"), progress=False)
  logged = {row["step"]: row["sparsity"] for row in result.rows if "sparsity" in row}
  for step, sparsity in expected.items():
    assert logged[step] == pytest.approx(sparsity, abs=1.5e-3), (step, logged)

  state = result.state
  params, masks = _flat(state.params), _flat(state.masks)
  pruner = prepared.task.pruner
  assert set(masks) == {"/".join(map(str, p)) for p in pruner.axes}  # hidden matrices only
  zeros = sum(int(np.sum(params[name] == 0)) for name in masks)
  assert zeros == pruner.planned_pruned()  # exactly the planned count, nothing more
  for name, mask in masks.items():
    np.testing.assert_array_equal(params[name] == 0, ~mask)
  for name, value in params.items():
    if name not in masks:  # embeddings, norms, biases: dense
      assert np.count_nonzero(value) > 0.9 * value.size, name
  if method == "nm":  # 2 of every 4 along the input axis, in every layer of every matrix
    kernel = params["layers/mlp/wi/kernel"]  # (layers, embed, mlp)
    groups = kernel.reshape(kernel.shape[0], -1, 4, kernel.shape[-1])
    assert np.all(np.sum(groups != 0, axis=2) == 2)
  if method in ("magnitude", "gradual"):  # per layer: each layer of a stacked matrix alone
    for name in masks:
      per_layer = np.mean(params[name].reshape(params[name].shape[0], -1) == 0, axis=1)
      np.testing.assert_allclose(per_layer, pruner.settings.sparsity, atol=1e-2)
  for name, mask in flax.traverse_util.flatten_dict(state.masks).items():  # sharded alike
    param = flax.traverse_util.flatten_dict(state.params)[name]
    assert mask.sharding.spec == param.sharding.spec

  record = json.loads((tmp_path / "run" / "config.json").read_text())
  sparsity = record["sparsity"]
  assert sparsity["pruned_params"] == pruner.planned_pruned()
  for convention, n in record["n_params"].items():
    assert sparsity["n_params_nonzero"][convention] == n - sparsity["pruned_params"]


def _block(**values):
  from isoflop.experiments.configs import base
  block = base.get_config().prune
  block.update(values)
  return block


@pytest.mark.parametrize("values, expected", [
    ({"method": "magnitude", "sparsity": 1.0}, "prune.sparsity=1.0 must be in [0, 1)"),
    ({"method": "magnitude", "sparsity": -0.1}, "must be in [0, 1)"),
    ({"method": "nm", "n": 4, "m": 4}, "needs 0 < N < M"),
    ({"method": "gradual", "start_step": 5, "end_step": 5}, "prune.end_step=5 must be after"),
    ({"method": "prune_all"}, "prune.method='prune_all' is unknown"),
    ({"method": "magnitude", "roles": ("embedding",)}, "prune.roles"),
])
def test_bad_prune_settings_are_one_line(values, expected):
  with pytest.raises(ValueError, match=None) as error:
    pruning.settings_from_config(_block(**values))
  assert expected in str(error.value) and "\n" not in str(error.value)


def test_m_not_dividing_the_input_dimension_is_refused(tiny_config):
  tiny_config.prune.method, tiny_config.prune.n, tiny_config.prune.m = "nm", 1, 3
  with pytest.raises(ValueError, match="prune.m=3 does not divide"):
    build.prepare(tiny_config)


def test_off_by_default_and_block_documented():
  from isoflop.experiments.configs import base
  assert pruning.settings_from_config(base.get_config().prune) is None
  assert isinstance(base.get_config().prune, ml_collections.ConfigDict)
