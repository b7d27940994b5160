"""Exact parameter counts and training FLOPs per token under named conventions.

Parameter groups (they partition the model's parameters exactly):
  embedding      token table (V*D) and, with learned positions, the position table (T_max*D)
  non_embedding  every block's weights plus the final norm
  head           the untied output projection (D*V); zero when tied to the token table

A mixture of experts (``num_experts > 0``) has ``moe_layers`` routed layers whose MLP is a router
(D*E) plus E experts (and ``shared_experts`` always-used ones) of width F_e = expert_dim.
``active`` counts the parameters one token passes through: everything but the E - k experts it
is not routed to in each routed layer (``active == total`` for dense models);
``active_non_embedding`` likewise.

N under each convention (of every parameter, routed or not):
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
A routed layer's feed-forward FLOPs are those of its k + shared_experts active experts plus the
router (2 D E forward), i.e. the active path: each convention's N is replaced by its active
count (kaplan: active non-embedding; palm: that + D V), chinchilla's 2 M D F term becomes
2 M D F_e (k + S) + 2 D E. What executing a routed layer costs beyond that is implementation,
not model, and is left out (``routing_overhead_per_token`` counts it): the experts run on all
E * C capacity slots of a sequence, cf * k per token rather than k, and the one-hot dispatch
and combine einsums cost 2 E C D each forward (10 E C D forward and backward).
  measured, measured_model   XLA's cost analysis of the compiled step (added by train/;
              see models/conventions.py)
All three analytic forms count attention over the full T x T square, as the papers do, and
the model's vocabulary V, not the padded one (``vocab_pad_multiple``): padding is allocation,
not model (``param_counts(cfg, padded=True)`` gives the allocated counts).
"""

import dataclasses

from isoflop.models import attention as attention_lib
from isoflop.models import classifier, conventions
from isoflop.models import mlp as mlp_lib
from isoflop.models import moe, norms
from isoflop.models.transformer import TransformerConfig

CONVENTIONS = conventions.ANALYTIC_FLOP_CONVENTIONS


def param_counts(cfg: TransformerConfig, *, padded: bool = False) -> dict[str, int]:
  """Exact counts by group. ``padded=False`` counts the model's vocabulary (what N means in
  every convention); ``padded=True`` counts the allocated tables (``vocab_pad_multiple``), equal
  to the leaves of ``Decoder(cfg).init(...)``."""
  vocab = cfg.padded_vocab if padded else cfg.vocab_size
  d, q, h, g = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads
  bias = cfg.use_bias
  attention = (d * q * (h + 2 * g) + h * q * d + (q * (h + 2 * g) + d if bias else 0)
               + attention_lib.stabilizer_params(cfg))
  norm = norms.norm_param_count(cfg.norm, d, bias)
  dense_layer = attention + _mlp_params(cfg, cfg.ff_dim) + 2 * norm
  expert = _mlp_params(cfg, cfg.expert_dim)
  shared = _mlp_params(cfg, cfg.shared_experts * cfg.expert_dim) if cfg.shared_experts else 0
  routed_layer = attention + d * cfg.num_experts + cfg.num_experts * expert + shared + 2 * norm
  moe_layers = cfg.moe_layers
  embedding = vocab * d + (cfg.max_len * d if cfg.positions == "learned" else 0)
  head = 0 if cfg.tie_embeddings else d * vocab
  non_embedding = (cfg.n_layers - moe_layers) * dense_layer + moe_layers * routed_layer + norm
  inactive = moe_layers * (cfg.num_experts - cfg.experts_per_token) * expert
  counts = {"embedding": embedding, "non_embedding": non_embedding, "head": head,
            "total": embedding + non_embedding + head,
            "active": embedding + non_embedding + head - inactive,
            "active_non_embedding": non_embedding - inactive}
  if moe_layers:
    counts.update(dense_layer=dense_layer, routed_layer=routed_layer, expert=expert)
  else:
    counts["per_layer"] = dense_layer
  if cfg.num_classes is not None:  # a classification head instead of the LM readout
    counts = classifier.classifier_counts(counts, d, cfg.num_classes)
  return counts


def _mlp_params(cfg: TransformerConfig, width: int) -> int:
  n_in = 2 if mlp_lib.is_gated(cfg.activation) else 1
  return n_in * cfg.d_model * width + width * cfg.d_model + (
      n_in * width + cfg.d_model if cfg.use_bias else 0)


def n_by_convention(cfg: TransformerConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  if cfg.num_classes is not None:
    return classifier.classifier_n(counts, cfg.d_model, cfg.num_classes)
  return {
      "kaplan": counts["non_embedding"],
      "chinchilla": counts["total"],
      "palm": counts["non_embedding"] + cfg.d_model * cfg.vocab_size,
  }


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs per token (forward and backward) under each analytic convention, along
  the active path of a mixture of experts."""
  counts = param_counts(cfg)
  d, q, h, g, t, v = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, seq_len, cfg.vocab_size
  layers, moe_layers = cfg.n_layers, cfg.moe_layers
  gated_matrices = 3 if mlp_lib.is_gated(cfg.activation) else 2
  attention = (
      2 * d * q * (h + 2 * g)  # query, key and value projections
      + 2 * t * h * q  # query @ key logits
      + 3 * h * t  # softmax
      + 2 * t * h * q  # softmax @ value
      + 2 * h * q * d)  # output projection
  dense_ff = 2 * gated_matrices * d * cfg.ff_dim
  routed_ff = (2 * gated_matrices * d * cfg.expert_dim
               * (cfg.experts_per_token + cfg.shared_experts) + 2 * d * cfg.num_experts)
  chinchilla_forward = (2 * v * d + layers * attention + (layers - moe_layers) * dense_ff
                        + moe_layers * routed_ff + 2 * d * v)
  active = counts["active_non_embedding"]
  flops = {
      "kaplan": 6.0 * active + 6.0 * layers * t * h * q,
      "chinchilla": 3.0 * chinchilla_forward,
      "palm": 6.0 * (active + d * v) + 12.0 * layers * h * q * t,
  }
  if cfg.num_classes is None:
    return flops
  lm = dataclasses.replace(cfg, num_classes=None)
  return classifier.classifier_flops(flops, n_by_convention(lm), n_by_convention(cfg),
                                     2.0 * d * v, d, cfg.num_classes, seq_len)


def routing_overhead_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token a routed decoder executes beyond the analytic conventions' active
  path: expert matmuls on empty capacity slots (E * C / L slots per token against k) and the
  dispatch/combine einsums (10 E C D: 2 forward each, backward 2 for dispatch, 4 for combine,
  whose router weights also get gradients). Zero for a dense model."""
  if not cfg.moe_layers:
    return 0.0
  slots = cfg.num_experts * moe.capacity(cfg.capacity_factor, cfg.experts_per_token, seq_len,
                                         cfg.num_experts)
  gated_matrices = 3 if mlp_lib.is_gated(cfg.activation) else 2
  expert_matmuls = 6.0 * gated_matrices * cfg.d_model * cfg.expert_dim
  padding = (slots / seq_len - cfg.experts_per_token) * expert_matmuls
  dispatch = 10.0 * slots * cfg.d_model
  return cfg.moe_layers * (padding + dispatch)
