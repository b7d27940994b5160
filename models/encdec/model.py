"""A T5-style encoder-decoder (Raffel et al. 2020) in pure Flax Linen.

A shared token table feeds two stacks of pre-norm residual blocks. The encoder's blocks are
bidirectional self-attention and an MLP; the decoder's are causal self-attention,
cross-attention to the encoder's output and an MLP; each stack ends in a norm. Positions are
T5's bucketed relative bias (``relative.py``: one table per stack, computed once outside the
layer scan and added to every self-attention of the stack; cross-attention gets none), RoPE,
or none. Padded inputs (``input_mask_BL`` 0) are hidden from the encoder's self-attention and
the decoder's cross-attention. With tied embeddings the readout is the token table applied to
the decoder output scaled by d_model**-0.5, as T5 does; untied, a separate head (T5.1.1).
Layers are stacked with ``nn.scan`` (compile time does not grow with depth); every parameter and
activation carries logical axis names only.

Hugging Face's t5-small is ``EncDecConfig(vocab_size=32128, d_model=512, n_heads=8, d_ff=2048,
n_encoder_layers=6, n_decoder_layers=6, attention_scale=1.0)`` (``hf.py`` maps its weights).
Notebook use needs nothing else::

    from isoflop.models.encdec import EncDecConfig, EncoderDecoder
    model = EncoderDecoder(EncDecConfig(vocab_size=256, d_model=64, n_heads=4))
    params = model.init(jax.random.key(0), inputs_BL, decoder_inputs_BT)["params"]
    logits_BTV = model.apply({"params": params}, inputs_BL, decoder_inputs_BT,
                             input_mask_BL=mask_BL)
    encoded_BLD = model.apply({"params": params}, inputs_BL, method="encode")

``EncoderDecoder(cfg, cache_len=S)`` decodes: the decoder's self-attention keeps a key/value
cache of S slots in the ``cache`` collection and each ``decode`` call continues the positions
(and relative buckets) after those already cached; cross-attention projects the encoded input
once, at the first call (``models/generation.py``).

Dropout (training only) falls on the embeddings, each block's residual branches and each
stack's output; T5 also drops attention probabilities, which the fused attention call does not.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import attention as attention_lib
from isoflop.models import mlp as mlp_lib
from isoflop.models import dims, families, logical, norms, transformer, vocab
from isoflop.models.encdec import relative

POSITIONS = ("relative", "rope", "none")
DTYPES = transformer.DTYPES
REMAT_POLICIES = transformer.REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class EncDecConfig(dims.TransformerDims):
  """Shape and behaviour of the encoder-decoder. ``None`` fields are derived (properties)."""

  vocab_size: int = 256
  vocab_pad_multiple: int = 1  # pad the token table and logits to a multiple (padded_vocab)
  d_model: int = 128
  n_encoder_layers: int = 2
  n_decoder_layers: int = 2
  n_heads: int = 4
  d_head: int | None = None  # None: d_model // n_heads (T5's d_kv)
  d_ff: int | None = None  # None: 4 * d_model
  positions: str = "relative"  # relative (T5's bucketed bias) | rope | none
  relative_buckets: int = 32
  relative_max_distance: int = 128
  rope_theta: float = 10_000.0
  norm: str = "rmsnorm"
  norm_eps: float = 1e-6
  activation: str = "relu"  # T5; T5.1.1: geglu (tanh GELU, Hugging Face's gelu_new)
  use_bias: bool = False
  tie_embeddings: bool = True  # tied: readout = token table on d_model**-0.5 * x (T5)
  attention_scale: float | None = None  # multiplies q.k; None: 1/sqrt(d_head); T5: 1.0
  dropout: float = 0.0
  attention: str = "xla"
  # Stabilizers (models/attention.py): QK-norm; attention logits soft-capped at c (0: off)
  qk_norm: bool = False
  attn_logit_softcap: float = 0.0
  remat: str = "none"
  scan_unroll: int = 1  # layers per scan iteration; the stack's depth unrolls it fully
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype of matmuls and activations
  param_dtype: str = "float32"

  def __post_init__(self):
    attention_lib.check_stabilizers(self)
    for name in ("vocab_size", "vocab_pad_multiple", "d_model", "n_encoder_layers",
                 "n_decoder_layers", "n_heads", "scan_unroll", "d_head", "d_ff"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"model.{name}={value} must be positive")
    if self.d_head is None and self.d_model % self.n_heads:
      raise ValueError(
          f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
          "pick a divisor of d_model or set model.d_head explicitly")
    choices = {"positions": POSITIONS, "norm": norms.NORMS, "remat": tuple(REMAT_POLICIES),
               "attention": attention_lib.IMPLEMENTATIONS, "dtype": DTYPES,
               "param_dtype": DTYPES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not supported by "
                         f"model.family='encdec'; choose one of {allowed}")
    mlp_lib.check_activation(self.activation)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.attention_scale is not None and self.attention_scale <= 0:
      raise ValueError(f"model.attention_scale={self.attention_scale} must be positive (or "
                       "None: 1/sqrt(d_head); T5: 1.0)")
    if self.init_std <= 0 or self.norm_eps <= 0:
      raise ValueError(f"model.init_std={self.init_std} and model.norm_eps={self.norm_eps} "
                       "must be positive")
    if self.positions == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head dimension, got d_head={self.head_dim}")
    if self.positions == "relative":
      self._check_relative()

  def _check_relative(self):
    if self.relative_buckets < 4:
      raise ValueError(f"model.relative_buckets={self.relative_buckets} must be at least 4 "
                       "(the encoder splits them by direction, then into exact and log halves)")
    if self.relative_max_distance <= self.relative_buckets // 2:
      raise ValueError(
          f"model.relative_max_distance={self.relative_max_distance} must exceed "
          f"relative_buckets // 2 = {self.relative_buckets // 2}, the distances the decoder "
          "buckets exactly; raise it (T5: 128 for 32 buckets)")

  @property
  def scale(self) -> float:
    return self.head_dim ** -0.5 if self.attention_scale is None else self.attention_scale

  @property
  def max_layers(self) -> int:
    return max(self.n_encoder_layers, self.n_decoder_layers)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


class _Layers:
  """What the blocks of one stack share: norms, attention, MLP and dropout built from the
  config. Residual output projections start smaller, by 1/sqrt(2 * layers) (GPT-2)."""

  def __init__(self, cfg: EncDecConfig, n_layers: int, deterministic: bool):
    self.cfg, self.deterministic = cfg, deterministic
    self.dtype, self.param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.out_init = _normal(cfg.init_std / (2 * n_layers) ** 0.5)

  def norm(self, name):
    cfg = self.cfg
    return norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)

  def attention(self, name, *, causal: bool, rope: bool, cache_len: int = 0):
    cfg = self.cfg
    return attention_lib.Attention(
        n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads, d_head=cfg.head_dim, use_bias=cfg.use_bias,
        use_rope=rope, rope_theta=cfg.rope_theta, implementation=cfg.attention,
        scale=cfg.scale, kernel_init=_normal(cfg.init_std), out_kernel_init=self.out_init,
        dtype=self.dtype, param_dtype=self.param_dtype, causal=causal, cache_len=cache_len,
        **attention_lib.stabilizers(cfg), name=name)

  def mlp(self):
    cfg = self.cfg
    return mlp_lib.Mlp(d_ff=cfg.ff_dim, activation=cfg.activation, use_bias=cfg.use_bias,
                       kernel_init=_normal(cfg.init_std), out_kernel_init=self.out_init,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")

  def residual(self, x, h):
    return x + nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)(h)


class EncoderBlock(nn.Module):
  """x + SelfAttn(Norm(x)) (bidirectional), then x + Mlp(Norm(x))."""

  config: EncDecConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, bias_1HLL, input_mask_BL):
    cfg = self.config
    parts = _Layers(cfg, cfg.n_encoder_layers, self.deterministic)
    attend = parts.attention("attention", causal=False, rope=cfg.positions == "rope")
    h_BLD = attend(parts.norm("attention_norm")(x_BLD), positions_BL, bias_BHLS=bias_1HLL,
                   key_mask_BS=input_mask_BL)
    x_BLD = parts.residual(x_BLD, h_BLD)
    x_BLD = parts.residual(x_BLD, parts.mlp()(parts.norm("mlp_norm")(x_BLD)))
    self.sow("intermediates", "block_output", x_BLD)
    return logical.constrain(x_BLD, ("batch", "length", "embed")), None


class DecoderBlock(nn.Module):
  """y + SelfAttn(Norm(y)) (causal), y + CrossAttn(Norm(y), encoded), y + Mlp(Norm(y))."""

  config: EncDecConfig
  deterministic: bool
  cache_len: int = 0  # > 0: decoding, with a key/value cache of this many slots

  @nn.compact
  def __call__(self, y_BTD, positions_BT, bias_1HTT, encoded_BLD, input_mask_BL):
    cfg = self.config
    parts = _Layers(cfg, cfg.n_decoder_layers, self.deterministic)
    attend = parts.attention("self_attention", causal=True, rope=cfg.positions == "rope",
                             cache_len=self.cache_len)
    h_BTD = attend(parts.norm("self_attention_norm")(y_BTD), positions_BT, bias_BHLS=bias_1HTT)
    y_BTD = parts.residual(y_BTD, h_BTD)
    cross = parts.attention("cross_attention", causal=False, rope=False,
                            cache_len=self.cache_len)
    h_BTD = cross(parts.norm("cross_attention_norm")(y_BTD), positions_BT, kv_BSD=encoded_BLD,
                  key_mask_BS=input_mask_BL)
    y_BTD = parts.residual(y_BTD, h_BTD)
    y_BTD = parts.residual(y_BTD, parts.mlp()(parts.norm("mlp_norm")(y_BTD)))
    self.sow("intermediates", "block_output", y_BTD)
    return logical.constrain(y_BTD, ("batch", "length", "embed")), None


class Stack(nn.Module):
  """One stack: its relative bias table (when positions="relative"), n_layers scanned blocks
  and a final norm. x_BLD -> x_BLD."""

  config: EncDecConfig
  decoder: bool  # causal self-attention, unidirectional buckets, cross-attention
  cache_len: int = 0  # decoder only, > 0: decoding with a key/value cache of this many slots

  @nn.compact
  def __call__(self, x_BLD, input_mask_BL, encoded_BSD=None, *, train: bool):
    cfg = self.config
    n_layers = cfg.n_decoder_layers if self.decoder else cfg.n_encoder_layers
    positions_BL = jnp.broadcast_to(jnp.arange(x_BLD.shape[1]), x_BLD.shape[:2])
    decoding = self.decoder and self.cache_len > 0
    if decoding:  # this call's positions follow those already in the cache
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      positions_BL = positions_BL + index.value
      index.value = index.value + x_BLD.shape[1]
    bias_1HLL = None
    if cfg.positions == "relative":
      table_NH = self.param(
          "relative_bias", nn.with_logical_partitioning(
              _normal(cfg.init_std), ("position_buckets", "heads")),
          (cfg.relative_buckets, cfg.n_heads), jnp.dtype(cfg.param_dtype))
      if decoding:  # this call's queries over every slot of the cache
        bias_1HLL = relative.bias_at(table_NH, positions_BL[0], self.cache_len,
                                     bidirectional=False, max_distance=cfg.relative_max_distance)
      else:
        bias_1HLL = relative.bias(table_NH, x_BLD.shape[1], x_BLD.shape[1],
                                  bidirectional=not self.decoder,
                                  max_distance=cfg.relative_max_distance)
    block = DecoderBlock if self.decoder else EncoderBlock
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    broadcast = (encoded_BSD, input_mask_BL) if self.decoder else (input_mask_BL,)
    per_layer = {"params": 0, "intermediates": 0, families.AUX_LOSS: 0, families.AUX_METRICS: 0,
                 "cache": 0}
    stack = nn.scan(
        block, variable_axes=per_layer, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * (2 + len(broadcast)), length=n_layers,
        unroll=min(cfg.scan_unroll, n_layers), metadata_params={nn.PARTITION_NAME: "layers"})
    extra = {"cache_len": self.cache_len} if self.decoder else {}
    x_BLD, _ = stack(cfg, deterministic=not train, name="layers", **extra)(
        x_BLD, positions_BL, bias_1HLL, *broadcast)
    x_BLD = norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                            dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                            name="final_norm")(x_BLD)
    x_BLD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BLD)
    return logical.constrain(x_BLD, ("batch", "length", "embed"))


class EncoderDecoder(nn.Module):
  """(inputs_BL, decoder_inputs_BT) int -> logits_BTV (float32, V = padded_vocab; padded
  columns masked). ``input_mask_BL`` (1 real, 0 padding; None: all real) hides padded inputs."""

  config: EncDecConfig
  cache_len: int = 0  # > 0: ``decode`` continues a cached decoding (models/generation.py)

  def setup(self):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = nn.Embed(
        cfg.padded_vocab, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(_normal(cfg.init_std), ("vocab", "embed")))
    self.encoder = Stack(cfg, decoder=False)
    self.decoder = Stack(cfg, decoder=True, cache_len=self.cache_len)
    if not cfg.tie_embeddings:
      self.head = nn.Dense(
          cfg.padded_vocab, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
          kernel_init=nn.with_logical_partitioning(_normal(cfg.init_std), ("embed", "vocab")))
    self.dropout = nn.Dropout(cfg.dropout)

  def _embed(self, ids_BL, train: bool):
    x_BLD = vocab.lookup(self.embed.embedding, ids_BL, "vocab", jnp.dtype(self.config.dtype))
    self.sow("intermediates", "embedding", x_BLD)
    x_BLD = self.dropout(x_BLD, deterministic=not train)
    return logical.constrain(x_BLD, ("batch", "length", "embed"))

  def encode(self, inputs_BL: jax.Array, *, input_mask_BL: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """inputs_BL -> encoded_BLD, the encoder stack's output."""
    return self.encoder(self._embed(inputs_BL, train), input_mask_BL, train=train)

  def decode(self, encoded_BLD: jax.Array, decoder_inputs_BT: jax.Array, *,
             input_mask_BL: jax.Array | None = None, train: bool = False) -> jax.Array:
    """(encoded_BLD, decoder_inputs_BT) -> logits_BTV."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    y_BTD = self.decoder(self._embed(decoder_inputs_BT, train), input_mask_BL, encoded_BLD,
                         train=train)
    # The readout accumulates and returns float32 even from bf16 inputs.
    if cfg.tie_embeddings:
      y_BTD = (y_BTD * cfg.d_model ** -0.5).astype(dtype)
      logits_BTV = jnp.einsum("btd,vd->btv", y_BTD, self.embed.embedding.astype(dtype),
                              preferred_element_type=jnp.float32)
    else:
      logits_BTV = self.head(y_BTD)
    logits_BTV = vocab.mask_padding(logits_BTV, cfg.vocab_size)
    logits_BTV = logical.constrain(logits_BTV, ("batch", "length", "vocab"))
    self.sow("intermediates", "logits", logits_BTV)
    return logits_BTV

  def __call__(self, inputs_BL: jax.Array, decoder_inputs_BT: jax.Array, *,
               input_mask_BL: jax.Array | None = None, train: bool = False) -> jax.Array:
    encoded_BLD = self.encode(inputs_BL, input_mask_BL=input_mask_BL, train=train)
    return self.decode(encoded_BLD, decoder_inputs_BT, input_mask_BL=input_mask_BL,
                       train=train)
