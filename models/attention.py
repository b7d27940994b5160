"""Multi-head / grouped-query attention: causal or bidirectional self-attention, or
cross-attention to another sequence, with an optional additive bias on the logits (T5's
relative positions) and a key mask (padding).

The score computation goes through ``jax.nn.dot_product_attention`` so the implementation is a
config choice: ``xla`` (any backend) or ``cudnn`` (fused flash attention on NVIDIA GPUs).

Decoding (``cache_len > 0``, ``models/generation.py``): self-attention keeps its keys, values and
segment ids in the ``cache`` collection, ``cache_len`` slots per sequence, and each call writes
its L new positions at the next free slots and attends over every slot written so far;
cross-attention projects the source's keys and values at the first call and reads them from the
cache after.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical
from isoflop.models.rope import apply_rope

IMPLEMENTATIONS = ("xla", "cudnn")


class Attention(nn.Module):
  """x_BLD -> x_BLD. Query heads H share K/V heads in groups of H // n_kv_heads (GQA).
  ``causal=False`` lets every position see every other (an encoder)."""

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
  causal: bool = True
  cache_len: int = 0  # > 0: decode with a key/value cache of this many slots (self-attention)

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

  def _extend_cache(self, k_BLGK, v_BLGK, segment_ids_BL):
    """Writes this call's keys, values and segment ids at the cache's next L slots; returns the
    whole cache and mask_B1LS: each query sees the written slots up to its own that share its
    segment (left padding is segment 0, hidden from the prompt)."""
    B, L, G, K = k_BLGK.shape
    S = self.cache_len
    key = self.variable("cache", "key", jnp.zeros, (B, S, G, K), k_BLGK.dtype)
    value = self.variable("cache", "value", jnp.zeros, (B, S, G, K), v_BLGK.dtype)
    segments = self.variable("cache", "segment_ids", jnp.zeros, (B, S), jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((B, L), jnp.int32)
    start = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BLGK, (0, start, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BLGK, (0, start, 0, 0))
    segments.value = jax.lax.dynamic_update_slice(
        segments.value, segment_ids_BL.astype(jnp.int32), (0, start))
    index.value = start + L
    seen_LS = start + jnp.arange(L)[:, None] >= jnp.arange(S)[None, :]
    same_BLS = segment_ids_BL.astype(jnp.int32)[:, :, None] == segments.value[:, None, :]
    return key.value, value.value, (seen_LS[None] & same_BLS)[:, None]

  def _source_projected_once(self, kv_BSD):
    """Cross-attention while decoding: the source's keys and values, projected at the first
    call (the prefill, whose cache starts empty) and read from the cache at every step."""
    if self.has_variable("cache", "source_key"):
      return self.get_variable("cache", "source_key"), self.get_variable("cache", "source_value")
    k_BSGK = self._project(kv_BSD, self.n_kv_heads, "key")
    v_BSGK = self._project(kv_BSD, self.n_kv_heads, "value")
    self.put_variable("cache", "source_key", k_BSGK)
    self.put_variable("cache", "source_value", v_BSGK)
    return k_BSGK, v_BSGK

  def _sow_logits(self, q_BLHK, k_BLGK):
    """The scaled q.k scores, for the coordinate check (the fused kernel never shows them)."""
    k_BLHK = jnp.repeat(k_BLGK, self.n_heads // self.n_kv_heads, axis=2)
    scores_BHLL = jnp.einsum("bqhk,bshk->bhqs", q_BLHK, k_BLHK) * self.scale
    self.sow("intermediates", "attention_logits", scores_BHLL)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               segment_ids_BL: jax.Array | None = None, *, kv_BSD: jax.Array | None = None,
               bias_BHLS: jax.Array | None = None, key_mask_BS: jax.Array | None = None
               ) -> jax.Array:
    """``kv_BSD``: the sequence keys and values come from (cross-attention; no RoPE, no
    segments); None attends to ``x_BLD`` itself. ``bias_BHLS`` is added to the scaled logits
    (broadcast over missing leading sizes of 1); ``key_mask_BS`` (True: attend) hides padding."""
    source_BSD = x_BLD if kv_BSD is None else kv_BSD
    q_BLHK = self._project(x_BLD, self.n_heads, "query")
    if self.cache_len and kv_BSD is not None:
      k_BLGK, v_BLGK = self._source_projected_once(kv_BSD)
    else:
      k_BLGK = self._project(source_BSD, self.n_kv_heads, "key")
      v_BLGK = self._project(source_BSD, self.n_kv_heads, "value")
    if self.use_rope and kv_BSD is None:
      q_BLHK = apply_rope(q_BLHK, positions_BL, self.rope_theta)
      k_BLGK = apply_rope(k_BLGK, positions_BL, self.rope_theta)
    names = ("batch", "length", "heads", "kv")
    q_BLHK = logical.constrain(q_BLHK, names)
    k_BLGK = logical.constrain(k_BLGK, names)
    v_BLGK = logical.constrain(v_BLGK, names)
    mask_B1LS = None
    causal = self.causal and kv_BSD is None
    if self.cache_len and kv_BSD is None:  # decoding: attend over the cache (its own mask)
      k_BLGK, v_BLGK, mask_B1LS = self._extend_cache(k_BLGK, v_BLGK, segment_ids_BL)
      causal = False
    elif segment_ids_BL is not None and kv_BSD is None:  # packed documents: only one's own
      mask_B1LS = (segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :])[:, None]
    if key_mask_BS is not None:
      keys_B11S = key_mask_BS.astype(bool)[:, None, None, :]
      mask_B1LS = keys_B11S if mask_B1LS is None else mask_B1LS & keys_B11S
    if self.is_mutable_collection("intermediates") and not self.is_initializing():
      self._sow_logits(q_BLHK, k_BLGK)
    if bias_BHLS is not None:
      bias_BHLS = bias_BHLS.astype(q_BLHK.dtype).reshape((1,) * (4 - bias_BHLS.ndim)
                                                          + bias_BHLS.shape)
    out_BLHK = jax.nn.dot_product_attention(
        q_BLHK, k_BLGK, v_BLGK, bias=bias_BHLS, mask=mask_B1LS,
        is_causal=causal, scale=self.scale,
        implementation=self.implementation)
    out_BLHK = logical.constrain(out_BLHK, names)
    d_model = x_BLD.shape[-1]
    kernel_HKD = self._param("out_kernel", self.out_kernel_init,
                             (self.n_heads, self.d_head, d_model), ("heads", "kv", "embed"))
    y_BLD = jnp.einsum("blhk,hkd->bld", out_BLHK, kernel_HKD)
    if self.use_bias:
      y_BLD = y_BLD + self._param("out_bias", nn.initializers.zeros, (d_model,), ("embed",))
    return y_BLD
