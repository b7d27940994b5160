"""A bidirectional Transformer encoder with a masked-LM head (BERT), in pure Flax Linen.

Built from the decoder's layers (``models/attention.py`` without the causal mask,
``models/mlp.py``, ``models/norms.py``). ``norm_position="post"`` is BERT: a norm after the
embeddings and after each residual add; ``"pre"`` is the decoder's pre-norm block with a final
norm. The MLM head is BERT's: dense, activation, norm, then the readout (tied to the token
table, with a bias over the vocabulary). Layers are stacked with ``nn.scan``.

Notebook use needs nothing else::

    from isoflop.models.encoder import EncoderConfig, Encoder
    model = Encoder(EncoderConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4))
    params = model.init(jax.random.key(0), tokens_BL)["params"]
    logits_BLV = model.apply({"params": params}, tokens_BL)
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import attention as attention_lib
from isoflop.models import classifier, dims, logical, norms, vocab
from isoflop.models import mlp as mlp_lib
from isoflop.models.transformer import DTYPES, REMAT_POLICIES

POSITIONS = ("learned", "rope", "none")
NORM_POSITIONS = ("post", "pre")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(dims.TransformerDims):
  """Shape and behaviour of the encoder; the defaults are BERT's choices at a small size."""

  vocab_size: int = 256
  vocab_pad_multiple: int = 1
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: n_heads
  d_head: int | None = None  # None: d_model // n_heads
  d_ff: int | None = None  # None: 4 * d_model
  max_len: int = 512  # learned positions
  positions: str = "learned"
  rope_theta: float = 10_000.0
  type_vocab_size: int = 0  # token types (BERT: 2, sentence A/B); 0: no type table
  norm: str = "layernorm"
  norm_eps: float = 1e-12  # BERT's
  norm_position: str = "post"
  activation: str = "gelu_exact"  # BERT's erf GELU
  use_bias: bool = True
  mlm_transform: bool = True  # BERT's dense + activation + norm before the readout
  tie_embeddings: bool = True
  readout_bias: bool = True
  dropout: float = 0.0
  attention: str = "xla"
  # Stabilizers (models/attention.py): QK-norm; attention logits soft-capped at c (0: off)
  qk_norm: bool = False
  attn_logit_softcap: float = 0.0
  remat: str = "none"
  scan_unroll: int = 1
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Sequence classification (models/classifier.py): K > 1 replaces the MLM head by a fresh
  # head on the mean of the real tokens' final states, giving logits_BK; None keeps it.
  num_classes: int | None = None

  def __post_init__(self):
    attention_lib.check_stabilizers(self)
    for name in ("vocab_size", "vocab_pad_multiple", "d_model", "n_layers", "n_heads",
                 "max_len", "scan_unroll"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.type_vocab_size < 0:
      raise ValueError(f"model.type_vocab_size={self.type_vocab_size} must be >= 0")
    if self.d_head is None and self.d_model % self.n_heads:
      raise ValueError(f"model.n_heads={self.n_heads} does not divide model.d_model="
                       f"{self.d_model}; pick a divisor of d_model or set model.d_head")
    if self.n_heads % self.kv_heads:
      raise ValueError(f"model.n_kv_heads={self.kv_heads} does not divide model.n_heads="
                       f"{self.n_heads}; use a divisor of n_heads")
    choices = {"positions": POSITIONS, "norm": norms.NORMS, "norm_position": NORM_POSITIONS,
               "remat": tuple(REMAT_POLICIES), "attention": attention_lib.IMPLEMENTATIONS,
               "dtype": DTYPES, "param_dtype": DTYPES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"model.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
    mlp_lib.check_activation(self.activation)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.positions == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head dimension, got d_head={self.head_dim}")
    classifier.check_num_classes(self.num_classes)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _norm(cfg: EncoderConfig, name: str) -> nn.Module:
  return norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                         dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                         name=name)


class EncoderBlock(nn.Module):
  """Post-norm (BERT): x = Norm(x + Attn(x)), x = Norm(x + Mlp(x)). Pre-norm: the decoder's."""

  config: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, key_mask_BL):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    out_init = _normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)
    attention = attention_lib.Attention(
        n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, d_head=cfg.head_dim,
        use_bias=cfg.use_bias, use_rope=cfg.positions == "rope", rope_theta=cfg.rope_theta,
        implementation=cfg.attention, scale=cfg.head_dim ** -0.5,
        kernel_init=_normal(cfg.init_std), out_kernel_init=out_init, dtype=dtype,
        param_dtype=param_dtype, causal=False, **attention_lib.stabilizers(cfg),
        name="attention")
    mlp = mlp_lib.Mlp(d_ff=cfg.ff_dim, activation=cfg.activation, use_bias=cfg.use_bias,
                      kernel_init=_normal(cfg.init_std), out_kernel_init=out_init, dtype=dtype,
                      param_dtype=param_dtype, name="mlp")
    dropout = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    attend = lambda h_BLD: attention(h_BLD, positions_BL, segment_ids_BL,  # noqa: E731
                                     key_mask_BS=key_mask_BL)
    if cfg.norm_position == "post":
      x_BLD = _norm(cfg, "attention_norm")(x_BLD + dropout(attend(x_BLD)))
      x_BLD = _norm(cfg, "mlp_norm")(x_BLD + dropout(mlp(x_BLD)))
    else:
      x_BLD = x_BLD + dropout(attend(_norm(cfg, "attention_norm")(x_BLD)))
      x_BLD = x_BLD + dropout(mlp(_norm(cfg, "mlp_norm")(x_BLD)))
    self.sow("intermediates", "block_output", x_BLD)
    return logical.constrain(x_BLD, ("batch", "length", "embed")), None


class Encoder(nn.Module):
  """tokens_BL (int) -> MLM logits_BLV (float32, V = padded_vocab; padded columns masked)."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, token_types_BL: jax.Array | None = None,
               key_mask_BL: jax.Array | None = None, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, train: bool = False) -> jax.Array:
    """``key_mask_BL`` (1: a real token) hides padding from attention; ``segment_ids_BL``
    keeps attention within packed documents (``positions_BL`` restarting in each)."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)

    def table(rows, axis, name):
      return nn.Embed(rows, cfg.d_model, dtype=dtype, param_dtype=param_dtype, name=name,
                      embedding_init=nn.with_logical_partitioning(_normal(cfg.init_std),
                                                                  (axis, "embed")))

    embed = table(cfg.padded_vocab, "vocab", "embed")
    x_BLD = vocab.lookup(embed.embedding, tokens_BL, "vocab", dtype)
    if cfg.positions == "learned":
      x_BLD = x_BLD + vocab.lookup(table(cfg.max_len, "length", "position_embed").embedding,
                                   positions_BL, "length", dtype)
    if cfg.type_vocab_size:
      types_BL = jnp.zeros_like(tokens_BL) if token_types_BL is None else token_types_BL
      x_BLD = x_BLD + vocab.lookup(table(cfg.type_vocab_size, "token_types",
                                         "type_embed").embedding, types_BL, "token_types", dtype)
    if cfg.norm_position == "post":
      x_BLD = _norm(cfg, "embedding_norm")(x_BLD)
    self.sow("intermediates", "embedding", x_BLD)
    x_BLD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BLD)
    x_BLD = logical.constrain(x_BLD, ("batch", "length", "embed"))

    block = EncoderBlock
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    stack = nn.scan(
        block, variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.n_layers,
        unroll=min(cfg.scan_unroll, cfg.n_layers),
        metadata_params={nn.PARTITION_NAME: "layers"})
    x_BLD, _ = stack(cfg, deterministic=not train, name="layers")(
        x_BLD, positions_BL, segment_ids_BL, key_mask_BL)
    if cfg.norm_position == "pre":
      x_BLD = _norm(cfg, "final_norm")(x_BLD)
    if cfg.num_classes is not None:
      return classifier.SequenceClassifier(
          cfg.num_classes, "mean", cfg.init_std, cfg.dtype, cfg.param_dtype,
          name=classifier.NAME)(x_BLD, key_mask_BL)
    return self._readout(x_BLD, embed)

  def _readout(self, x_BLD, embed) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cfg.mlm_transform:
      h_BLM = nn.Dense(cfg.d_model, use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype,
                       kernel_init=nn.with_logical_partitioning(_normal(cfg.init_std),
                                                                ("embed", "mlp")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                       name="head_transform")(x_BLD)
      # A gated block's activation (swiglu -> silu) when the MLPs are gated: one matrix here.
      act = mlp_lib.ACTIVATIONS[mlp_lib.GATED_ACTIVATIONS.get(cfg.activation, cfg.activation)]
      h_BLM = logical.constrain(act(h_BLM), ("batch", "length", "mlp"))
      x_BLD = _norm(cfg, "head_norm")(h_BLM)
    # float32 logits from bf16 inputs, as the decoder's readout.
    if cfg.tie_embeddings:
      logits_BLV = jnp.einsum("bld,vd->blv", x_BLD.astype(dtype), embed.embedding.astype(dtype),
                              preferred_element_type=jnp.float32)
    else:
      logits_BLV = nn.Dense(
          cfg.padded_vocab, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
          kernel_init=nn.with_logical_partitioning(_normal(cfg.init_std), ("embed", "vocab")),
          name="head")(x_BLD)
    if cfg.readout_bias:
      bias_V = self.param("readout_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("vocab",)), (cfg.padded_vocab,), param_dtype)
      logits_BLV = logits_BLV + bias_V.astype(jnp.float32)
    logits_BLV = vocab.mask_padding(logits_BLV, cfg.vocab_size)
    logits_BLV = logical.constrain(logits_BLV, ("batch", "length", "vocab"))
    self.sow("intermediates", "logits", logits_BLV)
    return logits_BLV
