"""A decoder-only language model in pure Flax Linen.

One frozen config covers GPT-2 shapes (learned positions, LayerNorm, GELU, biases, tied
embeddings) and Llama shapes (RoPE, RMSNorm, SwiGLU, no biases, untied, grouped-query
attention). Layers are stacked with ``nn.scan`` so compile time does not grow with depth.
With ``num_experts > 0`` the MLP of every ``moe_every``-th layer is a routed mixture of experts
(``models/moe.py``), which sows its balance and z losses into ``aux_loss``.
Every parameter and activation carries logical axis names only; a mesh never appears here.

Notebook use needs nothing else::

    from isoflop.models import transformer
    cfg = transformer.TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4)
    model = transformer.Decoder(cfg)
    params = model.init(jax.random.key(0), tokens_BL)["params"]
    logits_BLV = model.apply({"params": params}, tokens_BL)

Passing ``mutable=["intermediates"]`` to ``apply`` also returns the activations the coordinate
check measures (embedding, each block's output, attention logits, logits).
``Decoder(cfg, cache_len=S)`` decodes with a key/value cache of S slots in the ``cache``
collection (scanned over layers like the parameters): ``models/generation.py``.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import attention as attention_lib
from isoflop.models import mlp as mlp_lib
from isoflop.models import classifier, dims, families, logical, moe, mup, norms, vocab

POSITIONS = ("learned", "rope", "none")
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # keep every activation: fastest, most memory
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TransformerConfig(dims.TransformerDims):
  """Shape and behaviour of the decoder. ``None`` fields are derived (see the properties)."""

  vocab_size: int = 256
  vocab_pad_multiple: int = 1  # pad the token table and logits to a multiple (padded_vocab)
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: n_heads (multi-head); fewer: grouped-query
  d_head: int | None = None  # None: d_model // n_heads
  d_ff: int | None = None  # None: 4 * d_model
  max_len: int = 256
  positions: str = "learned"
  rope_theta: float = 10_000.0
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  activation: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout: float = 0.0
  attention: str = "xla"
  # Stabilizers (models/attention.py): QK-norm; attention logits soft-capped at c (0: off)
  qk_norm: bool = False
  attn_logit_softcap: float = 0.0
  final_logit_softcap: float = 0.0  # > 0: the readout's logits -> c tanh(logits / c)
  remat: str = "none"
  scan_unroll: int = 1  # layers per scan iteration; n_layers unrolls the stack fully
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype of matmuls and activations
  param_dtype: str = "float32"
  parametrization: str = "sp"  # sp | mup (models/mup.py)
  mup_base_width: int | None = None  # mup: the width hyperparameters were tuned at
  mup_zero_readout: bool = False  # mup: the readout starts at zero (models/mup.py)
  mup_base_head_dim: int | None = None  # mup: d_head of the base model; None = d_head (fixed)
  # Mixture of experts (models/moe.py): num_experts > 0 routes the MLP of every moe_every-th
  # layer to experts_per_token of num_experts experts of width expert_d_ff.
  num_experts: int = 0
  experts_per_token: int = 2
  moe_every: int = 1
  capacity_factor: float = 1.25  # 0: no capacity limit, no token dropped
  shared_experts: int = 0  # experts every token uses, each of width expert_d_ff
  expert_d_ff: int | None = None  # None: d_ff; d_ff / expert_d_ff is the granularity G
  router_aux_loss: float = 0.01  # load-balancing loss coefficient (Switch Transformer)
  router_z_loss: float = 0.001  # router z-loss coefficient (ST-MoE)
  # Sequence classification (models/classifier.py): K > 1 replaces the LM readout by a fresh
  # head on the last real token's state, giving logits_BK; None keeps the LM head.
  num_classes: int | None = None

  def __post_init__(self):
    attention_lib.check_stabilizers(self)
    if self.final_logit_softcap < 0:
      raise ValueError(f"model.final_logit_softcap={self.final_logit_softcap} must be >= 0 "
                       "(0 turns soft-capping off)")
    for name in ("vocab_size", "vocab_pad_multiple", "d_model", "n_layers", "n_heads", "max_len",
                 "scan_unroll"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.d_head is None and self.d_model % self.n_heads:
      raise ValueError(
          f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
          "pick a divisor of d_model or set model.d_head explicitly")
    if self.n_heads % self.kv_heads:
      raise ValueError(
          f"model.n_kv_heads={self.kv_heads} does not divide model.n_heads={self.n_heads}; "
          "use a divisor of n_heads (1 = multi-query, n_heads = multi-head)")
    choices = {"positions": POSITIONS, "norm": norms.NORMS, "remat": tuple(REMAT_POLICIES),
               "attention": attention_lib.IMPLEMENTATIONS, "dtype": DTYPES,
               "param_dtype": DTYPES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"model.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
    mlp_lib.check_activation(self.activation)
    if self.parametrization not in mup.PARAMETRIZATIONS:
      raise ValueError(f"model.parametrization={self.parametrization!r} is unknown; choose one "
                       f"of {mup.PARAMETRIZATIONS}")
    if self.parametrization == "mup" and self.tie_embeddings:
      raise ValueError("model.parametrization='mup' needs an untied readout; set "
                       "model.tie_embeddings=False")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.positions == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head dimension, got d_head={self.head_dim}")
    self._check_experts()
    classifier.check_num_classes(self.num_classes)

  def _check_experts(self):
    if self.num_experts < 0:
      raise ValueError(f"model.num_experts={self.num_experts} must be 0 (dense) or positive")
    if not self.num_experts:
      return
    if not 1 <= self.experts_per_token <= self.num_experts:
      raise ValueError(f"model.experts_per_token={self.experts_per_token} must be between 1 "
                       f"and model.num_experts={self.num_experts}")
    if self.moe_every <= 0 or self.n_layers % self.moe_every:
      raise ValueError(f"model.moe_every={self.moe_every} must divide model.n_layers="
                       f"{self.n_layers} (every moe_every-th layer is routed)")
    for name in ("capacity_factor", "shared_experts", "router_aux_loss", "router_z_loss"):
      if getattr(self, name) < 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must not be negative")
    if self.expert_d_ff is not None and self.expert_d_ff <= 0:
      raise ValueError(f"model.expert_d_ff={self.expert_d_ff} must be positive")

  @property
  def expert_dim(self) -> int:
    return self.ff_dim if self.expert_d_ff is None else self.expert_d_ff

  @property
  def moe_layers(self) -> int:
    """Layers whose MLP is routed: every moe_every-th one (the last of each group)."""
    return self.n_layers // self.moe_every if self.num_experts else 0


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


class Block(nn.Module):
  """Pre-norm residual block: x + Attn(Norm(x)), then x + Mlp(Norm(x))."""

  config: TransformerConfig
  deterministic: bool
  routed: bool = False  # the MLP is a mixture of experts
  cache_len: int = 0  # > 0: decoding, with a key/value cache of this many slots

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               segment_ids_BL: jax.Array | None):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    # GPT-2: residual output projections start smaller, by 1/sqrt(2 * n_layers).
    hidden_std = mup.hidden_init_std(cfg, cfg.init_std)  # = init_std under SP
    out_init = _normal(hidden_std / (2 * cfg.n_layers) ** 0.5)

    def norm(name):
      return norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=dtype,
                             param_dtype=param_dtype, name=name)

    h_BLD = attention_lib.Attention(
        n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, d_head=cfg.head_dim,
        use_bias=cfg.use_bias, use_rope=cfg.positions == "rope", rope_theta=cfg.rope_theta,
        implementation=cfg.attention, scale=mup.attention_scale(cfg),
        kernel_init=_normal(hidden_std), out_kernel_init=out_init, dtype=dtype,
        param_dtype=param_dtype, cache_len=self.cache_len, **attention_lib.stabilizers(cfg),
        name="attention")(norm("attention_norm")(x_BLD), positions_BL, segment_ids_BL)
    x_BLD = x_BLD + nn.Dropout(cfg.dropout, deterministic=self.deterministic)(h_BLD)
    if self.routed:
      mlp = moe.MoeMlp(
          num_experts=cfg.num_experts, experts_per_token=cfg.experts_per_token,
          d_ff=cfg.expert_dim, activation=cfg.activation, use_bias=cfg.use_bias,
          capacity_factor=cfg.capacity_factor, shared_experts=cfg.shared_experts,
          router_aux_loss=cfg.router_aux_loss, router_z_loss=cfg.router_z_loss,
          kernel_init=_normal(hidden_std), out_kernel_init=out_init,
          router_init=_normal(hidden_std), dtype=dtype, param_dtype=param_dtype, name="moe")
    else:
      mlp = mlp_lib.Mlp(
          d_ff=cfg.ff_dim, activation=cfg.activation, use_bias=cfg.use_bias,
          kernel_init=_normal(hidden_std), out_kernel_init=out_init, dtype=dtype,
          param_dtype=param_dtype, name="mlp")
    h_BLD = mlp(norm("mlp_norm")(x_BLD))
    x_BLD = x_BLD + nn.Dropout(cfg.dropout, deterministic=self.deterministic)(h_BLD)
    self.sow("intermediates", "block_output", x_BLD)
    return logical.constrain(x_BLD, ("batch", "length", "embed")), None


class BlockGroup(nn.Module):
  """moe_every consecutive blocks, the last one routed: the unit scanned when only every
  moe_every-th layer is a mixture of experts."""

  config: TransformerConfig
  deterministic: bool
  cache_len: int = 0

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL):
    cfg = self.config
    for i in range(cfg.moe_every):
      routed = i == cfg.moe_every - 1
      x_BLD, _ = Block(cfg, self.deterministic, routed=routed, cache_len=self.cache_len,
                       name="routed" if routed else f"dense_{i}")(x_BLD, positions_BL,
                                                                  segment_ids_BL)
    return x_BLD, None


class Decoder(nn.Module):
  """tokens_BL (int) -> logits_BLV (float32, V = padded_vocab; padded columns masked)."""

  config: TransformerConfig
  cache_len: int = 0  # > 0: decoding (pass positions_BL; see models/generation.py)

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, train: bool = False,
               key_mask_BL: jax.Array | None = None) -> jax.Array:
    """``segment_ids_BL`` (packed documents) keeps attention within equal ids; pass
    ``positions_BL`` restarting at 0 in each document to match. With ``num_classes``,
    returns logits_BK of the last real token (``key_mask_BL``: 1 at real tokens, padding at
    the end; causal attention keeps padding out of the earlier states)."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    embed = nn.Embed(
        cfg.padded_vocab, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(_normal(cfg.init_std), ("vocab", "embed")),
        name="embed")
    x_BLD = vocab.lookup(embed.embedding, tokens_BL, "vocab", dtype)
    if cfg.positions == "learned":
      position_embed = nn.Embed(
          cfg.max_len, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
          embedding_init=nn.with_logical_partitioning(_normal(cfg.init_std), ("length", "embed")),
          name="position_embed")
      x_BLD = x_BLD + vocab.lookup(position_embed.embedding, positions_BL, "length", dtype)
    self.sow("intermediates", "embedding", x_BLD)
    x_BLD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BLD)
    x_BLD = logical.constrain(x_BLD, ("batch", "length", "embed"))

    # Dense: n_layers Blocks. Every layer routed: n_layers routed Blocks. Every moe_every-th:
    # n_layers / moe_every groups of moe_every Blocks.
    block, length, extra = Block, cfg.n_layers, {}
    if cfg.num_experts and cfg.moe_every == 1:
      extra = {"routed": True}
    elif cfg.num_experts:
      block, length = BlockGroup, cfg.n_layers // cfg.moe_every
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    per_layer = {"params": 0, "intermediates": 0, families.AUX_LOSS: 0, families.AUX_METRICS: 0,
                 "cache": 0}
    stack = nn.scan(
        block, variable_axes=per_layer, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast), length=length,
        unroll=min(cfg.scan_unroll, length), metadata_params={nn.PARTITION_NAME: "layers"})
    x_BLD, _ = stack(cfg, deterministic=not train, cache_len=self.cache_len, name="layers",
                     **extra)(
        x_BLD, positions_BL, segment_ids_BL)

    x_BLD = norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=dtype,
                            param_dtype=param_dtype, name="final_norm")(x_BLD)
    if cfg.num_classes is not None:
      return classifier.SequenceClassifier(
          cfg.num_classes, "last", cfg.init_std, cfg.dtype, cfg.param_dtype,
          name=classifier.NAME)(x_BLD, key_mask_BL)
    # The readout accumulates and returns float32 even from bf16 inputs, so the loss that
    # scaling fits are made on is never rounded to bf16.
    if cfg.tie_embeddings:
      logits_BLV = jnp.einsum("bld,vd->blv", x_BLD.astype(dtype), embed.embedding.astype(dtype),
                              preferred_element_type=jnp.float32)
    else:
      readout_init = (nn.initializers.zeros if mup.zero_readout(cfg)
                      else _normal(cfg.init_std))
      logits_BLV = nn.Dense(
          cfg.padded_vocab, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
          kernel_init=nn.with_logical_partitioning(readout_init, ("embed", "vocab")),
          name="head")(x_BLD)
    if cfg.parametrization == "mup":
      logits_BLV = logits_BLV * mup.output_multiplier(cfg)
    if cfg.final_logit_softcap:
      logits_BLV = cfg.final_logit_softcap * jnp.tanh(logits_BLV / cfg.final_logit_softcap)
    logits_BLV = vocab.mask_padding(logits_BLV, cfg.vocab_size)
    logits_BLV = logical.constrain(logits_BLV, ("batch", "length", "vocab"))
    self.sow("intermediates", "logits", logits_BLV)
    return logits_BLV
