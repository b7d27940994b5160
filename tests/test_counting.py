"""Parameter counts equal the initialized tree; analytic FLOPs agree with XLA's count.

Tolerance: the analytic conventions count matmuls only. What XLA executes beyond them is
elementwise work (norms, activations, softmax, the loss, the optimizer update), O(D + T H)
per token per layer against O(D^2 + T H Q) for the matmuls; with the shape below that is
under 3% of the step. So each convention, once corrected for the matmuls it leaves out by
design, must be within 3% of the measured count, and no closer correction is claimed.
"""

import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.models import counting, transformer
from isoflop.models import families
from isoflop.train import build

BASE = transformer.TransformerConfig(vocab_size=100, d_model=32, n_layers=3, n_heads=4,
                                     d_ff=48, max_len=20)


@pytest.mark.parametrize("positions, norm, activation, use_bias, tie, kv_heads",
                         list(itertools.product(["learned", "rope"], ["layernorm", "rmsnorm"],
                                                ["gelu", "swiglu"], [True, False],
                                                [True, False], [None, 2])))
def test_counts_equal_the_initialized_tree(positions, norm, activation, use_bias, tie, kv_heads):
  cfg = dataclasses.replace(BASE, positions=positions, norm=norm, activation=activation,
                            use_bias=use_bias, tie_embeddings=tie, n_kv_heads=kv_heads)
  params = jax.eval_shape(lambda: nn.meta.unbox(transformer.Decoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in params.items()}
  counts = counting.param_counts(cfg)
  assert counts["total"] == sum(sizes.values())
  assert counts["embedding"] == sizes["embed"] + sizes.get("position_embed", 0)
  assert counts["head"] == sizes.get("head", 0)
  assert counts["non_embedding"] == sizes["layers"] + sizes["final_norm"]
  assert counts["per_layer"] * cfg.n_layers == sizes["layers"]


def test_gpt2_small_has_124m_parameters():
  from isoflop.experiments.configs import gpt2_small
  config = gpt2_small.get_config()
  cfg = families.model_config(config)
  assert counting.param_counts(cfg)["total"] == 124_439_808  # GPT-2 small, tied, V = 50257
  config.seq_len = 256  # shorter sequences keep GPT-2's 1,024 positions
  assert counting.param_counts(families.model_config(config))["total"] == 124_439_808
  config.seq_len = 2048  # longer ones would change its shape: refused, not grown silently
  with pytest.raises(ValueError, match="no longer the config's shape"):
    families.model_config(config)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_analytic_flops_agree_with_xla_measured(family, tiny_config):
  c = tiny_config
  c.batch_size, c.seq_len, c.steps = 8, 128, 4
  c.model.update(vocab_size=512, d_model=256, n_layers=2, n_heads=4)
  if family == "llama":
    c.model.update(positions="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
                   tie_embeddings=False, n_kv_heads=2, d_ff=704)
  record = build.prepare(c, devices=jax.devices()[:1]).record
  flops = record["flops_per_token"]
  measured = flops["measured"]
  cfg = families.model_config(c)
  d, v, t = cfg.d_model, cfg.vocab_size, c.seq_len
  attention_scores = 12 * cfg.n_layers * t * cfg.n_heads * cfg.head_dim
  # PaLM counts every matmul.
  assert flops["palm"] == pytest.approx(measured, rel=0.03)
  # Chinchilla also counts the embedding lookup as a one-hot matmul, which is never run.
  assert flops["chinchilla"] - 6 * v * d == pytest.approx(measured, rel=0.03)
  # Kaplan leaves out the output logits and counts half the attention-score FLOPs.
  assert flops["kaplan"] + 6 * d * v + attention_scores / 2 == pytest.approx(measured, rel=0.03)
  assert record["n_params"]["kaplan"] < record["n_params"]["palm"] <= \
      record["n_params"]["chinchilla"]


@pytest.mark.parametrize("family", ["moe", "lstm"])
def test_routed_and_recurrent_flops_agree_with_xla_measured(family, tiny_config):
  """The MoE's active-path count plus its routing overhead (empty capacity slots, dispatch
  and combine), and the LSTM's count over every timestep, within the same 3% as the dense
  decoder (PaLM's count: every matmul)."""
  c = tiny_config
  c.batch_size, c.seq_len, c.steps = 8, 128, 4
  if family == "moe":
    c.model.update(vocab_size=512, d_model=256, n_layers=2, n_heads=4, positions="rope",
                   norm="rmsnorm", activation="swiglu", use_bias=False, tie_embeddings=False,
                   num_experts=4, experts_per_token=2, expert_d_ff=352)
  else:
    from isoflop.experiments.configs import base
    from isoflop.models.lstm import LstmConfig
    c.model = base.family_model_block("lstm", LstmConfig, vocab_size=512, d_model=256,
                                      d_hidden=384, d_proj=256)
  record = build.prepare(c, devices=jax.devices()[:1]).record
  flops = record["flops_per_token"]
  cfg = families.model_config(c)
  overhead = counting.routing_overhead_per_token(cfg, c.seq_len) if family == "moe" else 0.0
  assert flops["palm"] + overhead == pytest.approx(flops["measured"], rel=0.03)
  counts = record["param_counts"]
  assert (counts["active"] < counts["total"]) == (family == "moe")
  if family == "moe":  # the active path, not every expert
    assert flops["palm"] < 6 * (counts["non_embedding"] + cfg.d_model * cfg.vocab_size)


def test_measured_flops_count_every_microbatch_and_name_remat(tiny_config):
  """XLA's cost analysis counts a loop body once: the microbatch loop must not divide the
  count. ``measured`` includes remat's recomputation (hardware FLOPs), ``measured_model``
  does not (model FLOPs)."""
  c = tiny_config
  c.seq_len, c.mesh.data = 32, 1
  c.model.update(d_model=64, n_layers=2)

  def flops(**changes):
    run = c.copy_and_resolve_references()
    run.update({k: v for k, v in changes.items() if k != "remat"})
    run.model.remat = changes.get("remat", "none")
    return build.prepare(run, devices=jax.devices()[:1]).record["flops_per_token"]

  whole, accumulated = flops(), flops(microbatches=4)
  # The same matmuls on the same tokens; accumulation adds a few elementwise ops.
  assert accumulated["measured"] == pytest.approx(whole["measured"], rel=0.02)
  assert whole["measured_model"] == whole["measured"]  # no remat: the two agree
  remat = flops(remat="full")
  assert remat["measured_model"] == pytest.approx(whole["measured"], rel=1e-9)
  # Recomputing every block's forward adds about a third of the blocks' FLOPs.
  assert remat["measured"] > 1.15 * remat["measured_model"]


def test_vocab_padding_counts_both_ways():
  cfg = dataclasses.replace(BASE, vocab_size=100, vocab_pad_multiple=64, tie_embeddings=False)
  unpadded = dataclasses.replace(cfg, vocab_pad_multiple=1)
  assert cfg.padded_vocab == 128
  params = jax.eval_shape(lambda: nn.meta.unbox(transformer.Decoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  assert params["embed"]["embedding"].shape == (128, 32)
  assert params["head"]["kernel"].shape == (32, 128)
  leaves = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert counting.param_counts(cfg, padded=True)["total"] == leaves
  # N and the analytic FLOPs are the model's: the padding is allocation only.
  assert counting.param_counts(cfg) == counting.param_counts(unpadded)
  assert counting.n_by_convention(cfg) == counting.n_by_convention(unpadded)
  assert counting.flops_per_token(cfg, 16) == counting.flops_per_token(unpadded, 16)


def test_every_convention_reaches_the_sweep_table_and_the_analysis():
  """One list (models/conventions.py): the runs.csv columns and analyze's choices follow it."""
  from isoflop.experiments import sweep
  from isoflop.experiments.analysis import analyze
  from isoflop.models import conventions
  for name in conventions.FLOP_CONVENTIONS:
    assert f"C_{name}" in sweep.RUNS_COLUMNS, name
  for name in conventions.N_CONVENTIONS:
    assert f"N_{name}" in sweep.RUNS_COLUMNS, name
  _, flag_values = analyze._flags()
  assert tuple(flag_values["flop_convention"].parser.enum_values) == conventions.FLOP_CONVENTIONS
  assert tuple(flag_values["n_convention"].parser.enum_values) == conventions.N_CONVENTIONS
