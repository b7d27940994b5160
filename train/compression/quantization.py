"""Quantization of any model family with Qwix: quantization-aware training and post-training.

Settings (``config.quant``): ``bits`` 8 | 4 (None: off), ``mode`` weight_only | w8a8 | qat,
``tile_size`` (None: one scale per output channel; an int: sub-channel, one scale per tile of
that many entries along the contraction axis), ``act_bits`` (None | 8; w8a8 implies 8).

- ``qat_model`` wraps a Linen model through Qwix's interception of ``Module.param``: every
  hidden matrix is fake-quantized (Qwix quantize, then dequantize) as the module reads it, with
  straight-through gradients, i.e. the gradient of the network computing with the quantized
  weights, handed unchanged to the float weights. Parameters are the float model's, unchanged.
  Weights only: activations stay float in QAT.
- ``ptq`` quantizes trained float weights to int8/int4 (Qwix ``QArray``s: integer values plus
  float scales) and returns the model wrapped with Qwix's ``PtqProvider`` that consumes them.
  weight_only computes with the dequantized weights; w8a8 (or act_bits=8) also quantizes the
  activation multiplied by each quantized weight and runs the matmul on integers.

Which weights: the ``hidden`` matrices of ``models/param_roles.py`` (attention and MLP kernels,
LSTM kernels, convolutions, MoE experts and router); embeddings, the readout, norms and biases
stay float. Qwix matches rules by module path only, which cannot tell a tied readout or an
embedding from a kernel, so the roles come from logical axis names instead: QAT reads them from
each parameter's initializer, PTQ from the parameters' PartitionSpecs, and PTQ quantizes an op
only when one of its operands is a quantized weight. Every other op (attention scores, the
readout, MoE dispatch) runs in float.

Granularity: scales per output channel, i.e. per entry of every axis that is not contracted,
so a scanned (stacked) matrix has its own scales in every layer and an expert kernel in every
expert. Sub-channel tiles run along the last contraction axis (the last input axis of
``param_roles.matrix_axes``). Gaps: convolution kernels (axes ``height``/``width``) keep
per-channel scales (Qwix's conv has no sub-channel scales); PTQ of a convolution with
activations needs ``act_bits == bits`` (Qwix's integer conv takes one type); a parameter
without logical axis names is never quantized.
"""

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from qwix._src.core import qarray as qarray_lib
from qwix._src.providers import ptq as ptq_lib

from isoflop.models import param_roles

SUPPORTED_BITS = (8, 4)
MODES = ("weight_only", "w8a8", "qat")
SUPPORTED_ACT_BITS = (8,)
SPATIAL_AXES = ("height", "width")  # a convolution kernel's window: per-channel scales only
_QTYPES = {8: jnp.int8, 4: jnp.int4}


@dataclasses.dataclass(frozen=True)
class QuantSettings:
  bits: int  # weight bit width: 8 or 4
  mode: str = "weight_only"  # one of MODES
  tile_size: int | None = None  # entries per scale along the contraction axis; None: per channel
  act_bits: int | None = None  # activation bit width (w8a8: 8); None: float activations

  def __post_init__(self):
    if self.bits not in SUPPORTED_BITS:
      raise ValueError(f"quant.bits={self.bits!r} is not supported; choose one of "
                       f"{SUPPORTED_BITS}, or None to turn quantization off")
    if self.mode not in MODES:
      raise ValueError(f"quant.mode={self.mode!r} is unknown; choose one of {MODES}")
    if self.mode == "w8a8" and self.bits != 8:
      raise ValueError(f"quant.mode='w8a8' means int8 weights, but quant.bits={self.bits}; set "
                       "quant.bits=8, or quant.mode='weight_only' for int4 weights")
    if self.tile_size is not None and (isinstance(self.tile_size, bool)
                                       or not isinstance(self.tile_size, int)
                                       or self.tile_size <= 0):
      raise ValueError(f"quant.tile_size={self.tile_size!r} must be a positive int (entries per "
                       "scale along the contraction axis), or None for per-channel scales")
    if self.act_bits is not None and self.act_bits not in SUPPORTED_ACT_BITS:
      raise ValueError(f"quant.act_bits={self.act_bits!r} is not supported; choose one of "
                       f"{SUPPORTED_ACT_BITS}, or None for float activations")
    if self.mode == "w8a8" and self.act_bits is None:
      object.__setattr__(self, "act_bits", 8)
    if self.mode == "weight_only" and self.act_bits is not None:
      raise ValueError(f"quant.act_bits={self.act_bits} quantizes activations, which "
                       "quant.mode='weight_only' does not; use mode='w8a8' or 'qat', or "
                       "act_bits=None")

  @property
  def weight_qtype(self):
    return _QTYPES[self.bits]

  @property
  def act_qtype(self):
    return None if self.act_bits is None else _QTYPES[self.act_bits]


def settings_from_config(block) -> QuantSettings | None:
  """The settings of a ``quant`` config block (ConfigDict-like); None when ``bits`` is None."""
  bits = getattr(block, "bits", None)
  if bits is None:
    return None
  return QuantSettings(bits=bits, mode=getattr(block, "mode", "weight_only"),
                       tile_size=getattr(block, "tile_size", None),
                       act_bits=getattr(block, "act_bits", None))


def _is_hidden(names) -> bool:
  try:
    return param_roles.role_of(names).kind == param_roles.HIDDEN
  except ValueError:  # unnamed dimensions: no role, left float
    return False


def _is_conv_kernel(names) -> bool:
  return any(name in SPATIAL_AXES for name in names)


def quantization_axes(names, shape, tile_size: int | None) -> tuple[tuple[int, ...], dict]:
  """(channelwise axes, {tiled axis: tile size}) of a hidden matrix with these logical axis
  names: one scale per entry of its copy and output axes, and per tile of ``tile_size`` entries
  of its last input axis (none for a convolution kernel). The granularity Qwix derives from
  the matmul that uses the matrix."""
  copies, inputs, outputs = param_roles.matrix_axes(names)
  tiled = {}
  if tile_size and inputs and not _is_conv_kernel(names):
    axis = inputs[-1]
    if shape[axis] % tile_size:
      raise ValueError(f"quant.tile_size={tile_size} does not divide the contraction axis "
                       f"{names[axis]!r} of size {shape[axis]} of a {tuple(shape)} matrix; "
                       "pick a divisor, or tile_size=None")
    tiled = {axis: tile_size}
  return copies + outputs, tiled


def fake_quantize(value: jax.Array, names, settings: QuantSettings) -> jax.Array:
  """A hidden matrix quantized with Qwix and dequantized again, as QAT's forward pass sees it."""
  channelwise, tiled = quantization_axes(names, value.shape, settings.tile_size)
  return qwix.dequantize(qwix.quantize(value, settings.weight_qtype, channelwise_axes=channelwise,
                                       tiled_axes=tiled))


def _straight_through(value: jax.Array, names, settings: QuantSettings) -> jax.Array:
  """The fake-quantized weight in the forward pass; the identity in the backward pass."""

  @jax.custom_vjp
  def quantized(v):
    return fake_quantize(v, names, settings)

  quantized.defvjp(lambda v: (quantized(v), None), lambda _, g: (g,))
  return quantized(value)


class _WeightQtProvider(qwix.QtProvider):
  """Fake-quantizes every hidden matrix as a module asks for it (``Module.param``), so every
  op that uses it computes with the quantized values: einsum, ``@``, convolutions, inside a
  scan, under any transformation. (Op-level interception has to recognize a weight among an
  op's operands, which Qwix cannot do for same-shaped weights under ``jax.grad``.) Roles come
  from the logical axis names of the parameter's initializer, evaluated abstractly once."""

  def __init__(self, rules, settings: QuantSettings):
    super().__init__(rules)
    self._settings = settings
    self._names: dict[tuple, tuple] = {}  # (module path, parameter name) -> logical names

  def nn_param(self, module: nn.Module, name: str, *args, **kwargs):
    value = module.param(name, *args, **kwargs)
    key = (tuple(module.path), name)
    if key not in self._names:
      names = ()
      if args and callable(args[0]):
        init_fn, init_args = args[0], args[1:]
        init_kwargs = {k: v for k, v in kwargs.items() if k != "unbox"}
        boxed = jax.eval_shape(lambda: init_fn(jax.random.key(0), *init_args, **init_kwargs))
        names = tuple(getattr(boxed, "names", None) or ())
      self._names[key] = names
    names = self._names[key]
    if names and len(names) == value.ndim and _is_hidden(names):
      return _straight_through(value, names, self._settings)
    return value

  def get_intercept_map(self):
    return {"flax.linen.Module.param": self.nn_param}


@flax.struct.dataclass
class QuantizedWeight(ptq_lib.WithAux):
  """A PTQ weight: Qwix's ``WithAux`` around a ``QArray`` (``.array``: integer ``qvalue``,
  float ``scale``), which also casts (``astype`` recasts the scales) and multiplies from the
  right with ``@`` (``x @ w`` of a matrix, through the intercepted einsum)."""

  def astype(self, dtype):
    return self.replace(array=self.array.astype(dtype))

  def __rmatmul__(self, x):
    if self.ndim != 2:
      return NotImplemented
    batch = "abcdefgh"[:x.ndim - 1]
    return jnp.einsum(f"{batch}y,yz->{batch}z", x, self)


def _quantized(x) -> bool:
  return isinstance(x, ptq_lib.WithAux)


def _swap_operands(einsum_str: str) -> str | None:
  inputs, arrow, output = einsum_str.partition("->")
  parts = inputs.split(",")
  return f"{parts[1]},{parts[0]}{arrow}{output}" if arrow and len(parts) == 2 else None


class _QuantizedWeightsPtqProvider(qwix.PtqProvider):
  """PtqProvider that quantizes an op only when an operand is a quantized weight (``ptq``
  quantized the hidden matrices beforehand); every other op runs in float. Sub-channel tiling
  is dropped from Qwix's rule while ``_per_channel`` is set (an op on a convolution kernel, or
  on a weight quantized per channel)."""

  _per_channel = False

  def _get_current_rule_and_op_id(self, op_name, **kwargs):
    rule, op_id = super()._get_current_rule_and_op_id(op_name, **kwargs)
    if rule is not None and self._per_channel:
      rule = dataclasses.replace(rule, tile_size=None)
    return rule, op_id

  def _call(self, per_channel: bool, fn, *args, **kwargs):
    self._per_channel = per_channel
    try:
      return fn(*args, **kwargs)
    finally:
      self._per_channel = False

  def einsum(self, einsum_str, *operands, **kwargs):
    if not any(map(_quantized, operands)):
      return jnp.einsum(einsum_str, *operands, **kwargs)
    if len(operands) == 2 and _quantized(operands[0]) and not _quantized(operands[1]):
      swapped = _swap_operands(einsum_str)  # Qwix expects the weight second
      if swapped is None:
        return jnp.einsum(einsum_str, qwix.dequantize(operands[0].array), operands[1], **kwargs)
      einsum_str, operands = swapped, operands[::-1]
    per_channel = not qarray_lib.get_tiled_axes(operands[-1].array)
    return self._call(per_channel, super().einsum, einsum_str, *operands, **kwargs)

  def dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs):
    if _quantized(lhs):  # a weight first (not one of our models): computed dequantized
      lhs = qwix.dequantize(lhs.array)
    if not _quantized(rhs):
      return jax.lax.dot_general(lhs, rhs, dimension_numbers, *args, **kwargs)
    per_channel = not qarray_lib.get_tiled_axes(rhs.array)
    return self._call(per_channel, super().dot_general, lhs, rhs, dimension_numbers, *args,
                      **kwargs)

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, *args, **kwargs):
    if not _quantized(rhs):
      return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
    if self._rules[0].act_qtype is None:  # weight only: Qwix's conv dequantizes a float lhs
      kwargs.pop("precision", None)
      return qwix.conv_general_dilated(lhs, rhs.array, window_strides, padding, *args, **kwargs)
    return self._call(True, super().conv_general_dilated, lhs, rhs, window_strides, padding,
                      *args, **kwargs)


def _rule(rule_class, settings: QuantSettings, **extra):
  return rule_class(module_path=".*", weight_qtype=settings.weight_qtype,
                    act_qtype=settings.act_qtype, tile_size=settings.tile_size, **extra)


def qat_model(model: nn.Module, settings: QuantSettings) -> nn.Module:
  """``model`` with its hidden matrices fake-quantized to ``settings.bits`` in the forward pass,
  with straight-through gradients (the gradient of the network computing with the quantized
  weights, passed unchanged to the float weights). Same parameters, shapes and names as
  ``model``, so the train state, its sharding and checkpoints are unchanged."""
  if settings.act_bits is not None:
    raise ValueError(f"quant.act_bits={settings.act_bits} with quant.mode='qat': QAT here "
                     "fake-quantizes weights only; set quant.act_bits=None (w8a8 is a "
                     "post-training mode: isoflop compress --method=quantize)")
  return qwix.quantize_model(model, _WeightQtProvider([_rule(qwix.QtRule, settings)], settings))


def _is_boxed(tree) -> bool:
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  return any(isinstance(leaf, nn.meta.AxisMetadata) for leaf in leaves)


def ptq(model: nn.Module, params: Any, settings: QuantSettings, *, param_specs: Any = None
        ) -> tuple[nn.Module, dict]:
  """Post-training quantization: (the model wrapped with Qwix's PtqProvider, its params with
  every hidden matrix a ``WithAux`` holding Qwix's ``QArray`` of int8/int4 values and float
  scales). Apply the pair as ``quantized_model.apply({"params": quantized_params,
  **model_state}, *inputs)``, with the float model's inputs.

  ``params`` are Flax-boxed (``model.init(...)["params"]``), or plain arrays with
  ``param_specs`` (their logical PartitionSpecs, ``nn.get_partition_spec`` of the boxed
  tree), which tell the roles. mode weight_only keeps activations float (unless act_bits);
  w8a8 quantizes them per token at run time; qat quantizes as its settings say (the serving
  form of a QAT-trained model)."""
  if param_specs is None:
    if not _is_boxed(params):
      raise ValueError("ptq needs the parameters' logical axis names: pass the boxed params "
                       "(model.init(...)['params']) or param_specs=nn.get_partition_spec(boxed)")
    param_specs = nn.get_partition_spec(params)
  values = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.meta.unbox(params)))
  specs = flax.traverse_util.flatten_dict(flax.core.unfreeze(param_specs))
  quantized = {}
  for path, value in values.items():
    names = tuple(specs[path])
    if not _is_hidden(names):
      quantized[path] = value
      continue
    channelwise, tiled = quantization_axes(names, value.shape, settings.tile_size)
    how = qarray_lib.HowToQuantize(qtype=settings.weight_qtype, channelwise_axes=channelwise,
                                   tiled_axes=tiled)
    quantized[path] = QuantizedWeight(qarray_lib.quantize(value, how), how)
  provider = _QuantizedWeightsPtqProvider([_rule(qwix.QuantizationRule, settings)])
  return (qwix.quantize_model(model, provider),
          flax.traverse_util.unflatten_dict(quantized))


def _bits(dtype) -> int:
  dtype = jnp.dtype(dtype)
  return jnp.iinfo(dtype).bits if jnp.issubdtype(dtype, jnp.integer) else 8 * dtype.itemsize


def _array_bytes(x) -> int:
  return (math.prod(x.shape) * _bits(x.dtype) + 7) // 8


def weight_bytes(params: Any) -> int:
  """Bytes the weights take as stored: a quantized matrix's integer values at their bit width
  (int8: 1 byte, int4: half a byte each, rounded up per matrix) plus its scales (and zero
  points if any); every other leaf at its dtype's size. Float, boxed, quantized or abstract
  (``jax.ShapeDtypeStruct``) trees all work."""
  total = 0
  for leaf in jax.tree.leaves(nn.meta.unbox(params),
                              is_leaf=lambda x: isinstance(x, qarray_lib.QArray)):
    if isinstance(leaf, qarray_lib.QArray):
      total += (math.prod(leaf.qvalue.shape) * _bits(leaf.qtype) + 7) // 8
      total += sum(_array_bytes(x) for x in (leaf.scale, leaf.zero_point) if x is not None)
    else:
      total += _array_bytes(leaf)
  return total


def dequantized(params: Any) -> Any:
  """A ``ptq`` tree back in float: every quantized matrix dequantized, the values a float model
  loads to compute what the weight-only quantized model computes."""
  return jax.tree.map(lambda x: qwix.dequantize(x.array) if _quantized(x) else x, params,
                      is_leaf=_quantized)
