"""Exact parameter counts and training FLOPs per token of the encoder (masked LM).

Parameter groups (they partition the parameters exactly):
  embedding      token table (V*D), learned positions (T_max*D), token types (types*D)
  non_embedding  every block's weights, plus the embedding norm (post-norm, BERT) or the final
                 norm (pre-norm)
  head           the MLM head: transform dense (D*D + D) and its norm, the readout bias (V),
                 and an untied readout (D*V); a tied readout reuses the token table
BERT-base (V 30,522, L 12, D 768, 12 heads, F 3,072, 512 positions, 2 types): embedding
23,835,648 + non_embedding 85,056,000 + head 622,650 = 109,514,298, what Hugging Face's
``BertForMaskedLM`` holds (no pooler: the MLM model has none).

N under each convention:
  kaplan      non_embedding
  chinchilla  every parameter
  palm        the parameters that enter a matmul: non_embedding + the transform dense + the
              readout matrix (D*V, tied or not)

Training FLOPs per token (3 x forward), T the sequence length, with every position encoded and
read out (the logits of all positions are computed, as in BERT; the loss uses the selected):
  kaplan      6 N_kaplan + 6 L T (H Q)
  chinchilla  3 x [2 V D + L (2 D Q (2H + 2G) + 4 T H Q + 3 H T + 2 H Q D + 2 M D F)
              + 2 D D (transform) + 2 D V]
  palm        6 N_palm + 12 L H Q T
Attention counts the full T x T square, as it does for the decoder.
"""

import dataclasses

from isoflop.models import classifier, norms
from isoflop.models import attention as attention_lib
from isoflop.models import mlp as mlp_lib
from isoflop.models.encoder.model import EncoderConfig


def param_counts(cfg: EncoderConfig, *, padded: bool = False) -> dict[str, int]:
  """``padded=True`` counts the allocated (padded) vocabulary: the initialized leaves."""
  v = cfg.padded_vocab if padded else cfg.vocab_size
  d, q, h, g, f = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, cfg.ff_dim
  bias = cfg.use_bias
  norm = norms.norm_param_count(cfg.norm, d, bias)
  attention = (d * q * (h + 2 * g) + h * q * d + (q * (h + 2 * g) + d if bias else 0)
               + attention_lib.stabilizer_params(cfg))
  n_in = 2 if mlp_lib.is_gated(cfg.activation) else 1
  mlp = n_in * d * f + f * d + (n_in * f + d if bias else 0)
  layer = attention + mlp + 2 * norm
  embedding = v * d + (cfg.max_len * d if cfg.positions == "learned" else 0) \
      + cfg.type_vocab_size * d
  non_embedding = cfg.n_layers * layer + norm  # embedding norm (post) or final norm (pre)
  transform = (d * d + (d if bias else 0) + norm) if cfg.mlm_transform else 0
  head = transform + (v if cfg.readout_bias else 0) + (0 if cfg.tie_embeddings else d * v)
  total = embedding + non_embedding + head
  counts = {"embedding": embedding, "non_embedding": non_embedding, "head": head,
            "total": total, "active": total, "per_layer": layer}
  if cfg.num_classes is not None:  # a classification head instead of the MLM head
    counts = classifier.classifier_counts(counts, d, cfg.num_classes)
  return counts


def n_by_convention(cfg: EncoderConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  if cfg.num_classes is not None:
    return classifier.classifier_n(counts, cfg.d_model, cfg.num_classes)
  transform = cfg.d_model * cfg.d_model if cfg.mlm_transform else 0
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": counts["non_embedding"] + transform + cfg.d_model * cfg.vocab_size}


def flops_per_token(cfg: EncoderConfig, seq_len: int) -> dict[str, float]:
  d, q, h, g, t, v = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, seq_len,
                      cfg.vocab_size)
  layers = cfg.n_layers
  gated_matrices = 3 if mlp_lib.is_gated(cfg.activation) else 2
  attention = 2 * d * q * (h + 2 * g) + 4 * t * h * q + 3 * h * t + 2 * h * q * d
  transform = 2 * d * d if cfg.mlm_transform else 0
  forward = (2 * v * d + layers * (attention + 2 * gated_matrices * d * cfg.ff_dim)
             + transform + 2 * d * v)
  if cfg.num_classes is not None:  # the MLM model's, its readout swapped for the classifier
    lm = dataclasses.replace(cfg, num_classes=None)
    return classifier.classifier_flops(flops_per_token(lm, seq_len), n_by_convention(lm),
                                       n_by_convention(cfg), transform + 2.0 * d * v, d,
                                       cfg.num_classes, seq_len)
  n = n_by_convention(cfg)
  return {"kaplan": 6.0 * n["kaplan"] + 6.0 * layers * t * h * q,
          "chinchilla": 3.0 * forward,
          "palm": 6.0 * n["palm"] + 12.0 * layers * h * q * t}
