"""Token tables shared by the language-model families: the lookup and the padded readout."""

import jax
import jax.numpy as jnp

from isoflop.models import logical


def padded_size(vocab_size: int, multiple: int) -> int:
  """vocab_size rounded up to a multiple: rows of the token table and columns of the readout,
  so tensor parallelism can split them and matmuls stay aligned."""
  return -(-vocab_size // multiple) * multiple


def lookup(table_TD: jax.Array, ids_BL: jax.Array, rows: str, dtype) -> jax.Array:
  """Rows of an embedding table, gathered from a table whose embed dimension is first
  all-gathered (as FSDP gathers every parameter before use): gathering straight from an
  embed-sharded table makes XLA rematerialize the whole result to reshard it by batch."""
  table_TD = logical.constrain(table_TD, (rows, None))
  return jnp.take(table_TD.astype(dtype), ids_BL, axis=0)


def mask_padding(logits_BLV: jax.Array, vocab_size: int) -> jax.Array:
  """Padded columns (beyond vocab_size) get the lowest logit: probability exactly zero."""
  if logits_BLV.shape[-1] == vocab_size:
    return logits_BLV
  real_V = jnp.arange(logits_BLV.shape[-1]) < vocab_size
  return jnp.where(real_V, logits_BLV, jnp.finfo(logits_BLV.dtype).min)
