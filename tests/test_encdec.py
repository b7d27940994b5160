"""The encoder-decoder family and span corruption: counts, causality, padding, roles, the
objective's layout and weighting, bad configs, and logits equal to Hugging Face T5's."""

import dataclasses
import itertools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import t5_small, t5_tiny
from isoflop.models import families, param_roles
from isoflop.models.encdec import EncDecConfig, EncoderDecoder, counting, hf
from isoflop.models.objectives import span_corruption
from isoflop.train import task as task_lib

BASE = EncDecConfig(vocab_size=50, d_model=32, n_encoder_layers=2, n_decoder_layers=2,
                    n_heads=4, d_ff=48, relative_buckets=8, relative_max_distance=16)
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
INPUTS = jax.random.randint(jax.random.key(1), (2, 10), 0, 50)
DECODER_INPUTS = jax.random.randint(jax.random.key(2), (2, 7), 0, 50)


def _variables(cfg):
  """Boxed variables, initialized in one compiled call (op by op compiles far more)."""
  return jax.jit(EncoderDecoder(cfg).init)(jax.random.key(0), INPUTS, DECODER_INPUTS)


def _apply(cfg, variables, *args, **kwargs):
  return jax.jit(EncoderDecoder(cfg).apply)(variables, *args, **kwargs)


def _size(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


CONFIGS = {
    "t5": BASE,
    "untied_rope_geglu_padded": dataclasses.replace(
        BASE, positions="rope", activation="geglu", tie_embeddings=False, vocab_pad_multiple=16,
        n_decoder_layers=3, use_bias=True, norm="layernorm"),
    "no_positions": dataclasses.replace(BASE, positions="none", n_encoder_layers=1),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_equal_the_initialized_tree_and_roles_follow_the_axes(name):
  cfg = CONFIGS[name]
  boxed = jax.eval_shape(lambda: EncoderDecoder(cfg).init(
      jax.random.key(0), INPUTS, DECODER_INPUTS))["params"]
  params = nn.meta.unbox(boxed)
  counts = counting.param_counts(cfg, padded=True)
  assert counts["total"] == _size(params) == counts["active"]
  assert counts["embedding"] == _size(params["embed"])
  assert counts["encoder"] == _size(params["encoder"])
  assert counts["decoder"] == _size(params["decoder"])
  assert counts["head"] == _size(params.get("head", {}))
  assert counts["non_embedding"] == counts["encoder"] + counts["decoder"]
  kinds = param_roles.kinds(param_roles.label(nn.get_partition_spec(boxed)))
  assert kinds["embed"]["embedding"] == "embedding"
  for stack in ("encoder", "decoder"):
    assert ("relative_bias" in params[stack]) == (cfg.positions == "relative")
    if cfg.positions == "relative":
      assert kinds[stack]["relative_bias"] == "embedding"
    assert kinds[stack]["final_norm"] == {"scale": "vector", **(
        {"bias": "vector"} if cfg.norm == "layernorm" else {})}
  layer = kinds["decoder"]["layers"]
  assert layer["cross_attention"]["query_kernel"] == "hidden"
  assert layer["mlp"]["wo"]["kernel"] == "hidden" and layer["mlp_norm"]["scale"] == "vector"
  if not cfg.tie_embeddings:
    assert kinds["head"]["kernel"] == "readout"


def test_t5_small_has_t5_smalls_parameter_count():
  config = t5_small.get_config()
  cfg = families.model_config(config)
  shapes = jax.eval_shape(lambda: EncoderDecoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32)))
  params = nn.meta.unbox(shapes["params"])
  counts = counting.param_counts(cfg, padded=True)
  assert _size(params) == counts["total"] == 60_506_624
  assert (counts["embedding"], counts["encoder"], counts["decoder"]) == (
      16_449_536, 18_881_280, 25_175_808)
  assert task_lib.make_task(config).objective.target_len == 114


def test_decoder_is_causal_and_padded_inputs_are_invisible():
  variables = _variables(BASE)
  mask = jnp.ones(INPUTS.shape, jnp.int32).at[:, 7:].set(0)
  apply = lambda inputs, decoder_inputs: _apply(BASE, variables, inputs, decoder_inputs,
                                                input_mask_BL=mask)
  logits = apply(INPUTS, DECODER_INPUTS)
  later = DECODER_INPUTS.at[:, 4].set((DECODER_INPUTS[:, 4] + 1) % 50)
  changed = apply(INPUTS, later)
  np.testing.assert_array_equal(logits[:, :4], changed[:, :4])
  assert not np.allclose(logits[:, 4:], changed[:, 4:])
  np.testing.assert_array_equal(logits, apply(INPUTS.at[:, 7:].set((INPUTS[:, 7:] + 1) % 50),
                                              DECODER_INPUTS))
  assert not np.allclose(logits, apply(INPUTS.at[:, 3].set((INPUTS[:, 3] + 1) % 50),
                                       DECODER_INPUTS))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 7, 50)


def test_bf16_compute_keeps_fp32_params_and_remat_changes_nothing():
  cfg = dataclasses.replace(BASE, dtype="bfloat16", vocab_pad_multiple=16)
  variables = nn.meta.unbox(_variables(cfg))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits = _apply(cfg, variables, INPUTS, DECODER_INPUTS)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 7, 64)
  assert bool((logits[..., 50:] == jnp.finfo(jnp.float32).min).all())  # padded vocabulary
  full = dataclasses.replace(BASE, remat="full", scan_unroll=2)
  plain = nn.meta.unbox(_variables(BASE))
  np.testing.assert_allclose(_apply(full, plain, INPUTS, DECODER_INPUTS),
                             _apply(BASE, plain, INPUTS, DECODER_INPUTS), rtol=1e-5, atol=1e-6)


def test_chinchilla_count_matches_xla_on_the_forward_pass():
  cfg = dataclasses.replace(BASE, vocab_size=64, d_model=64, d_ff=256, n_encoder_layers=1,
                            n_decoder_layers=1)
  inputs, decoder_inputs = jnp.zeros((1, 48), jnp.int32), jnp.zeros((1, 16), jnp.int32)
  variables = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), inputs,
                             decoder_inputs)
  compiled = jax.jit(EncoderDecoder(cfg).apply).lower(variables, inputs, decoder_inputs).compile()
  cost = compiled.cost_analysis()
  measured = (cost[0] if isinstance(cost, list) else cost)["flops"]
  per_token = counting.flops_per_token(cfg, 48, target_len=16)
  one_hot = 2 * cfg.vocab_size * cfg.d_model  # XLA gathers rows; chinchilla counts a matmul
  analytic = (per_token["chinchilla"] / 3 - one_hot) * 64
  assert abs(measured / analytic - 1) < 0.1, (measured, analytic)
  assert counting.flops_per_token(cfg, 48) == counting.flops_per_token(cfg, 48, target_len=48)


def test_family_sizes_sweep_members():
  family = families.get("encdec")
  base = dataclasses.replace(BASE, n_decoder_layers=1, d_ff=64)
  shapes = list(itertools.islice(
      family.shape_candidates(base, aspect_ratio=16, head_size=16), 4))
  assert [s.d_model for s in shapes] == [16, 32, 48, 64]
  assert [(s.n_encoder_layers, s.n_decoder_layers) for s in shapes] == [(1, 1), (2, 1), (3, 2),
                                                                        (4, 2)]
  assert all(s.d_ff == 2 * s.d_model for s in shapes)
  config = t5_tiny.get_config()
  for key, value in family.shape_overrides(shapes[-1]).items():
    config.model[key.removeprefix("model.")] = value
  assert families.model_config(config).d_model == 64
  assert family.for_cost_analysis(dataclasses.replace(BASE, remat="full"), False, 8) == (
      dataclasses.replace(BASE, scan_unroll=2))


@pytest.mark.parametrize("changes, message", [
    ({"n_decoder_layers": 0}, "model.n_decoder_layers=0 must be positive"),
    ({"n_heads": 5}, "does not divide model.d_model=32"),
    ({"positions": "learned"}, "not supported by model.family='encdec'"),
    ({"relative_max_distance": 4}, "must exceed relative_buckets // 2 = 4"),
    ({"activation": "mish"}, "unknown activation"),
    ({"attention_scale": 0.0}, "attention_scale=0.0 must be positive"),
])
def test_bad_configs_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **changes)


# Span corruption.

SENTINELS = 16
IDS = {"<pad>": 200, "<eos>": 199, **{f"<extra_id_{i}>": 201 + i for i in range(SENTINELS)}}


def _examples(objective, seeds, offset=0):
  raw = objective.window_length(objective.seq_len)
  windows = (np.arange(len(seeds) * raw).reshape(len(seeds), raw) + offset) % 150
  rngs = [np.random.default_rng(seed) for seed in seeds]
  return windows, objective.make_examples(windows.astype(np.int32), rngs, IDS, 150)


def _restore(inputs, targets) -> list[int]:
  """The raw window back: every sentinel of the inputs replaced by its span of the targets."""
  sentinel_ids = {IDS[f"<extra_id_{i}>"]: i for i in range(SENTINELS)}
  spans, current = {}, None
  for token in targets:
    if token == IDS["<eos>"]:
      break
    if token in sentinel_ids:
      current = spans.setdefault(sentinel_ids[token], [])
    else:
      current.append(int(token))
  out = []
  for token in inputs:
    if token == IDS["<eos>"]:
      break
    out += spans[sentinel_ids[token]] if token in sentinel_ids else [int(token)]
  return out


@pytest.mark.parametrize("seq_len, target_len", [(3, None), (17, None), (64, None), (64, 20),
                                                 (200, None)])
def test_span_corruption_layout_restores_the_window_exactly(seq_len, target_len):
  objective = span_corruption.SpanCorruption(seq_len=seq_len, target_len=target_len,
                                             num_sentinels=SENTINELS)
  raw = objective.window_length(seq_len)
  needed = objective.targets_length(raw)
  windows, batch = _examples(objective, [0, 1, 2])
  assert batch["inputs"].shape == batch["input_mask"].shape == (3, seq_len)
  assert batch["targets"].shape == batch["decoder_inputs"].shape == (3, objective.target_len)
  assert objective.target_len == (needed if target_len is None else target_len)
  # Inputs fill seq_len exactly (inputs_length grows by 0 or 1 per raw token): no padding.
  assert (batch["input_mask"] == 1).all()
  np.testing.assert_array_equal(batch["target_weights"].sum(1), needed)
  assert (batch["targets"][:, needed:] == IDS["<pad>"]).all()
  assert batch["target_weights"].dtype == np.float32
  np.testing.assert_array_equal(batch["decoder_inputs"][:, 0], IDS["<pad>"])
  np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["targets"][:, :-1])
  for row in range(3):
    assert _restore(batch["inputs"][row], batch["targets"][row]) == windows[row].tolist()
    noise = objective.noise_mask(raw, np.random.default_rng(row))
    assert noise.sum() == objective.layout(raw)[0] and not noise[0] and noise[-1]


def test_span_corruption_follows_t5s_layout_and_is_deterministic():
  t5 = span_corruption.SpanCorruption(seq_len=512)
  assert (t5.window_length(512), t5.target_len, t5.layout(568)) == (568, 114, (85, 28))
  objective = span_corruption.SpanCorruption(seq_len=64, num_sentinels=SENTINELS)
  _, a = _examples(objective, [5, 6])
  _, b = _examples(objective, [5, 6])
  _, c = _examples(objective, [5, 7])
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert (a["inputs"][0] == c["inputs"][0]).all() and (a["inputs"][1] != c["inputs"][1]).any()


def test_span_corruption_loss_covers_only_weighted_targets():
  objective = span_corruption.SpanCorruption(seq_len=17, target_len=12, num_sentinels=SENTINELS)
  _, batch = _examples(objective, [0, 1])
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  logits = jax.random.normal(jax.random.key(0), batch["targets"].shape + (210,))
  terms = objective.terms(logits, batch)
  weights = np.asarray(batch["target_weights"])
  logp = jax.nn.log_softmax(logits)
  ce = -np.take_along_axis(np.asarray(logp), np.asarray(batch["targets"])[..., None], -1)[..., 0]
  np.testing.assert_allclose(terms.objective, (ce * weights).sum() / weights.sum(), rtol=1e-5)
  assert float(terms.weight) == weights.sum() == 2 * 5
  noisy = logits.at[:, 5:].set(100.0)  # padded targets: any logits, the same loss
  np.testing.assert_allclose(objective.terms(noisy, batch).objective, terms.objective, rtol=1e-6)
  right = jax.nn.one_hot(batch["targets"], 210) * 10.0
  metrics = objective.eval_metrics(right.at[:, 5:].set(0.0), batch)
  assert float(metrics["accuracy"][0]) == 1.0 and set(metrics) == {"loss", "accuracy"}
  assert objective.units(batch) == 2 * (17 + 12)


def _run_config(**span):
  c = t5_tiny.get_config()
  for key, value in span.items():
    if key == "seq_len":
      c.seq_len = value
    else:
      c.span_corruption[key] = value
  return c


@pytest.mark.parametrize("changes, message", [
    ({"noise_density": 0.0}, "noise_density=0.0 must be in \\(0, 1\\)"),
    ({"noise_density": 1.0}, "noise_density=1.0 must be in \\(0, 1\\)"),
    ({"mean_span_length": 0.5}, "mean_span_length=0.5 must be at least 1"),
    ({"seq_len": 2}, "seq_len=2 is too short for span corruption"),
    ({"target_len": 13}, "target_len=13 is shorter than the 14 target tokens"),
    ({"num_sentinels": 2}, "makes 3 noise spans per sequence, more than "
                           "span_corruption.num_sentinels=2"),
    ({"noise_density": 0.9, "mean_span_length": 1.0}, "leaves only"),
])
def test_bad_span_corruption_settings_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    span_corruption.from_run_config(_run_config(**changes))


def test_t5_tiny_runs_through_the_task_seam():
  task = task_lib.make_task(t5_tiny.get_config())
  objective = task.objective
  assert task.batch_keys == ("inputs", "input_mask", "decoder_inputs", "targets",
                             "target_weights")
  ids = {"<pad>": 238, "<eos>": 255, **{f"<extra_id_{i}>": 239 + i for i in range(16)}}
  raw = objective.window_length(64)
  windows = np.random.default_rng(0).integers(0, 238, (2, raw)).astype(np.int32)
  batch = objective.make_examples(windows, [np.random.default_rng(i) for i in range(2)], ids,
                                  238)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  variables = jax.jit(lambda b: nn.meta.unbox(task.init_variables(jax.random.key(0), b)))(batch)
  terms, _ = jax.jit(lambda p, b: task.losses(p, {}, b, jax.random.key(1), train=True))(
      variables["params"], batch)
  assert np.isfinite(float(terms.objective)) and float(terms.weight) == 2 * 14
  described = task.describe(batch)
  assert described["flops_per_token"] == counting.flops_per_token(task.model_config, 64, 14)


# Hugging Face parity.

@pytest.mark.parametrize("name", ["t5", "t5_v1_1"])
def test_hugging_face_configs_map_to_t5_and_t5_1_1(name):
  """The logits themselves are compared in test_hf_parity.py, on the same golden files."""
  with np.load(GOLDEN / f"{name}.npz") as z:
    cfg = hf.config_from_hf(json.loads(str(z["config_json"])))
  assert cfg.tie_embeddings == (name == "t5")
  assert cfg.activation == ("relu" if name == "t5" else "geglu")
  assert cfg.attention_scale == 1.0 and cfg.positions == "relative"


def _golden_weights(name="t5"):
  with np.load(GOLDEN / f"{name}.npz") as z:
    return (json.loads(str(z["config_json"])),
            {k.removeprefix("weight/"): z[k] for k in z.files if k.startswith("weight/")})


def _misshape(weights):
  name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
  weights[name] = weights[name][:-1]


def _drop(weights):
  del weights["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]


def _add(weights):  # umT5: a relative bias in every layer
  weights["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = (
      weights["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])


@pytest.mark.parametrize("change, message", [
    (_misshape, "has shape \\(31, 32\\), the config expects \\(32, 32\\)"),
    (_drop, "has no 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'"),
    (_add, "1 weights have no place in the encoder-decoder"),
], ids=["misshaped", "missing", "left-over"])
def test_a_wrong_t5_weight_is_refused_in_one_line(change, message):
  hf_config, weights = _golden_weights()
  change(weights)
  with pytest.raises(ValueError, match=message) as error:
    hf.params_from_hf(weights, hf.config_from_hf(hf_config))
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "umt5"}, "umT5's per-layer relative bias"),
    ({"feed_forward_proj": "gated-mish"}, "has no counterpart here"),
])
def test_a_t5_config_without_counterpart_is_refused(change, message):
  hf_config, _ = _golden_weights()
  with pytest.raises(ValueError, match=message):
    hf.config_from_hf({**hf_config, **change})
