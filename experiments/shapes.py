"""The documented shape rule: a decoder of (about) a target parameter count.

Width grows one head of fixed size at a time and depth follows at a fixed aspect ratio
d_model / n_layers (Kaplan et al. 2020 found the loss flat over a wide range of it); the MLP
keeps the base config's ratio d_ff / d_model (4 unless set). Among these shapes, the one whose exact
parameter count (from ``models/counting.py`` under the sweep's N convention) is closest to
the target in log space wins, so N is always the exact count of a real model.
"""

import dataclasses
import math

from isoflop.models import counting, transformer


def candidates(base: transformer.TransformerConfig, *, aspect_ratio: float, head_size: int,
               max_heads: int = 256):
  """Every shape of the rule, narrowest first: width grows one head at a time and the depth
  follows it, n_layers = max(1, round(d_model / aspect_ratio))."""
  ff_ratio = None if base.d_ff is None else base.d_ff / base.d_model
  for heads in range(1, max_heads + 1):
    d_model = heads * head_size
    n_layers = max(1, round(d_model / aspect_ratio))
    d_ff = None if ff_ratio is None else max(1, round(ff_ratio * d_model))
    kv = None if base.n_kv_heads is None else max(1, heads * base.n_kv_heads // base.n_heads)
    while kv and heads % kv:
      kv -= 1
    yield dataclasses.replace(base, d_model=d_model, n_layers=n_layers, n_heads=heads,
                              n_kv_heads=kv, d_head=None, d_ff=d_ff)


def shape_for(target_params: float, base: transformer.TransformerConfig, *, aspect_ratio: float,
              head_size: int, convention: str, exclude: frozenset = frozenset()
              ) -> tuple[transformer.TransformerConfig, int]:
  """The rule's model closest to ``target_params`` (log distance) and its exact N, leaving
  out the widths in ``exclude`` (so the sizes of one budget are distinct models)."""
  best, best_gap, best_n = None, math.inf, 0
  for cfg in candidates(base, aspect_ratio=aspect_ratio, head_size=head_size):
    if cfg.d_model in exclude:
      continue
    n = counting.n_by_convention(cfg)[convention]
    gap = abs(math.log(n / target_params))
    if gap < best_gap:
      best, best_gap, best_n = cfg, gap, n
  return best, best_n
