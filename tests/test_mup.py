"""muP: init scales, attention scale, output multiplier and learning-rate multipliers against
values computed by hand; SP untouched."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import base
from isoflop.models import mup, param_roles, transformer
from isoflop.train import optimizers

SP = transformer.TransformerConfig(vocab_size=64, d_model=256, n_layers=2, n_heads=4,
                                   tie_embeddings=False, max_len=16)
MUP = dataclasses.replace(SP, parametrization="mup", mup_base_width=64)  # m = 4
TOKENS = jnp.zeros((2, 8), jnp.int32)


def _params(cfg):
  return nn.meta.unbox(transformer.Decoder(cfg).init(jax.random.key(0), TOKENS)["params"])


def _roles(cfg):
  boxed = jax.eval_shape(lambda: transformer.Decoder(cfg).init(jax.random.key(0), TOKENS))
  return param_roles.label(nn.get_partition_spec(boxed["params"]))


def test_init_scales_follow_the_width_multiplier():
  sp, mu = _params(SP), _params(MUP)
  # Hidden matrices: std 0.02 / sqrt(m) = 0.01 (m = 4); embeddings and readout as SP.
  assert np.std(mu["layers"]["attention"]["query_kernel"]) == pytest.approx(0.01, rel=0.03)
  assert np.std(mu["layers"]["mlp"]["wi"]["kernel"]) == pytest.approx(0.01, rel=0.03)
  assert np.std(sp["layers"]["attention"]["query_kernel"]) == pytest.approx(0.02, rel=0.03)
  assert np.std(mu["embed"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  assert np.std(mu["head"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  zero = _params(dataclasses.replace(MUP, mup_zero_readout=True))
  assert np.all(zero["head"]["kernel"] == 0)  # the zero readout (Yang et al. 2022)
  # Attention: sqrt(base d_head) / d_head. Heads of a fixed size: SP's 1/sqrt(64) = 1/8;
  # heads grown 4x from a base of 16: 4 / 64 = 1/16, i.e. 1/d_head relative to the base.
  assert mup.attention_scale(MUP) == 1 / 8 and mup.attention_scale(SP) == 64 ** -0.5
  assert mup.attention_scale(dataclasses.replace(MUP, mup_base_head_dim=16)) == 1 / 16
  assert mup.output_multiplier(MUP) == 0.25 and mup.width_multiplier(SP) == 1.0


def test_output_multiplier_scales_the_logits():
  random_readout = dataclasses.replace(MUP, mup_zero_readout=False)  # else the logits are 0
  params = _params(random_readout)
  mu = transformer.Decoder(random_readout).apply({"params": params}, TOKENS)
  plain = transformer.Decoder(dataclasses.replace(random_readout, mup_base_width=256)).apply(
      {"params": params}, TOKENS)  # m = 1: no multiplier, same attention scale
  assert np.abs(plain).mean() > 1e-3
  np.testing.assert_allclose(mu, plain * 0.25, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, expected", [
    ("adamw", {"embedding": 1.0, "vector": 1.0, "hidden": 0.25, "readout": 1.0}),
    ("sgd", {"embedding": 4.0, "vector": 4.0, "hidden": 1.0, "readout": 0.25}),
])
def test_learning_rate_multipliers(name, expected):
  params = _params(MUP)
  multipliers = mup.lr_multipliers(MUP, _roles(MUP), name)
  assert multipliers["embed"]["embedding"] == expected["embedding"]
  assert multipliers["layers"]["attention"]["query_kernel"] == expected["hidden"]
  assert multipliers["layers"]["mlp"]["wo"]["kernel"] == expected["hidden"]
  assert multipliers["layers"]["mlp_norm"]["scale"] == expected["vector"]
  assert multipliers["head"]["kernel"] == expected["readout"]
  # The optimizer applies them: Adam's first step moves every weight by lr x multiplier.
  opt = base.get_config().optimizer
  opt.update(name=name, lr=0.1, schedule="constant", warmup_steps=0, weight_decay=0.0,
             clip_norm=0.0)
  tx, _ = optimizers.make_optimizer(opt, 10, _roles(MUP), multipliers)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = 0.1  # Adam: lr x sign(g); SGD: lr x g, with g = 1
  np.testing.assert_allclose(updates["layers"]["attention"]["query_kernel"],
                             -step * expected["hidden"], rtol=1e-4)
  np.testing.assert_allclose(updates["head"]["kernel"], -step * expected["readout"], rtol=1e-4)


def test_sp_takes_no_mup_path():
  from isoflop.models import decoder_family
  # The plain optimizer.
  assert decoder_family.lr_multipliers(SP, _roles(SP), "adamw") is None
  same = dataclasses.replace(SP, mup_base_width=32)  # ignored under SP
  for a, b in zip(jax.tree.leaves(_params(SP)), jax.tree.leaves(_params(same))):
    np.testing.assert_array_equal(a, b)


def test_mup_needs_an_untied_readout():
  with pytest.raises(ValueError, match="untied readout"):
    dataclasses.replace(MUP, tie_embeddings=True)
