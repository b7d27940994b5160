"""One labeller gives every parameter its role from its logical axis names; weight decay and
muP's learning rates follow it (attention biases are vectors, not matrices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import base, gpt2_small, llama_150m
from isoflop.models import mup, param_roles, transformer
from isoflop.models import families
from isoflop.train import optimizers

GPT2_LAYER = {
    "attention/query_kernel": "hidden", "attention/key_kernel": "hidden",
    "attention/value_kernel": "hidden", "attention/out_kernel": "hidden",
    "attention/query_bias": "vector", "attention/key_bias": "vector",
    "attention/value_bias": "vector", "attention/out_bias": "vector",
    "attention_norm/scale": "vector", "attention_norm/bias": "vector",
    "mlp/wi/kernel": "hidden", "mlp/wi/bias": "vector",
    "mlp/wo/kernel": "hidden", "mlp/wo/bias": "vector",
    "mlp_norm/scale": "vector", "mlp_norm/bias": "vector"}
LLAMA_LAYER = {
    "attention/query_kernel": "hidden", "attention/key_kernel": "hidden",
    "attention/value_kernel": "hidden", "attention/out_kernel": "hidden",
    "attention_norm/scale": "vector", "mlp/wi_gate/kernel": "hidden",
    "mlp/wi_up/kernel": "hidden", "mlp/wo/kernel": "hidden", "mlp_norm/scale": "vector"}
EXPECTED = {
    "gpt2_small": {"embed/embedding": ("embedding", False),
                   "position_embed/embedding": ("embedding", False),
                   "final_norm/scale": ("vector", False), "final_norm/bias": ("vector", False),
                   **{f"layers/{k}": (v, True) for k, v in GPT2_LAYER.items()}},
    "llama_150m": {"embed/embedding": ("embedding", False), "head/kernel": ("readout", False),
                   "final_norm/scale": ("vector", False),
                   **{f"layers/{k}": (v, True) for k, v in LLAMA_LAYER.items()}},
}


def _roles(cfg: transformer.TransformerConfig):
  boxed = jax.eval_shape(lambda: transformer.Decoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  return param_roles.label(nn.get_partition_spec(boxed))


def _flat(tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(
      x, param_roles.Role))
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in leaves}


@pytest.mark.parametrize("name, module", [("gpt2_small", gpt2_small),
                                          ("llama_150m", llama_150m)])
def test_every_parameter_of_the_real_trees_has_its_role(name, module):
  roles = _flat(_roles(families.model_config(module.get_config())))
  assert {k: (r.kind, r.stacked) for k, r in roles.items()} == EXPECTED[name]


def test_attention_biases_get_sp_rates_under_mup_and_no_weight_decay():
  cfg = transformer.TransformerConfig(vocab_size=64, d_model=128, n_layers=2, n_heads=4,
                                      max_len=16, use_bias=True, tie_embeddings=False,
                                      parametrization="mup", mup_base_width=32)  # m = 4
  roles = _roles(cfg)
  multipliers = mup.lr_multipliers(cfg, roles, "adamw")
  attention = multipliers["layers"]["attention"]
  assert attention["query_kernel"] == 0.25  # a hidden matrix: lr / m
  for bias in ("query_bias", "key_bias", "value_bias", "out_bias"):
    assert attention[bias] == 1.0, bias  # a vector: SP's rate
  # AdamW with decay and zero gradients: matrices shrink, biases stay where they are.
  config = base.get_config().optimizer
  config.update(name="adamw", lr=1.0, schedule="constant", warmup_steps=0,
                weight_decay=0.5, clip_norm=0.0)
  tx, _ = optimizers.make_optimizer(config, 10, roles, multipliers)
  params = nn.meta.unbox(transformer.Decoder(cfg).init(jax.random.key(0),
                                                       jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  attention = updates["layers"]["attention"]
  assert float(jnp.abs(attention["query_kernel"]).min()) > 0
  for bias in ("query_bias", "key_bias", "value_bias", "out_bias"):
    np.testing.assert_array_equal(attention[bias], 0.0)


def test_a_dimension_without_a_name_is_refused():
  with pytest.raises(ValueError, match="unnamed dimension"):
    param_roles.label({"w": jax.sharding.PartitionSpec("embed", None)})
