"""Qwix quantization: PTQ computes with the integer weights, QAT's forward pass really
fake-quantizes with straight-through gradients, weight bytes count the bit width, bad settings
are refused. Decoder and LSTM (its recurrent projection included)."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.models import param_roles
from isoflop.train import task as task_lib
from isoflop.train.compression import quantization

FAMILIES = ("tiny", "lstm_tiny")
SETTINGS = {  # id -> QuantSettings arguments
    "int8_per_channel": dict(bits=8),
    "int4_sub_channel": dict(bits=4, tile_size=8),
    "w8a8": dict(bits=8, mode="w8a8"),
}


def _setup(name):
  """A tiny model of the family, boxed parameters, a token batch."""
  import importlib
  c = importlib.import_module(f"isoflop.experiments.configs.{name}").get_config()
  c.seq_len, c.model.vocab_size = 16, 64
  c.model.d_model = 32
  if name == "lstm_tiny":
    c.model.d_hidden, c.model.d_proj = 48, 24  # a projected cell: one more hidden matrix
    c.model.tie_embeddings = False
  task = task_lib.make_task(c)
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 64)
  batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1)}
  boxed = jax.jit(task.init_variables)(jax.random.key(0), batch)["params"]
  return task, boxed, batch


def _logits(model, params, batch):
  # Jitted: eager Flax would compile each small op on its own.
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, batch["inputs"])


def _fake_quantized(boxed, settings):
  """The float parameters with every hidden matrix replaced by its quantize-dequantize."""
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(boxed))
  values = flax.traverse_util.flatten_dict(nn.meta.unbox(boxed))
  hidden = {path for path, spec in specs.items()
            if param_roles.role_of(tuple(spec)).kind == param_roles.HIDDEN}
  assert hidden, "the model has hidden matrices to quantize"
  out = {path: quantization.fake_quantize(v, tuple(specs[path]), settings) if path in hidden
         else v for path, v in values.items()}
  return flax.traverse_util.unflatten_dict(out), hidden


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_ptq_computes_with_the_quantized_weights(family, setting):
  task, boxed, batch = _setup(family)
  settings = quantization.QuantSettings(**SETTINGS[setting])
  model = task.model
  quantized_model, quantized = quantization.ptq(model, boxed, settings)
  float_logits = _logits(model, nn.meta.unbox(boxed), batch)
  ptq_logits = _logits(quantized_model, quantized, batch)
  reference, hidden = _fake_quantized(boxed, settings)
  reference_logits = _logits(model, reference, batch)
  flat = flax.traverse_util.flatten_dict(quantized, is_leaf=lambda _, x: quantization._quantized(x))
  assert {p for p, v in flat.items() if quantization._quantized(v)} == hidden
  scale = float(jnp.max(jnp.abs(float_logits)))
  assert float(jnp.max(jnp.abs(ptq_logits - float_logits))) > 1e-4 * scale  # it did quantize
  # weight only: exactly the float model on the dequantized weights; w8a8 also rounds the
  # activations, a smaller further change
  tolerance = 1e-5 if settings.act_bits is None else 5e-2
  np.testing.assert_allclose(ptq_logits, reference_logits, atol=tolerance * scale)

  float_bytes = quantization.weight_bytes(boxed)
  assert float_bytes == sum(v.size * 4 for v in jax.tree.leaves(nn.meta.unbox(boxed)))
  values = flax.traverse_util.flatten_dict(nn.meta.unbox(boxed))
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(boxed))
  expected = float_bytes
  for path in hidden:  # float32 values out; integers and one float32 scale per group in
    shape = values[path].shape
    channelwise, tiled = quantization.quantization_axes(tuple(specs[path]), shape,
                                                        settings.tile_size)
    scales = np.prod([shape[a] for a in channelwise]) * np.prod(
        [shape[a] // size for a, size in tiled.items()])
    expected += -4 * values[path].size + (values[path].size * settings.bits + 7) // 8 + 4 * scales
  assert quantization.weight_bytes(quantized) == expected
  assert quantization.weight_bytes(quantization.dequantized(quantized)) == float_bytes


@pytest.mark.parametrize("family", FAMILIES)
def test_qat_forward_quantizes_and_gradients_pass_straight_through(family):
  task, boxed, batch = _setup(family)
  settings = quantization.QuantSettings(bits=4, mode="qat")
  qat = quantization.qat_model(task.model, settings)
  params = nn.meta.unbox(boxed)
  qat_params = nn.meta.unbox(jax.eval_shape(
      lambda: qat.init({"params": jax.random.key(0)}, batch["inputs"], train=False))["params"])
  assert jax.tree.structure(qat_params) == jax.tree.structure(params)  # same train state
  reference, _ = _fake_quantized(boxed, settings)
  weights_BLV = jax.random.normal(jax.random.key(2), _logits(task.model, params, batch).shape)

  def loss(model, p):
    return jnp.sum(_logits(model, p, batch) * weights_BLV)

  float_logits = _logits(task.model, params, batch)
  qat_logits = _logits(qat, params, batch)
  scale = float(jnp.max(jnp.abs(float_logits)))
  assert float(jnp.max(jnp.abs(qat_logits - float_logits))) > 1e-3 * scale
  np.testing.assert_allclose(qat_logits, _logits(task.model, reference, batch),
                             atol=1e-5 * scale)
  # Straight through: d loss / d W is the float model's gradient at the quantized weights.
  qat_grads = jax.jit(jax.grad(lambda p: loss(qat, p)))(params)
  ste_grads = jax.jit(jax.grad(lambda p: loss(task.model, p)))(reference)
  for path, g in flax.traverse_util.flatten_dict(qat_grads).items():
    expected = flax.traverse_util.flatten_dict(ste_grads)[path]
    np.testing.assert_allclose(g, expected, atol=1e-4 * float(jnp.max(jnp.abs(expected))) + 1e-7,
                               err_msg="/".join(path))


@pytest.mark.parametrize("arguments, message", [
    (dict(bits=3), "quant.bits=3 is not supported"),
    (dict(bits=4, mode="w8a8"), "quant.mode='w8a8' means int8 weights"),
    (dict(bits=8, mode="int"), "quant.mode='int' is unknown"),
    (dict(bits=8, tile_size=0), "quant.tile_size=0 must be a positive int"),
])
def test_bad_settings_are_one_line(arguments, message):
  with pytest.raises(ValueError, match=message) as raised:
    quantization.QuantSettings(**arguments)
  assert "\n" not in str(raised.value)


def test_qat_training_computes_with_quantized_weights(tiny_config, tmp_path):
  """The same run with quant.mode=qat starts from the same weights but a different loss (that
  of the int4 network), and says so in config.json; PTQ modes are refused in training."""
  import json
  from isoflop.train import build, loop
  c = tiny_config
  c.steps, c.log_every = 2, 1
  first = {}
  for bits in (None, 4):
    c.quant.bits, c.quant.mode = bits, "qat"
    result = loop.run(build.prepare(c), str(tmp_path / f"bits{bits}"), progress=False)
    first[bits] = result.rows[0]["loss"]
  assert abs(first[4] - first[None]) > 1e-4
  assert json.loads((tmp_path / "bits4" / "config.json").read_text())["quant"]["mode"] == "qat"
  c.quant.mode = "weight_only"
  with pytest.raises(ValueError, match="quantizes after training") as raised:
    build.prepare(c)
  assert "\n" not in str(raised.value)
