"""The documented shape rule: a model of (about) a target parameter count, for any family.

Each family lists its shapes of growing size (``Family.shape_candidates``; the decoder's: width
grows one head of fixed size at a time and depth follows at a fixed aspect ratio d_model /
n_layers, Kaplan et al. 2020 having found the loss flat over a wide range of it). Among these,
the one whose exact parameter count (the family's accounting, under the sweep's N convention)
is closest to the target in log space wins, so N is always the exact count of a real model.
"""

import math

from isoflop.models import families


def shape_for(target_params: float, base, *, aspect_ratio: float, head_size: int,
              convention: str, exclude: frozenset = frozenset(),
              family: families.Family | None = None):
  """(config, exact N) of the rule's model closest to ``target_params`` (log distance), leaving
  out the shapes in ``exclude`` (``shape_key``s, so the sizes of one budget are distinct
  models)."""
  family = family or families.get("decoder")
  if family.shape_candidates is None:
    raise ValueError(f"model.family={family.name!r} defines no shape rule for sweeps; list "
                     "the members' shapes in the sweep file instead")
  best, best_gap, best_n = None, math.inf, 0
  for cfg in family.shape_candidates(base, aspect_ratio=aspect_ratio, head_size=head_size):
    if shape_key(family.shape_overrides(cfg)) in exclude:
      continue
    n = family.n_by_convention(cfg)[convention]
    gap = abs(math.log(n / target_params))
    if gap < best_gap:
      best, best_gap, best_n = cfg, gap, n
  return best, best_n


def shape_key(overrides: dict) -> tuple:
  """What identifies a shape among a family's candidates: its ``model.*`` overrides (widths,
  depths, heads; for a CNN its stage widths), whatever the family."""
  return tuple(sorted((k, v) for k, v in overrides.items() if k.startswith("model.")))
