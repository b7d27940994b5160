"""The decoder: both shape families, every activation, causality, remat and scan."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isoflop.models import mlp, transformer

GPT2 = transformer.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                     max_len=16)
LLAMA = dataclasses.replace(GPT2, positions="rope", norm="rmsnorm", activation="swiglu",
                            use_bias=False, tie_embeddings=False, n_kv_heads=2)
TOKENS = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)


def _init(cfg):
  model = transformer.Decoder(cfg)
  return model, nn.meta.unbox(model.init(jax.random.key(0), TOKENS)["params"])


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_future_tokens_do_not_change_past_logits(cfg):
  model, params = _init(cfg)
  changed = TOKENS.at[:, 8:].set((TOKENS[:, 8:] + 1) % 64)
  a = model.apply({"params": params}, TOKENS)
  b = model.apply({"params": params}, changed)
  np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
  assert not np.allclose(a[:, 8:], b[:, 8:])


def test_shape_families_have_the_expected_parameters():
  _, gpt2 = _init(GPT2)
  _, llama = _init(LLAMA)
  assert "position_embed" in gpt2 and "head" not in gpt2
  assert "bias" in gpt2["final_norm"]
  assert "position_embed" not in llama and "head" in llama
  assert set(llama["final_norm"]) == {"scale"}
  assert llama["layers"]["attention"]["key_kernel"].shape == (2, 32, 2, 8)  # 2 kv heads
  assert set(llama["layers"]["mlp"]) == {"wi_gate", "wi_up", "wo"}


@pytest.mark.parametrize("activation", sorted(mlp.ACTIVATIONS) + sorted(mlp.GATED_ACTIVATIONS))
def test_every_activation_runs(activation):
  cfg = dataclasses.replace(GPT2, activation=activation, n_layers=1)
  model, params = _init(cfg)
  assert bool(jnp.isfinite(model.apply({"params": params}, TOKENS)).all())


def test_dropout_only_in_training():
  cfg = dataclasses.replace(GPT2, dropout=0.5)
  model, params = _init(cfg)
  eval_a = model.apply({"params": params}, TOKENS)
  eval_b = model.apply({"params": params}, TOKENS)
  train = model.apply({"params": params}, TOKENS, train=True,
                      rngs={"dropout": jax.random.key(3)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_math(policy):
  model, params = _init(LLAMA)
  remat_model = transformer.Decoder(dataclasses.replace(LLAMA, remat=policy))

  def loss(m):
    return jax.grad(lambda p: m.apply({"params": p}, TOKENS).mean())(params)

  for a, b in zip(jax.tree.leaves(loss(model)), jax.tree.leaves(loss(remat_model))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scan_keeps_the_program_size_independent_of_depth():
  def hlo_size(n_layers):
    cfg = dataclasses.replace(GPT2, n_layers=n_layers)
    model = transformer.Decoder(cfg)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), TOKENS)["params"]))
    step = jax.jit(jax.grad(lambda p: model.apply({"params": p}, TOKENS).mean()))
    return len(step.lower(shapes).as_text())

  shallow, deep = hlo_size(2), hlo_size(16)
  assert abs(deep - shallow) < 0.02 * shallow, (shallow, deep)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = dataclasses.replace(LLAMA, dtype="bfloat16")
  model, params = _init(cfg)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply({"params": params}, TOKENS)
  assert logits.dtype == jnp.float32
  reference = transformer.Decoder(LLAMA).apply({"params": params}, TOKENS)
  np.testing.assert_allclose(logits, reference, atol=0.05)


@pytest.mark.parametrize("change, message", [
    (dict(n_heads=7), "does not divide model.d_model"),
    (dict(n_kv_heads=3), "does not divide model.n_heads"),
    (dict(activation="swish2"), "unknown activation"),
    (dict(norm="batchnorm"), "model.norm"),
    (dict(attention="flash"), "model.attention"),
    (dict(d_model=0), "must be positive"),
])
def test_bad_shapes_are_refused_with_a_clear_message(change, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(GPT2, **change)


def test_padded_vocabulary_never_predicts_a_padding_token():
  cfg = dataclasses.replace(GPT2, vocab_pad_multiple=48)  # 64 -> 96
  model, params = _init(cfg)
  logits = model.apply({"params": params}, TOKENS)
  assert logits.shape[-1] == 96 and params["embed"]["embedding"].shape == (96, 32)
  np.testing.assert_array_equal(jax.nn.softmax(logits)[..., 64:], 0.0)
  targets = jnp.roll(TOKENS, -1, axis=1)
  padded = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  real = optax.softmax_cross_entropy_with_integer_labels(logits[..., :64], targets)
  np.testing.assert_allclose(padded, real, rtol=1e-6)
  grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, TOKENS), targets).mean())(params)
  assert bool(jnp.isfinite(grads["embed"]["embedding"]).all())
  np.testing.assert_array_equal(grads["embed"]["embedding"][64:], 0.0)  # never used
