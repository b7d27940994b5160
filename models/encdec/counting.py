"""Exact parameter counts and training FLOPs per token of the encoder-decoder.

With D the width, H heads of size Q (d_attn = H Q), F the MLP width (M = 3 matrices gated,
2 plain), V the vocabulary, n_e / n_d encoder / decoder layers, N buckets of relative bias:

  attention      4 D H Q  [+ 3 H Q + D with biases]
  mlp            M D F    [+ (M - 1) F + D with biases]
  encoder layer  attention + mlp + 2 norms
  decoder layer  2 attention (self, cross) + mlp + 3 norms
Parameter groups (they partition the model's parameters exactly):
  embedding      the shared token table V D (encoder input, decoder input, tied readout)
  encoder        n_e encoder layers + its relative bias table (N H) + its final norm
  decoder        n_d decoder layers + its relative bias table (N H) + its final norm
  head           the untied readout D V; zero when tied
  non_embedding  encoder + decoder;  total = embedding + non_embedding + head = active

N by convention, as for the decoder family: kaplan = non_embedding, chinchilla = total,
palm = non_embedding + D V (the readout's matmul, tied or not).

Training FLOPs (forward + backward = 3 x forward) of one example of S encoder and T decoder
tokens, divided by its S + T tokens (what ``units`` counts; ``target_len=None``: T = S).
Parameters act on the tokens that pass through them: the encoder's on S, the decoder's on T,
except the cross-attention key and value projections (N_kv = n_d (2 D H Q [+ 2 H Q])), which
act on the S encoder outputs. With N_e, N_d the encoder and decoder groups and
  A = n_e S S + n_d T T + n_d T S      (query-key pairs: encoder self, decoder self, cross)
  kaplan      6 [N_e S + (N_d - N_kv) T + N_kv S] + 6 H Q A
              (Kaplan eq. 2.2, 6N + 6 n_layer n_ctx d_attn per token, summed over the streams)
  palm        6 [N_e S + (N_d - N_kv) T + N_kv S + D V T] + 12 H Q A      (Chowdhery App. B)
  chinchilla  3 x [2 V D (S + T)  (both embeddings as one-hot matmuls)
                   + n_e S (8 D H Q + 4 S H Q + 3 H S + 2 M D F)
                   + n_d T (8 D H Q + 4 T H Q + 3 H T          (self-attention)
                            + 4 D H Q + 4 S H Q + 3 H S        (cross: query, output, scores)
                            + 2 M D F)
                   + n_d S 4 D H Q  (cross keys and values)  + 2 D V T (readout)]
              (Hoffmann App. F; relative bias lookups, norms and biases left out, O(D))
All count attention over full squares and rectangles, as the papers do, and the model's
vocabulary V, not the padded one (``param_counts(cfg, padded=True)`` gives the allocation).
"""

from isoflop.models import attention as attention_lib
from isoflop.models import mlp as mlp_lib
from isoflop.models import norms
from isoflop.models.encdec.model import EncDecConfig


def _attention(cfg: EncDecConfig) -> int:
  d, hq = cfg.d_model, cfg.n_heads * cfg.head_dim
  return (4 * d * hq + (3 * hq + d if cfg.use_bias else 0)
          + attention_lib.stabilizer_params(cfg))


def _mlp(cfg: EncDecConfig) -> int:
  n_in = 2 if mlp_lib.is_gated(cfg.activation) else 1
  d, f = cfg.d_model, cfg.ff_dim
  return (n_in + 1) * d * f + (n_in * f + d if cfg.use_bias else 0)


def _cross_key_value(cfg: EncDecConfig) -> int:
  """Parameters of the cross-attention key and value projections of every decoder layer."""
  hq = cfg.n_heads * cfg.head_dim
  return cfg.n_decoder_layers * (2 * cfg.d_model * hq + (2 * hq if cfg.use_bias else 0))


def param_counts(cfg: EncDecConfig, *, padded: bool = False) -> dict[str, int]:
  """Exact counts by group. ``padded=True`` counts the allocated token table and head
  (``vocab_pad_multiple``), equal to the leaves of ``EncoderDecoder(cfg).init(...)``."""
  vocab = cfg.padded_vocab if padded else cfg.vocab_size
  norm = norms.norm_param_count(cfg.norm, cfg.d_model, cfg.use_bias)
  table = cfg.relative_buckets * cfg.n_heads if cfg.positions == "relative" else 0
  encoder_layer = _attention(cfg) + _mlp(cfg) + 2 * norm
  decoder_layer = 2 * _attention(cfg) + _mlp(cfg) + 3 * norm
  encoder = cfg.n_encoder_layers * encoder_layer + table + norm
  decoder = cfg.n_decoder_layers * decoder_layer + table + norm
  embedding = vocab * cfg.d_model
  head = 0 if cfg.tie_embeddings else cfg.d_model * vocab
  total = embedding + encoder + decoder + head
  return {"embedding": embedding, "encoder": encoder, "decoder": decoder, "head": head,
          "non_embedding": encoder + decoder, "total": total, "active": total,
          "active_non_embedding": encoder + decoder, "encoder_layer": encoder_layer,
          "decoder_layer": decoder_layer}


def n_by_convention(cfg: EncDecConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": counts["non_embedding"] + cfg.d_model * cfg.vocab_size}


def flops_per_token(cfg: EncDecConfig, seq_len: int,
                    target_len: int | None = None) -> dict[str, float]:
  """Training FLOPs per input-plus-target token under each analytic convention (module doc)."""
  s = int(seq_len)
  t = s if target_len is None else int(target_len)
  counts = param_counts(cfg)
  d, h, v, f = cfg.d_model, cfg.n_heads, cfg.vocab_size, cfg.ff_dim
  hq = h * cfg.head_dim
  n_e, n_d = cfg.n_encoder_layers, cfg.n_decoder_layers
  m = 3 if mlp_lib.is_gated(cfg.activation) else 2
  kv = _cross_key_value(cfg)
  matmul_tokens = counts["encoder"] * s + (counts["decoder"] - kv) * t + kv * s
  pairs = n_e * s * s + n_d * t * t + n_d * t * s
  forward = (2 * v * d * (s + t)
             + n_e * s * (8 * d * hq + 4 * s * hq + 3 * h * s + 2 * m * d * f)
             + n_d * t * (8 * d * hq + 4 * t * hq + 3 * h * t
                          + 4 * d * hq + 4 * s * hq + 3 * h * s + 2 * m * d * f)
             + n_d * s * 4 * d * hq + 2 * d * v * t)
  tokens = s + t
  return {
      "kaplan": (6.0 * matmul_tokens + 6.0 * hq * pairs) / tokens,
      "chinchilla": 3.0 * forward / tokens,
      "palm": (6.0 * (matmul_tokens + d * v * t) + 12.0 * hq * pairs) / tokens,
  }
