"""The LSTM language model: counts, causality, document resets, roles and bad configs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.models import param_roles
from isoflop.models.lstm import LstmConfig, LstmLm, counting

BASE = LstmConfig(vocab_size=50, d_model=16, n_layers=2)


def _init(cfg, length=6):
  return nn.meta.unbox(LstmLm(cfg).init(jax.random.key(0), jnp.zeros((2, length), jnp.int32)))


@pytest.mark.parametrize("changes", [
    {},
    {"d_hidden": 24, "d_proj": 16, "n_layers": 3},
    {"d_hidden": 20, "tie_embeddings": False, "vocab_pad_multiple": 8, "n_layers": 1},
], ids=["plain", "projected", "untied_padded"])
def test_counts_equal_the_initialized_tree(changes):
  cfg = dataclasses.replace(BASE, **changes)
  params = _init(cfg)["params"]
  sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in params.items()}
  counts = counting.param_counts(cfg, padded=True)
  assert counts["total"] == sum(sizes.values())
  assert counts["embedding"] == sizes["embed"] and counts["head"] == sizes.get("head", 0)
  assert counts["first_layer"] == sizes["layer_0"]
  assert counts["active"] == counts["total"]
  # Every parameter has a role: kernels are matrices, biases vectors, the table an embedding.
  roles = param_roles.label(nn.get_partition_spec(
      LstmLm(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  kinds = param_roles.kinds(roles)
  assert kinds["layer_0"] == {"kernel": "hidden", "recurrent_kernel": "hidden",
                              "bias": "vector", **({"projection": "hidden"}
                                                   if cfg.d_proj else {})}
  assert kinds["embed"]["embedding"] == "embedding"


def test_outputs_depend_only_on_the_past_and_documents_do_not_leak():
  cfg = dataclasses.replace(BASE, d_proj=16, d_hidden=24)
  model = LstmLm(cfg)
  variables = _init(cfg, 10)
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
  logits = model.apply(variables, tokens)
  changed = model.apply(variables, tokens.at[:, 6].set((tokens[:, 6] + 1) % cfg.vocab_size))
  np.testing.assert_array_equal(logits[:, :6], changed[:, :6])  # causal
  assert not np.allclose(logits[:, 6:], changed[:, 6:])
  # Two packed documents: the second starts from a zero state, as if it stood alone.
  segments = jnp.array([[0] * 4 + [1] * 6] * 2)
  packed = model.apply(variables, tokens, segment_ids_BL=segments)
  alone = model.apply(variables, tokens[:, 4:])
  np.testing.assert_allclose(packed[:, 4:], alone, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(packed[:, :4], logits[:, :4], rtol=1e-6)


def test_forget_gate_bias_starts_at_forget_bias():
  bias = np.asarray(_init(BASE)["params"]["layer_0"]["bias"])
  assert (bias[:, 1] == BASE.forget_bias).all() and (bias[:, [0, 2, 3]] == 0).all()


@pytest.mark.parametrize("changes, message", [
    ({"d_proj": 8}, "needs the last layer's output width \\(8\\) to equal model.d_model=16"),
    ({"n_layers": 0}, "model.n_layers=0 must be positive"),
    ({"parametrization": "mup"}, "not supported by model.family='lstm'"),
])
def test_bad_configs_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **changes)
