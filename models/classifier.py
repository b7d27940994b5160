"""A sequence classification head for the language-model families (``model.num_classes``).

The head reads the body's final hidden states x_BLD (after the final norm) and pools them into
one vector per sequence, then a fresh dense layer gives ``logits_BK`` (float32). Its parameters
are ``classifier/kernel`` (embed, vocab: K classes on the readout's axis, so the sharding rules
and the readout role apply) and ``classifier/bias``: names no language-model run has, so
``init_from`` a causal- or masked-LM run loads the body and leaves the head freshly initialized.

Pooling (``key_mask_BL``: 1 at real tokens, padding at the end of a row):
  last   the last real token's state: what a causal decoder has seen the whole passage by
  mean   the mean over real tokens: the encoder's (our passages carry no [CLS] token)
  first  the first token's state (BERT's [CLS] position)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical

POOLS = ("last", "mean", "first")
NAME = "classifier"  # the head's parameter scope


def check_num_classes(num_classes: int | None) -> None:
  if num_classes is not None and num_classes < 2:
    raise ValueError(f"model.num_classes={num_classes} must be at least 2 (or None: the "
                     "language-model head)")


def pooling_weights(pool: str, length: int, key_mask_BL: jax.Array | None,
                    batch: int) -> jax.Array:
  """float32[B, L] weights summing to 1 per row: which states the pooled vector averages."""
  if key_mask_BL is None:
    mask_BL = jnp.ones((batch, length), jnp.float32)
  else:
    mask_BL = key_mask_BL.astype(jnp.float32)
  if pool == "mean":
    return mask_BL / jnp.maximum(mask_BL.sum(axis=1, keepdims=True), 1.0)
  if pool == "first":
    return jax.nn.one_hot(jnp.zeros((batch,), jnp.int32), length, dtype=jnp.float32)
  last_B = jnp.maximum(mask_BL.sum(axis=1).astype(jnp.int32) - 1, 0)
  return jax.nn.one_hot(last_B, length, dtype=jnp.float32)


class SequenceClassifier(nn.Module):
  """x_BLD (final hidden states) -> logits_BK (float32)."""

  num_classes: int
  pool: str
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BLD: jax.Array, key_mask_BL: jax.Array | None = None) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f"classifier pool {self.pool!r} is unknown; choose one of {POOLS}")
    batch, length = x_BLD.shape[:2]
    weights_BL = pooling_weights(self.pool, length, key_mask_BL, batch)
    # A weighted sum rather than a gather: the batch stays sharded as it is.
    x_BD = jnp.einsum("bl,bld->bd", weights_BL, x_BLD.astype(jnp.float32))
    x_BD = logical.constrain(x_BD, ("batch", "embed"))
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    kernel_DK = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ("embed", "vocab")),
        (x_BLD.shape[-1], self.num_classes), param_dtype)
    bias_K = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                        (self.num_classes,), param_dtype)
    # float32 logits from bf16 activations, as the language models' readouts.
    logits_BK = jnp.einsum("bd,dk->bk", x_BD.astype(dtype), kernel_DK.astype(dtype),
                           preferred_element_type=jnp.float32) + bias_K.astype(jnp.float32)
    logits_BK = logical.constrain(logits_BK, ("batch", "vocab"))
    self.sow("intermediates", "logits", logits_BK)
    return logits_BK


def head_params(d_model: int, num_classes: int) -> int:
  """Parameters of the head: the D x K kernel and the K biases."""
  return d_model * num_classes + num_classes


def classifier_counts(counts: dict[str, int], d_model: int, num_classes: int
                      ) -> dict[str, int]:
  """A language model's parameter counts with its LM head (``head``) replaced by the
  classifier: what a model built with ``num_classes`` holds."""
  head = head_params(d_model, num_classes)
  delta = head - counts["head"]
  out = dict(counts, head=head, total=counts["total"] + delta)
  if "active" in out:
    out["active"] = counts["active"] + delta
  return out


def classifier_n(counts: dict[str, int], d_model: int, num_classes: int) -> dict[str, int]:
  """N under each convention of a classifier (``classifier_counts``'s counts): kaplan the
  non-embedding parameters, chinchilla all, palm the matmul ones (the token table is a lookup
  only, the head's D x K kernel a matmul)."""
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": counts["non_embedding"] + d_model * num_classes}


def classifier_flops(flops: dict[str, float], n_lm: dict[str, int], n_classifier: dict[str, int],
                     lm_readout_forward: float, d_model: int, num_classes: int,
                     seq_len: int) -> dict[str, float]:
  """Training FLOPs per token of the classifier from the language model's: palm follows its
  N; chinchilla drops the LM readout's forward FLOPs per token (``lm_readout_forward``: 2 D V,
  plus a transform) and adds the head's, 2 D K once per sequence; kaplan's count has no
  readout term and is unchanged."""
  out = dict(flops)
  out["palm"] = flops["palm"] + 6.0 * (n_classifier["palm"] - n_lm["palm"])
  out["chinchilla"] = flops["chinchilla"] + 3.0 * (
      2.0 * d_model * num_classes / seq_len - lm_readout_forward)
  return out
