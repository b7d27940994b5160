"""Causal multi-head / grouped-query self-attention.

The score computation goes through ``jax.nn.dot_product_attention`` so the implementation is a
config choice: ``xla`` (any backend) or ``cudnn`` (fused flash attention on NVIDIA GPUs).
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical
from isoflop.models.rope import apply_rope

IMPLEMENTATIONS = ("xla", "cudnn")


class Attention(nn.Module):
  """x_BLD -> x_BLD. Query heads H share K/V heads in groups of H // n_kv_heads (GQA)."""

  n_heads: int
  n_kv_heads: int
  d_head: int
  use_bias: bool
  use_rope: bool
  rope_theta: float
  implementation: str
  scale: float  # multiplies q.k: 1/sqrt(d_head) (standard) or 1/d_head (muP)
  kernel_init: Callable
  out_kernel_init: Callable
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  def _param(self, name, init, shape, names):
    return self.param(name, nn.with_logical_partitioning(init, names), shape,
                      self.param_dtype).astype(self.dtype)

  def _project(self, x_BLD, n_heads, name):
    """x_BLD -> x_BLNK with N = n_heads (kernel D x N x K, written out so each axis keeps its
    logical name; DenseGeneral initializes a flattened kernel)."""
    d_model = x_BLD.shape[-1]
    kernel_DNK = self._param(f"{name}_kernel", self.kernel_init, (d_model, n_heads, self.d_head),
                             ("embed", "heads", "kv"))
    y_BLNK = jnp.einsum("bld,dnk->blnk", x_BLD.astype(self.dtype), kernel_DNK)
    if self.use_bias:
      y_BLNK = y_BLNK + self._param(f"{name}_bias", nn.initializers.zeros,
                                    (n_heads, self.d_head), ("heads", "kv"))
    return y_BLNK

  def _sow_logits(self, q_BLHK, k_BLGK):
    """The scaled q.k scores, for the coordinate check (the fused kernel never shows them)."""
    k_BLHK = jnp.repeat(k_BLGK, self.n_heads // self.n_kv_heads, axis=2)
    scores_BHLL = jnp.einsum("bqhk,bshk->bhqs", q_BLHK, k_BLHK) * self.scale
    self.sow("intermediates", "attention_logits", scores_BHLL)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               segment_ids_BL: jax.Array | None = None) -> jax.Array:
    q_BLHK = self._project(x_BLD, self.n_heads, "query")
    k_BLGK = self._project(x_BLD, self.n_kv_heads, "key")
    v_BLGK = self._project(x_BLD, self.n_kv_heads, "value")
    if self.use_rope:
      q_BLHK = apply_rope(q_BLHK, positions_BL, self.rope_theta)
      k_BLGK = apply_rope(k_BLGK, positions_BL, self.rope_theta)
    names = ("batch", "length", "heads", "kv")
    q_BLHK = logical.constrain(q_BLHK, names)
    k_BLGK = logical.constrain(k_BLGK, names)
    v_BLGK = logical.constrain(v_BLGK, names)
    mask_B1LL = None
    if segment_ids_BL is not None:  # packed documents: attend only within one's own
      mask_B1LL = (segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :])[:, None]
    if self.is_mutable_collection("intermediates") and not self.is_initializing():
      self._sow_logits(q_BLHK, k_BLGK)
    out_BLHK = jax.nn.dot_product_attention(
        q_BLHK, k_BLGK, v_BLGK, mask=mask_B1LL, is_causal=True, scale=self.scale,
        implementation=self.implementation)
    out_BLHK = logical.constrain(out_BLHK, names)
    d_model = x_BLD.shape[-1]
    kernel_HKD = self._param("out_kernel", self.out_kernel_init,
                             (self.n_heads, self.d_head, d_model), ("heads", "kv", "embed"))
    y_BLD = jnp.einsum("blhk,hkd->bld", out_BLHK, kernel_HKD)
    if self.use_bias:
      y_BLD = y_BLD + self._param("out_bias", nn.initializers.zeros, (d_model,), ("embed",))
    return y_BLD
