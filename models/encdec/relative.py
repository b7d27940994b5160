"""T5's bucketed relative position bias (Raffel et al. 2020, sec. 2.1; Mesh TensorFlow's layout).

Each attention logit q_i . k_j gets a learned scalar per head, looked up by the bucket of the
distance j - i. Half of the buckets hold distances exactly (0 .. max_exact - 1), the other half
grow logarithmically up to ``max_distance``; every distance beyond shares the last bucket. A
bidirectional stack (the encoder) splits the buckets between keys before and after the query;
a unidirectional one (the causal decoder) buckets only keys at or before it.

One table of shape (buckets, heads) per stack, shared by every layer of that stack, as T5 does
(its first layer owns the table and passes the bias on). The buckets depend on the distance
alone, so they are computed for the Q + S - 1 distances once, on the host (a constant of the
compiled step), in float32 as Mesh TensorFlow and Hugging Face compute them: equal to Hugging
Face's ``T5Attention._relative_position_bucket`` at every distance below 5,000 for 8 to 128
buckets, both directions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from isoflop.models import logical


def buckets(relative_R: np.ndarray, *, bidirectional: bool, num_buckets: int,
            max_distance: int) -> np.ndarray:
  """Bucket ids (int32) of relative positions key - query."""
  relative_R = np.asarray(relative_R, np.int64)
  bucket_R = np.zeros(relative_R.shape, np.int64)
  if bidirectional:
    num_buckets //= 2
    bucket_R += (relative_R > 0) * num_buckets  # keys after the query: the upper half
    distance_R = np.abs(relative_R)
  else:
    distance_R = np.maximum(-relative_R, 0)  # keys after the query are masked anyway
  max_exact = num_buckets // 2
  scaled_R = (np.log(np.maximum(distance_R, 1).astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  large_R = np.minimum(max_exact + scaled_R.astype(np.int64), num_buckets - 1)
  return (bucket_R + np.where(distance_R < max_exact, distance_R, large_R)).astype(np.int32)


def bias(table_NH: jax.Array, query_len: int, key_len: int, *, bidirectional: bool,
         max_distance: int) -> jax.Array:
  """The bias_1HQS added to the logits of ``query_len`` queries over ``key_len`` keys, from a
  (buckets N, heads H) table."""
  num_buckets = table_NH.shape[0]
  # Relative positions -(Q - 1) .. S - 1, indexed by key - query + Q - 1.
  relative_R = np.arange(-(query_len - 1), key_len)
  bucket_R = buckets(relative_R, bidirectional=bidirectional, num_buckets=num_buckets,
                     max_distance=max_distance)
  bias_RH = jnp.take(table_NH, jnp.asarray(bucket_R), axis=0)
  index_QS = (jnp.arange(key_len)[None, :] - jnp.arange(query_len)[:, None]) + query_len - 1
  bias_HQS = jnp.moveaxis(jnp.take(bias_RH, index_QS, axis=0), -1, 0)
  return logical.constrain(bias_HQS[None], (None, "heads", "length", None))


def bias_at(table_NH: jax.Array, query_positions_Q: jax.Array, key_len: int, *,
            bidirectional: bool, max_distance: int) -> jax.Array:
  """The rows of ``bias`` for queries at ``query_positions_Q`` (traced, each below key_len) over
  keys at 0 .. key_len - 1: a decoding step's bias_1HQS over the whole cache."""
  num_buckets = table_NH.shape[0]
  relative_R = np.arange(-(key_len - 1), key_len)
  bucket_R = buckets(relative_R, bidirectional=bidirectional, num_buckets=num_buckets,
                     max_distance=max_distance)
  bias_RH = jnp.take(table_NH, jnp.asarray(bucket_R), axis=0)
  index_QS = jnp.arange(key_len)[None, :] - query_positions_Q[:, None] + key_len - 1
  bias_HQS = jnp.moveaxis(jnp.take(bias_RH, index_QS, axis=0), -1, 0)
  return logical.constrain(bias_HQS[None], (None, "heads", "length", None))
