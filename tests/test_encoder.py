"""The BERT-style encoder and the masked-LM objective: counts, bidirectionality, padding, roles,
BERT's masking recipe, exact weighting, determinism and bad configs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import base, bert_base, bert_tiny
from isoflop.models import families, param_roles
from isoflop.models.encoder import Encoder, EncoderConfig, counting
from isoflop.models.objectives import masked_lm
from isoflop.train.data import make_source

BASE = EncoderConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_len=12)


def _init(cfg, length=8):
  tokens = jnp.zeros((2, length), jnp.int32)
  return Encoder(cfg).init(jax.random.key(0), tokens)


@pytest.mark.parametrize("changes", [
    {"type_vocab_size": 2},
    {"norm_position": "pre", "norm": "rmsnorm", "use_bias": False, "activation": "swiglu",
     "positions": "rope", "tie_embeddings": False, "vocab_pad_multiple": 8, "n_kv_heads": 1},
    {"mlm_transform": False, "readout_bias": False, "positions": "none"},
], ids=["bert", "llama_like_untied_padded", "bare"])
def test_counts_equal_the_initialized_tree_and_roles_follow_the_axes(changes):
  cfg = dataclasses.replace(BASE, **changes)
  boxed = _init(cfg)["params"]
  params = nn.meta.unbox(boxed)
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  counts = counting.param_counts(cfg, padded=True)
  assert counts["total"] == size(params)
  embedding = sum(size(params[k]) for k in ("embed", "position_embed", "type_embed")
                  if k in params)
  head = sum(size(params[k]) for k in ("head_transform", "head_norm", "readout_bias", "head")
             if k in params)
  assert counts["embedding"] == embedding and counts["head"] == head
  kinds = param_roles.kinds(param_roles.label(nn.get_partition_spec(boxed)))
  assert kinds["embed"]["embedding"] == "embedding"
  assert kinds["layers"]["attention"]["query_kernel"] == "hidden"
  assert kinds["layers"]["attention_norm"]["scale"] == "vector"
  if cfg.readout_bias:
    assert kinds["readout_bias"] == "vector"  # a (vocab,) bias is not a lookup table
  if cfg.type_vocab_size:
    assert kinds["type_embed"]["embedding"] == "embedding"


def test_bert_base_has_hugging_faces_count():
  cfg = families.model_config(bert_base.get_config())
  counts = counting.param_counts(cfg)
  assert counts["total"] == 109_514_298  # BertForMaskedLM(BertConfig()).num_parameters()
  assert (counts["embedding"], counts["non_embedding"], counts["head"]) == (
      23_835_648, 85_056_000, 622_650)
  shapes = jax.eval_shape(lambda: Encoder(cfg).init(jax.random.key(0),
                                                    jnp.zeros((1, 8), jnp.int32)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes))) \
      == counts["total"]


def test_every_position_sees_both_sides_and_padding_is_invisible():
  cfg = dataclasses.replace(BASE, type_vocab_size=2)
  model, variables = Encoder(cfg), _init(cfg, 10)
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
  logits = model.apply(variables, tokens)
  later = model.apply(variables, tokens.at[:, 7].set((tokens[:, 7] + 1) % cfg.vocab_size))
  assert not np.allclose(logits[:, :7], later[:, :7])  # bidirectional: the past sees the future
  mask = jnp.ones((2, 10), jnp.int32).at[:, 8:].set(0)
  padded = model.apply(variables, tokens, key_mask_BL=mask)
  other_pad = model.apply(variables, tokens.at[:, 8:].set(3), key_mask_BL=mask)
  np.testing.assert_allclose(padded[:, :8], other_pad[:, :8], rtol=1e-6, atol=1e-6)


def _make(objective, windows, seed=0, vocab=40):
  rngs = [np.random.default_rng([seed, 0, i]) for i in range(len(windows))]
  return objective.make_examples(windows, rngs, {"<pad>": vocab, "<mask>": vocab + 1}, vocab)


def test_bert_masking_recipe_rates_and_determinism():
  objective = masked_lm.MaskedLm()
  windows = np.random.default_rng(0).integers(0, 40, (400, 100)).astype(np.int32)
  batch = _make(objective, windows)
  selected = batch["target_weights"] == 1
  np.testing.assert_array_equal(batch["targets"], windows)
  assert (batch["inputs"][~selected] == windows[~selected]).all()  # unselected: untouched
  assert selected.mean() == pytest.approx(0.15, abs=0.005)
  masked = batch["inputs"][selected] == 41
  changed = (batch["inputs"][selected] != windows[selected]) & ~masked
  assert masked.mean() == pytest.approx(0.8, abs=0.015)
  # 10% random (of which 1/40 hit the original token), 10% unchanged
  assert changed.mean() == pytest.approx(0.1 * 39 / 40, abs=0.01)
  assert (batch["inputs"] < 42).all() and (batch["inputs"][selected & ~(batch["inputs"] == 41)]
                                           < 40).all()
  again = _make(objective, windows)
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(_make(objective, windows, seed=1)["inputs"], batch["inputs"])
  custom = _make(masked_lm.MaskedLm(mask_rate=0.5, replace_rates=(1.0, 0.0, 0.0)), windows)
  chosen = custom["target_weights"] == 1
  assert chosen.mean() == pytest.approx(0.5, abs=0.01) and (custom["inputs"][chosen] == 41).all()


def test_loss_averages_over_selected_tokens_only():
  objective = masked_lm.MaskedLm()
  logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
  targets = jnp.array([[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]])
  weights = jnp.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0]], jnp.float32)
  terms = objective.terms(logits, {"targets": targets, "target_weights": weights})
  ce = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(5)[None], targets]
  assert float(terms.weight) == 3.0
  assert float(terms.objective) == pytest.approx(float((ce * weights).sum() / 3), rel=1e-6)


def test_examples_follow_the_seed_and_index_and_specials_get_room(tmp_path):
  c = bert_tiny.get_config()
  c.seq_len, c.batch_size = 16, 4
  source = make_source(c)
  assert source.vocab_size == 256 and source.special_ids == {"<pad>": 253, "<mask>": 254,
                                                             "<eos>": 255}
  first, shifted = source.batch(np.arange(4)), source.batch(np.arange(2, 6))
  np.testing.assert_array_equal(first["inputs"][2:], shifted["inputs"][:2])
  assert first["inputs"].max() <= 254 and (first["inputs"] == 254).any()
  c.data.source = "shakespeare"  # text: the specials follow the tokenizer's 256 bytes
  text = make_source(c)
  assert text.vocab_size == 258 and text.tokenizer.decode([72, 105, 257]) == "Hi<mask>"
  c.model.vocab_size = 3
  c.data.source = "synthetic:markov"
  with pytest.raises(ValueError, match="leaves no room for the 3 special tokens"):
    make_source(c)


@pytest.mark.parametrize("block, message", [
    ({"mask_rate": 0.0}, r"mask_rate=0.0 must be in \(0, 1\)"),
    ({"mask_rate": 1.0}, r"mask_rate=1.0 must be in \(0, 1\)"),
    ({"replace_rates": (0.8, 0.1)}, "must be three non-negative shares"),
    ({"replace_rates": (0.8, 0.3, -0.1)}, "must be three non-negative shares"),
])
def test_bad_masking_rates_are_refused(block, message):
  c = bert_tiny.get_config()
  c.masked_lm.update(block)
  with pytest.raises(ValueError, match=message):
    masked_lm.from_run_config(c)


def test_a_family_block_keeps_derived_defaults_settable():
  block = base.family_model_block("encoder", EncoderConfig, max_len=None)
  block.max_len = 64  # a typed placeholder, as the command line sets it
  assert block.max_len == 64
