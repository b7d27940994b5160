"""A Vision Transformer classifier (Dosovitskiy et al. 2021), in pure Flax Linen.

An image is cut into P x P patches, each patch is projected to the model width (one kernel of
shape (P, P, C, D), applied as a strided convolution or as a reshape and a matmul: the same
parameter, the same result), a class token is prepended (``pool="cls"``) and positions are
added; pre-norm encoder blocks (``models/attention.py`` without the causal mask,
``models/mlp.py``) follow, stacked with ``nn.scan``, then a final norm, the class token (or
the mean over the tokens, ``pool="gap"``) and a linear head giving float32 logits.

The defaults follow big_vision's and timm's ViT: LayerNorm with eps 1e-6, exact GELU, biases,
a zero-initialized head. As in timm (and so with its parameter counts), the learned position
table has a row for the class token too; the fixed 2-D sin-cos positions give the class token
none (MAE's choice).

Notebook use needs nothing else::

    from isoflop.models.vit import VitConfig, Vit
    model = Vit(VitConfig(image_size=8, channels=1, patch_size=2, num_classes=10))
    params = model.init(jax.random.key(0), image_BHWC)["params"]
    logits_BK = model.apply({"params": params}, image_BHWC)
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isoflop.models import attention as attention_lib
from isoflop.models import dims, logical, norms
from isoflop.models import mlp as mlp_lib
from isoflop.models.transformer import DTYPES, REMAT_POLICIES

POOLS = ("cls", "gap")
POSITIONS = ("learned", "sincos")
PATCH_EMBEDS = ("conv", "dense")
SINCOS_TEMPERATURE = 10_000.0
TOKENS = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class VitConfig(dims.TransformerDims):
  """Shape and behaviour of the ViT; the defaults are a toy for 8x8 grey digits.

  Only the head, MLP and grouped-query sizes of ``TransformerDims`` apply (``head_dim``,
  ``ff_dim``, ``kv_heads``); a ViT has no vocabulary, so ``padded_vocab`` is meaningless here.
  """

  num_classes: int = 10
  image_size: int = 8  # square images of image_size x image_size pixels
  channels: int = 1
  patch_size: int = 2
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: n_heads (ViTs are multi-head; kept for the shape rule)
  d_head: int | None = None  # None: d_model // n_heads
  d_ff: int | None = None  # None: 4 * d_model (every ViT's MLP ratio)
  pool: str = "cls"  # cls: a class token is read out | gap: the mean over the patch tokens
  positions: str = "learned"  # learned: a table | sincos: fixed 2-D sin-cos, no parameters
  patch_embed: str = "conv"  # conv | dense: the same kernel, as a convolution or a matmul
  norm: str = "layernorm"
  norm_eps: float = 1e-6
  activation: str = "gelu_exact"
  use_bias: bool = True  # the blocks' and norms' biases (patch embedding and head keep theirs)
  dropout: float = 0.0
  attention: str = "xla"
  # Stabilizers (models/attention.py): QK-norm; attention logits soft-capped at c (0: off)
  qk_norm: bool = False
  attn_logit_softcap: float = 0.0
  remat: str = "none"
  scan_unroll: int = 1
  init_std: float = 0.02  # blocks, position table; the patch kernel is LeCun normal
  head_zero_init: bool = True  # big_vision's: every class starts at logit 0
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    attention_lib.check_stabilizers(self)
    for name in ("num_classes", "image_size", "channels", "patch_size", "d_model", "n_layers",
                 "n_heads", "scan_unroll"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.image_size % self.patch_size:
      raise ValueError(f"model.image_size={self.image_size} is not divisible by "
                       f"model.patch_size={self.patch_size}; pick a patch size that divides it")
    if self.d_head is None and self.d_model % self.n_heads:
      raise ValueError(f"model.n_heads={self.n_heads} does not divide model.d_model="
                       f"{self.d_model}; pick a divisor of d_model or set model.d_head")
    if self.n_heads % self.kv_heads:
      raise ValueError(f"model.n_kv_heads={self.kv_heads} does not divide model.n_heads="
                       f"{self.n_heads}; use a divisor of n_heads")
    choices = {"pool": POOLS, "positions": POSITIONS, "patch_embed": PATCH_EMBEDS,
               "norm": norms.NORMS, "remat": tuple(REMAT_POLICIES),
               "attention": attention_lib.IMPLEMENTATIONS, "dtype": DTYPES,
               "param_dtype": DTYPES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"model.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
    mlp_lib.check_activation(self.activation)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
    if self.positions == "sincos" and self.d_model % 4:
      raise ValueError(f"model.positions='sincos' needs d_model divisible by 4 (sin and cos "
                       f"of rows and columns), got {self.d_model}; change d_model or use learned")

  @property
  def grid_size(self) -> int:
    """Patches along each side."""
    return self.image_size // self.patch_size

  @property
  def n_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def n_tokens(self) -> int:
    """The sequence the blocks see: the patches and, with ``pool="cls"``, the class token."""
    return self.n_patches + (1 if self.pool == "cls" else 0)


def sincos_2d(grid: int, width: int) -> np.ndarray:
  """Fixed positions of a grid x grid patch layout, float32[grid * grid, width], row-major:
  a quarter of the width each for sin and cos of the column and of the row, at frequencies
  temperature^(-i / (width / 4)) (the 1-D Transformer spacing, per axis)."""
  quarter = width // 4
  omega_Q = SINCOS_TEMPERATURE ** (-np.arange(quarter) / quarter)
  rows_N, cols_N = (a.reshape(-1) for a in np.mgrid[:grid, :grid])
  cols_NQ, rows_NQ = cols_N[:, None] * omega_Q, rows_N[:, None] * omega_Q
  return np.concatenate([np.sin(cols_NQ), np.cos(cols_NQ), np.sin(rows_NQ), np.cos(rows_NQ)],
                        axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
  """image_BHWC -> x_BND, N = (H / P) * (W / P) patches in row-major order.

  ``method="conv"`` runs a stride-P convolution; ``"dense"`` cuts the image into patches and
  multiplies each, flattened as (P, P, C), by the same kernel: equal results, two lowerings."""

  patch_size: int
  d_model: int
  method: str
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, image_BHWC: jax.Array) -> jax.Array:
    p = self.patch_size
    b, h, w, c = image_BHWC.shape
    # LeCun normal over fan-in P * P * C: Flax's Conv default, which big_vision keeps.
    kernel_PPCD = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("height", "width", "channels_in", "embed")),
        (p, p, c, self.d_model), self.param_dtype).astype(self.dtype)
    bias_D = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                        (self.d_model,), self.param_dtype).astype(self.dtype)
    image_BHWC = image_BHWC.astype(self.dtype)
    if self.method == "conv":
      x_BhwD = jax.lax.conv_general_dilated(
          image_BHWC, kernel_PPCD, window_strides=(p, p), padding="VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      patches_BhPwPC = image_BHWC.reshape(b, h // p, p, w // p, p, c)
      x_BhwD = jnp.einsum("bipjqc,pqcd->bijd", patches_BhPwPC, kernel_PPCD)
    return (x_BhwD + bias_D).reshape(b, (h // p) * (w // p), self.d_model)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _norm(cfg: VitConfig, name: str) -> nn.Module:
  return norms.make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                         dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                         name=name)


class VitBlock(nn.Module):
  """Pre-norm encoder block: x + Attn(Norm(x)), then x + Mlp(Norm(x)); every token sees all."""

  config: VitConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BND: jax.Array):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    # One std for every block matrix, output projections included (timm's ViT init).
    init = _normal(cfg.init_std)
    attention = attention_lib.Attention(
        n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, d_head=cfg.head_dim,
        use_bias=cfg.use_bias, use_rope=False, rope_theta=0.0, implementation=cfg.attention,
        scale=cfg.head_dim ** -0.5, kernel_init=init, out_kernel_init=init, dtype=dtype,
        param_dtype=param_dtype, causal=False, **attention_lib.stabilizers(cfg),
        name="attention")
    mlp = mlp_lib.Mlp(d_ff=cfg.ff_dim, activation=cfg.activation, use_bias=cfg.use_bias,
                      kernel_init=init, out_kernel_init=init, dtype=dtype,
                      param_dtype=param_dtype, name="mlp")
    dropout = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    x_BND = x_BND + dropout(attention(_norm(cfg, "attention_norm")(x_BND), None))
    x_BND = logical.constrain(x_BND, TOKENS)
    x_BND = x_BND + dropout(mlp(_norm(cfg, "mlp_norm")(x_BND)))
    self.sow("intermediates", "block_output", x_BND)
    return logical.constrain(x_BND, TOKENS), None


class Vit(nn.Module):
  """image_BHWC (float32, normalized by the pipeline) -> logits_BK (float32, K classes)."""

  config: VitConfig

  @nn.compact
  def __call__(self, image_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if tuple(image_BHWC.shape[1:]) != expected:
      raise ValueError(f"images of shape {tuple(image_BHWC.shape[1:])} do not fit the model's "
                       f"(image_size, image_size, channels) = {expected}; set model.image_size "
                       "and model.channels to the data's")
    image_BHWC = logical.constrain(image_BHWC, ("batch", "height", "width", "channels"))
    x_BND = PatchEmbed(cfg.patch_size, cfg.d_model, cfg.patch_embed, dtype, param_dtype,
                       name="patch_embed")(image_BHWC)
    x_BND = logical.constrain(x_BND, TOKENS)
    batch = x_BND.shape[0]
    if cfg.positions == "sincos":  # the patches only: the class token has no place
      x_BND = x_BND + jnp.asarray(sincos_2d(cfg.grid_size, cfg.d_model), dtype)
    if cfg.pool == "cls":
      cls_D = self.param("cls_token", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), (cfg.d_model,), param_dtype)
      cls_B1D = jnp.broadcast_to(cls_D.astype(dtype), (batch, 1, cfg.d_model))
      x_BND = jnp.concatenate([cls_B1D, x_BND], axis=1)
    if cfg.positions == "learned":  # one row per token, the class token's included (timm)
      table_ND = self.param("position_embed", nn.with_logical_partitioning(
          _normal(cfg.init_std), ("length", "embed")), (cfg.n_tokens, cfg.d_model), param_dtype)
      x_BND = x_BND + table_ND.astype(dtype)
    self.sow("intermediates", "embedding", x_BND)
    x_BND = nn.Dropout(cfg.dropout, deterministic=not train)(x_BND)
    x_BND = logical.constrain(x_BND, TOKENS)

    block = VitBlock
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    stack = nn.scan(
        block, variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True}, length=cfg.n_layers,
        unroll=min(cfg.scan_unroll, cfg.n_layers),
        metadata_params={nn.PARTITION_NAME: "layers"})
    x_BND, _ = stack(cfg, deterministic=not train, name="layers")(x_BND)
    x_BND = _norm(cfg, "final_norm")(x_BND)

    x_BD = x_BND[:, 0] if cfg.pool == "cls" else jnp.mean(x_BND, axis=1)
    x_BD = logical.constrain(x_BD, ("batch", "embed"))
    head_init = nn.initializers.zeros if cfg.head_zero_init else _normal(cfg.init_std)
    # float32 logits from bf16 activations, as the language models' readouts.
    logits_BK = nn.Dense(
        cfg.num_classes, dtype=dtype, param_dtype=param_dtype,
        dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
        kernel_init=nn.with_logical_partitioning(head_init, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
        name="head")(x_BD).astype(jnp.float32)
    logits_BK = logical.constrain(logits_BK, ("batch", "vocab"))
    self.sow("intermediates", "logits", logits_BK)
    return logits_BK
