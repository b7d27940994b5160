"""Exact parameter counts and training FLOPs per example (per image) of the ViT.

Symbols: P patch size, C channels, D width, L layers, H query heads, G kv heads (= H in every
published ViT), Q head size, F MLP width, M = 3 gated / 2 plain MLP matrices, K classes,
n = (image_size / P)^2 patches, T = n (+1 with a class token) tokens in the blocks.

Parameter groups (they partition the parameters exactly):
  embedding      patch kernel and bias (P*P*C*D + D), the learned position table (T*D; none
                 for sin-cos positions) and the class token (D, with ``pool="cls"``)
  non_embedding  every block (attention, MLP, two norms) and the final norm
  head           the classifier's kernel and bias (D*K + K)
Published counts (1,000 classes, class token, a 197-row position table, head with bias),
equal to timm's ``vit_*_patch16_224``; Dosovitskiy et al. 2021 round them:
  ViT-Ti/16   5,717,416   (5.7M)    D 192, 12 layers, 3 heads
  ViT-S/16    22,050,664  (22.1M)   D 384, 12 layers, 6 heads
  ViT-B/16    86,567,656  (86.6M)   D 768, 12 layers, 12 heads
The ViT has no vocabulary, so ``padded=True`` (allocated counts) changes nothing.

N under each convention:
  kaplan      non_embedding
  chinchilla  every parameter
  palm        the parameters that enter a matmul: non_embedding + the head kernel (D*K) + the
              patch kernel (P*P*C*D); the position table and class token are only added

Training FLOPs per example (3 x forward). The blocks run on T tokens, the patch kernel on n
patches, the head on one vector per image:
  chinchilla  3 x [2 P P C D n + L T (2 D Q (H + 2G) + 2 H Q D + 4 T H Q + 3 H T + 2 M D F)
              + 2 D K]       (Hoffmann et al. App. F's operation count, per image)
  kaplan      6 N_kaplan T + 6 L T^2 H Q      (Kaplan's 6N + 6 n_layer n_ctx d_attn per token,
              over the T tokens)
  palm        6 (N_kaplan T + P P C D n + D K) + 12 L T^2 H Q   (PaLM's 6N + 12 L H Q T per
              token, with each matmul parameter counted over the vectors it multiplies: block
              weights T times, the patch kernel n times, the head once)
Attention counts the full T x T square. The run's ``seq_len`` means nothing for images and is
ignored. Measured FLOPs (XLA's cost analysis) are added by train/.
"""

from isoflop.models import attention as attention_lib
from isoflop.models import mlp as mlp_lib
from isoflop.models import norms
from isoflop.models.vit.model import VitConfig


def param_counts(cfg: VitConfig, *, padded: bool = False) -> dict[str, int]:
  """Exact counts by group, equal to the leaves of ``Vit(cfg).init(...)``."""
  del padded  # nothing is padded
  d, q, h, g, f = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, cfg.ff_dim
  bias = cfg.use_bias
  norm = norms.norm_param_count(cfg.norm, d, bias)
  attention = (d * q * (h + 2 * g) + h * q * d + (q * (h + 2 * g) + d if bias else 0)
               + attention_lib.stabilizer_params(cfg))
  n_in = 2 if mlp_lib.is_gated(cfg.activation) else 1
  mlp = n_in * d * f + f * d + (n_in * f + d if bias else 0)
  layer = attention + mlp + 2 * norm
  patch = cfg.patch_size ** 2 * cfg.channels * d + d
  positions = cfg.n_tokens * d if cfg.positions == "learned" else 0
  cls = d if cfg.pool == "cls" else 0
  embedding = patch + positions + cls
  non_embedding = cfg.n_layers * layer + norm
  head = d * cfg.num_classes + cfg.num_classes
  total = embedding + non_embedding + head
  return {"embedding": embedding, "non_embedding": non_embedding, "head": head,
          "total": total, "active": total, "per_layer": layer}


def _patch_kernel(cfg: VitConfig) -> int:
  return cfg.patch_size ** 2 * cfg.channels * cfg.d_model


def n_by_convention(cfg: VitConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": counts["non_embedding"] + cfg.d_model * cfg.num_classes + _patch_kernel(cfg)}


def flops_per_example(cfg: VitConfig, seq_len: int | None = None) -> dict[str, float]:
  """Analytic training FLOPs of one image under each convention; ``seq_len`` is ignored."""
  del seq_len
  d, q, h, g, t, k = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, cfg.n_tokens,
                      cfg.num_classes)
  layers = cfg.n_layers
  matrices = 3 if mlp_lib.is_gated(cfg.activation) else 2
  per_token = (2 * d * q * (h + 2 * g) + 2 * h * q * d + 4 * t * h * q + 3 * h * t
               + 2 * matrices * d * cfg.ff_dim)
  forward = 2 * _patch_kernel(cfg) * cfg.n_patches + layers * per_token * t + 2 * d * k
  kaplan = n_by_convention(cfg)["kaplan"]
  return {"kaplan": 6.0 * kaplan * t + 6.0 * layers * t * t * h * q,
          "chinchilla": 3.0 * forward,
          "palm": 6.0 * (kaplan * t + _patch_kernel(cfg) * cfg.n_patches + d * k)
                  + 12.0 * layers * t * t * h * q}
