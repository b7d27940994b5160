"""Multi-head / grouped-query attention: causal or bidirectional self-attention, or
cross-attention to another sequence, with an optional additive bias on the logits (T5's
relative positions) and a key mask (padding).

The score computation goes through ``jax.nn.dot_product_attention`` so the implementation is a
config choice: ``xla`` (any backend) or ``cudnn`` (fused flash attention on NVIDIA GPUs).

Two stabilizers of large-model training (Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities"; Gemma 2): ``qk_norm`` normalizes each head's
queries and keys (a norm over the head dimension with its own scale, before RoPE), which bounds
the attention logits whose growth makes training diverge at high learning rates;
``logit_softcap`` c > 0 maps the scaled logits s to c tanh(s / c) (computed here, outside the
fused kernel, which has no soft-capping).

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


def stabilizers(cfg) -> dict:
  """The Attention fields a family config's stabilizer options set (``qk_norm``: a bool,
  normalizing with the family's own norm kind; ``attn_logit_softcap``)."""
  return {"qk_norm": cfg.norm if cfg.qk_norm else None, "norm_eps": cfg.norm_eps,
          "logit_softcap": float(cfg.attn_logit_softcap)}


def stabilizer_params(cfg) -> int:
  """Parameters QK-norm adds to one attention module: a scale over the head dimension for the
  queries and one for the keys."""
  return 2 * cfg.head_dim if cfg.qk_norm else 0


def check_stabilizers(cfg) -> None:
  if cfg.attn_logit_softcap < 0:
    raise ValueError(f"model.attn_logit_softcap={cfg.attn_logit_softcap} must be >= 0 "
                     "(0 turns soft-capping off)")
  if cfg.attn_logit_softcap and cfg.attention == "cudnn":
    raise ValueError("model.attn_logit_softcap needs model.attention=xla: the cuDNN kernel "
                     "has no soft-capping")


def capped_attention(q_BLHK, k_BSGK, v_BSGK, *, bias_BHLS, mask_B1LS, causal: bool,
                     scale: float, cap: float):
  """Softmax attention with soft-capped logits, c tanh(s / c), written out (grouped-query:
  query heads H in G groups of R). Masked logits are set below every real one after capping."""
  B, L, H, K = q_BLHK.shape
  S, G = k_BSGK.shape[1], k_BSGK.shape[2]
  q_BLGRK = q_BLHK.reshape(B, L, G, H // G, K)
  logits_BGRLS = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BSGK).astype(jnp.float32) * scale
  if bias_BHLS is not None:
    logits_BGRLS = logits_BGRLS + jnp.broadcast_to(
        bias_BHLS, (B, H, L, S)).reshape(B, G, H // G, L, S).astype(jnp.float32)
  logits_BGRLS = cap * jnp.tanh(logits_BGRLS / cap)
  keep = jnp.ones((1, 1, 1, L, S), bool)
  if causal:
    keep = keep & (jnp.arange(L)[:, None] >= jnp.arange(S)[None, :])
  if mask_B1LS is not None:
    keep = keep & mask_B1LS[:, :, None]
  logits_BGRLS = jnp.where(keep, logits_BGRLS, jnp.finfo(jnp.float32).min)
  probs_BGRLS = jax.nn.softmax(logits_BGRLS, axis=-1).astype(v_BSGK.dtype)
  out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs_BGRLS, v_BSGK)
  return out_BLGRK.reshape(B, L, H, K)


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
  qk_norm: str | None = None  # a norm kind (models/norms.py): normalize queries and keys
  norm_eps: float = 1e-5
  logit_softcap: float = 0.0  # > 0: logits -> c tanh(logits / c)

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

  def _head_norm(self, name):
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("kv",))
    if self.qk_norm == "layernorm":
      return nn.LayerNorm(epsilon=self.norm_eps, use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, scale_init=scale_init,
                          use_fast_variance=False, name=name)
    return nn.RMSNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                      scale_init=scale_init, name=name)

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
    if self.logit_softcap:
      scores_BHLL = self.logit_softcap * jnp.tanh(scores_BHLL / self.logit_softcap)
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
    if self.qk_norm is not None:  # one scale over the head dimension, shared by the heads
      q_BLHK = self._head_norm("query_norm")(q_BLHK)
      k_BLGK = self._head_norm("key_norm")(k_BLGK)
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
    if self.logit_softcap:
      if self.implementation != "xla":
        raise ValueError("model.attn_logit_softcap needs model.attention=xla: the cuDNN "
                         "kernel has no soft-capping")
      out_BLHK = capped_attention(q_BLHK, k_BLGK, v_BLGK, bias_BHLS=bias_BHLS,
                                  mask_B1LS=mask_B1LS, causal=causal, scale=self.scale,
                                  cap=self.logit_softcap)
    else:
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
