"""Exact parameter counts and training FLOPs per token under named conventions.

Parameter groups (they partition the model's parameters exactly):
  embedding      token table (V*D) and, with learned positions, the position table (T_max*D)
  non_embedding  every block's weights plus the final norm
  head           the untied output projection (D*V); zero when tied to the token table

N under each convention:
  kaplan      non_embedding (Kaplan et al. 2020 count no vocabulary or position matrices)
  chinchilla  every parameter (Hoffmann et al. 2022 count embeddings)
  palm        the parameters that enter a matmul: non_embedding + the output projection
              (the tied token table, or the untied head); lookup-only tables are left out
              (Chowdhery et al. 2022, App. B, count matmul FLOPs; nanoGPT counts alike)

Training FLOPs per token (forward + backward = 3 x forward), with T the sequence length,
L layers, H query heads, G kv heads, Q head size, D width, F hidden width, V vocabulary:
  kaplan      6 N_kaplan + 6 L T (H Q)              (Kaplan eq. 2.2: 6N + 6 n_layer n_ctx d_attn)
  chinchilla  3 x [2 V D (embedding as a one-hot matmul) + L (2 D Q (2H + 2G) + 4 T H Q + 3 H T
              + 2 H Q D + 2 M D F) + 2 D V]         (Hoffmann App. F; M = 3 gated, 2 plain)
  palm        6 N_palm + 12 L H Q T                 (Chowdhery App. B)
  measured, measured_model   XLA's cost analysis of the compiled step (added by train/;
              see models/conventions.py)
All three analytic forms count attention over the full T x T square, as the papers do, and
the model's vocabulary V, not the padded one (``vocab_pad_multiple``): padding is allocation,
not model (``param_counts(cfg, padded=True)`` gives the allocated counts).
"""

from isoflop.models import conventions
from isoflop.models import mlp as mlp_lib
from isoflop.models import norms
from isoflop.models.transformer import TransformerConfig

CONVENTIONS = conventions.ANALYTIC_FLOP_CONVENTIONS


def param_counts(cfg: TransformerConfig, *, padded: bool = False) -> dict[str, int]:
  """Exact counts by group. ``padded=False`` counts the model's vocabulary (what N means in
  every convention); ``padded=True`` counts the allocated tables (``vocab_pad_multiple``), equal
  to the leaves of ``Decoder(cfg).init(...)``."""
  vocab = cfg.padded_vocab if padded else cfg.vocab_size
  d, q, h, g = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads
  bias = cfg.use_bias
  attention = d * q * (h + 2 * g) + h * q * d + (q * (h + 2 * g) + d if bias else 0)
  n_in = 2 if mlp_lib.is_gated(cfg.activation) else 1
  mlp = n_in * d * cfg.ff_dim + cfg.ff_dim * d + (n_in * cfg.ff_dim + d if bias else 0)
  norm = norms.norm_param_count(cfg.norm, d, bias)
  per_layer = attention + mlp + 2 * norm
  embedding = vocab * d + (cfg.max_len * d if cfg.positions == "learned" else 0)
  head = 0 if cfg.tie_embeddings else d * vocab
  non_embedding = cfg.n_layers * per_layer + norm
  return {"embedding": embedding, "non_embedding": non_embedding, "head": head,
          "total": embedding + non_embedding + head, "per_layer": per_layer}


def n_by_convention(cfg: TransformerConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  return {
      "kaplan": counts["non_embedding"],
      "chinchilla": counts["total"],
      "palm": counts["non_embedding"] + cfg.d_model * cfg.vocab_size,
  }


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs per token (forward and backward) under each analytic convention."""
  n = n_by_convention(cfg)
  d, q, h, g, t, v = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, seq_len, cfg.vocab_size
  layers = cfg.n_layers
  gated_matrices = 3 if mlp_lib.is_gated(cfg.activation) else 2
  chinchilla_layer = (
      2 * d * q * (h + 2 * g)  # query, key and value projections
      + 2 * t * h * q  # query @ key logits
      + 3 * h * t  # softmax
      + 2 * t * h * q  # softmax @ value
      + 2 * h * q * d  # output projection
      + 2 * gated_matrices * d * cfg.ff_dim)  # feed-forward
  chinchilla_forward = 2 * v * d + layers * chinchilla_layer + 2 * d * v
  return {
      "kaplan": 6.0 * n["kaplan"] + 6.0 * layers * t * h * q,
      "chinchilla": 3.0 * chinchilla_forward,
      "palm": 6.0 * n["palm"] + 12.0 * layers * h * q * t,
  }
