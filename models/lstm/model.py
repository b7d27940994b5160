"""A multi-layer LSTM language model in pure Flax Linen (Hochreiter & Schmidhuber 1997, with a
forget gate; optional projection as LSTMP, Sak et al. 2014; dropout between layers as
Zaremba et al. 2014).

Each layer computes the input part of its four gates for every timestep at once (one matmul
over the whole sequence), then runs the recurrence with ``jax.lax.scan`` over time:

  z_t = x_t W + r_{t-1} R + b      gates (i, f, g, o) = (sigma, sigma, tanh, sigma)(z_t)
  c_t = f * c_{t-1} + i * g        h_t = o * tanh(c_t)        r_t = h_t P  (or h_t)

Packed documents (``segment_ids_BL``) reset the state to zero where a new document starts, so
no state crosses a document boundary. Parameters and activations carry logical axis names:
kernels ``(embed|hidden, mlp, gate)``, the projection ``(mlp, embed)``; ``mlp`` is the cell
width H (tensor-parallel), ``gate`` the four gates.

``LstmLm(cfg, decode=True)`` carries each layer's state (c, r) across calls in the ``cache``
collection, so a prompt and then one token at a time continue one recurrence
(``models/generation.py``).

Notebook use::

    from isoflop.models.lstm import LstmConfig, LstmLm
    model = LstmLm(LstmConfig(vocab_size=256, d_model=64, n_layers=2))
    params = model.init(jax.random.key(0), tokens_BL)["params"]
    logits_BLV = model.apply({"params": params}, tokens_BL)
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical, vocab

GATES = 4  # input, forget, cell candidate, output
REMAT = ("none", "full")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LstmConfig:
  """Shape and behaviour of the LSTM LM. ``None`` fields are derived (see the properties)."""

  vocab_size: int = 256
  vocab_pad_multiple: int = 1
  d_model: int = 128  # embedding width (and the readout's input when tied)
  d_hidden: int | None = None  # cell width H; None: d_model
  d_proj: int | None = None  # projection of each layer's output (LSTMP); None: no projection
  n_layers: int = 2
  dropout: float = 0.0  # on the embedding, between layers and before the readout
  tie_embeddings: bool = True
  init_std: float = 0.1  # token table (and untied readout); cell kernels use 1/sqrt(fan_in)
  # (0.1 rather than the decoder's 0.02: no norm rescales the embedding before the cell)
  forget_bias: float = 1.0  # added to the forget gate's bias at init (Gers et al. 2000)
  dtype: str = "float32"
  param_dtype: str = "float32"
  parametrization: str = "sp"  # only sp: no muP table is derived for recurrent cells
  remat: str = "none"  # none | full: recompute each layer in the backward pass
  time_unroll: int = 1  # timesteps per scan iteration (cost analysis unrolls all of them)

  def __post_init__(self):
    for name in ("vocab_size", "vocab_pad_multiple", "d_model", "hidden_dim", "n_layers",
                 "time_unroll"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.d_proj is not None and self.d_proj <= 0:
      raise ValueError(f"model.d_proj={self.d_proj} must be positive (or None: no projection)")
    for name, allowed in {"remat": REMAT, "dtype": DTYPES, "param_dtype": DTYPES,
                          "parametrization": ("sp",)}.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not supported by "
                         f"model.family='lstm'; choose one of {allowed}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.tie_embeddings and self.output_dim != self.d_model:
      raise ValueError(
          f"model.tie_embeddings=True reads out through the token table, which needs the last "
          f"layer's output width ({self.output_dim}) to equal model.d_model={self.d_model}; "
          "set model.d_proj (or d_hidden) to d_model, or model.tie_embeddings=False")

  @property
  def padded_vocab(self) -> int:
    return vocab.padded_size(self.vocab_size, self.vocab_pad_multiple)

  @property
  def hidden_dim(self) -> int:
    return self.d_model if self.d_hidden is None else self.d_hidden

  @property
  def output_dim(self) -> int:
    """Width of each layer's output r_t (the next layer's input and the recurrent input)."""
    return self.hidden_dim if self.d_proj is None else self.d_proj

  def input_dim(self, layer: int) -> int:
    return self.d_model if layer == 0 else self.output_dim


def _cell_scan(gx_LBHG, recurrent_RHG, projection_HP, reset_LB, unroll: int, carry=None):
  """The recurrence over time (time-major inputs) from ``carry`` (c_BH, r_BR; None: zeros);
  returns (the final carry, r_LBR)."""
  L, B, H, _ = gx_LBHG.shape
  R = recurrent_RHG.shape[0]
  dtype = gx_LBHG.dtype

  def step(carry, inputs):
    c_BH, r_BR = carry
    gx_BHG, reset_B = inputs
    keep_B1 = (1 - reset_B.astype(dtype))[:, None]
    c_BH, r_BR = c_BH * keep_B1, r_BR * keep_B1
    z_BHG = gx_BHG + jnp.einsum("br,rhg->bhg", r_BR, recurrent_RHG)
    z_BHG = logical.constrain(z_BHG, ("batch", "mlp", "gate"))
    i_BH, f_BH, g_BH, o_BH = (z_BHG[..., k] for k in range(GATES))
    c_BH = jax.nn.sigmoid(f_BH) * c_BH + jax.nn.sigmoid(i_BH) * jnp.tanh(g_BH)
    h_BH = jax.nn.sigmoid(o_BH) * jnp.tanh(c_BH)
    # An einsum, not @ (a jitted jnp.matmul): Qwix quantization intercepts einsum.
    r_BR = h_BH if projection_HP is None else jnp.einsum("bh,hp->bp", h_BH, projection_HP)
    c_BH = logical.constrain(c_BH, ("batch", "mlp"))
    r_BR = logical.constrain(r_BR, ("batch", None))
    return (c_BH, r_BR), r_BR

  if carry is None:
    carry = (jnp.zeros((B, H), dtype), jnp.zeros((B, R), dtype))
  return jax.lax.scan(step, carry, (gx_LBHG, reset_LB), unroll=unroll)


class LstmLayer(nn.Module):
  """x_BLI -> r_BLR: one LSTM layer over a whole sequence."""

  config: LstmConfig
  layer: int
  decode: bool = False  # start from, and keep, the state in the "cache" collection

  @nn.compact
  def __call__(self, x_BLI: jax.Array, reset_BL: jax.Array) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    H, R = cfg.hidden_dim, cfg.output_dim
    in_name = "embed" if self.layer == 0 or cfg.d_proj is not None else "hidden"
    fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0,
                                              out_axis=(1, 2))

    def forget_bias_init(key, shape, dtype):
      del key
      return jnp.zeros(shape, dtype).at[:, 1].set(cfg.forget_bias)

    kernel_IHG = self.param("kernel", nn.with_logical_partitioning(
        fan_in, (in_name, "mlp", "gate")), (x_BLI.shape[-1], H, GATES), param_dtype)
    recurrent_RHG = self.param("recurrent_kernel", nn.with_logical_partitioning(
        fan_in, ("embed" if cfg.d_proj is not None else "hidden", "mlp", "gate")),
        (R, H, GATES), param_dtype)
    bias_HG = self.param("bias", nn.with_logical_partitioning(
        forget_bias_init, ("mlp", "gate")), (H, GATES), param_dtype)
    projection_HP = None
    if cfg.d_proj is not None:
      projection_HP = self.param("projection", nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("mlp", "embed")), (H, R), param_dtype).astype(dtype)

    gx_BLHG = jnp.einsum("bli,ihg->blhg", x_BLI.astype(dtype), kernel_IHG.astype(dtype))
    gx_BLHG = logical.constrain(gx_BLHG + bias_HG.astype(dtype),
                                ("batch", "length", "mlp", "gate"))
    # Gathered once (as FSDP gathers a parameter before use), not at every timestep.
    recurrent_RHG = logical.constrain(recurrent_RHG.astype(dtype), (None, "mlp", "gate"))
    carry = None
    if self.decode:
      B = x_BLI.shape[0]
      c = self.variable("cache", "c", jnp.zeros, (B, H), dtype)
      r = self.variable("cache", "r", jnp.zeros, (B, R), dtype)
      carry = (c.value, r.value)
    carry, r_LBR = _cell_scan(jnp.swapaxes(gx_BLHG, 0, 1), recurrent_RHG, projection_HP,
                              jnp.swapaxes(reset_BL, 0, 1), cfg.time_unroll, carry)
    if self.decode:
      c.value, r.value = carry
    return jnp.swapaxes(r_LBR, 0, 1)


class LstmLm(nn.Module):
  """tokens_BL (int) -> logits_BLV (float32, V = padded_vocab; padded columns masked)."""

  config: LstmConfig
  decode: bool = False  # carry the state across calls (models/generation.py)

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, train: bool = False) -> jax.Array:
    """``positions_BL`` is accepted for the causal-LM objective's sake and unused (order is
    the recurrence); ``segment_ids_BL`` resets the state at each new document."""
    del positions_BL
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    embed = nn.Embed(
        cfg.padded_vocab, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                    ("vocab", "embed")), name="embed")
    x_BLD = logical.constrain(vocab.lookup(embed.embedding, tokens_BL, "vocab", dtype),
                              ("batch", "length", "embed"))
    if segment_ids_BL is None:
      reset_BL = jnp.zeros(tokens_BL.shape, bool)
    else:  # a new document starts where the id changes
      reset_BL = jnp.pad(segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1], ((0, 0), (1, 0)))
    layer_class = LstmLayer if cfg.remat == "none" else nn.remat(LstmLayer, prevent_cse=False)
    dropout = nn.Dropout(cfg.dropout, deterministic=not train)
    x_BLR = dropout(x_BLD)
    for layer in range(cfg.n_layers):
      x_BLR = layer_class(cfg, layer, self.decode, name=f"layer_{layer}")(x_BLR, reset_BL)
      x_BLR = dropout(logical.constrain(x_BLR, ("batch", "length", None)))
    if cfg.tie_embeddings:
      logits_BLV = jnp.einsum("bld,vd->blv", x_BLR.astype(dtype), embed.embedding.astype(dtype),
                              preferred_element_type=jnp.float32)
    else:
      logits_BLV = nn.Dense(
          cfg.padded_vocab, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                   ("embed", "vocab")), name="head")(x_BLR)
    logits_BLV = vocab.mask_padding(logits_BLV, cfg.vocab_size)
    return logical.constrain(logits_BLV, ("batch", "length", "vocab"))
