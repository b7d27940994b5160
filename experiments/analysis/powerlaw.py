"""Power laws y = G x^a fitted by least squares in log-log space, and the percentile bootstrap.

Shared by Approaches 1 and 2 (and used for Approach 3's frontier): x is the compute C in
training FLOPs, y is N_opt (parameters) or D_opt (tokens). Intervals are the 2.5th and 97.5th
percentiles of the bootstrap replicates. Each estimate also says whether its interval pins the
value down (`IDENTIFIED_RULE`): a fit can converge to a number that the data do not determine.
"""

import dataclasses
from typing import Callable, Sequence, TypeVar

import numpy as np
import scipy.stats

from isoflop.experiments.analysis import inputs

T = TypeVar("T")

# Exponents are compared by the width of their interval; every other fitted value is a positive
# scale (A, B, E, G, kappa, N_opt, ...) and is compared by the ratio of its interval's ends.
EXPONENTS = frozenset({"a", "b", "alpha", "beta", "phi"})
MAX_SCALE_RATIO = 100.0  # two decades
MAX_EXPONENT_WIDTH = 0.5  # half the range [0, 1] that a and b can take
MAX_NON_FINITE = 0.025  # the share of replicates that one tail of a 95% interval may hold
IDENTIFIED_RULE = (
    f"identified: false when the 95% interval spans more than a factor of "
    f"{MAX_SCALE_RATIO:g} (hi/lo, positive scales: E, A, B, G, G_prime, kappa, N_opt, D_opt) "
    f"or more than {MAX_EXPONENT_WIDTH:g} (hi - lo, exponents: {', '.join(sorted(EXPONENTS))}), "
    f"or when more than {MAX_NON_FINITE:.1%} of the bootstrap refits gave a non-finite value; "
    "null when there is no interval")


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coefficient * x ** exponent."""
  coefficient: float
  exponent: float

  def __call__(self, x):
    with np.errstate(over="ignore", invalid="ignore"):  # wild bootstrap replicates give inf
      return self.coefficient * np.power(x, self.exponent)


def fit(x: np.ndarray, y: np.ndarray) -> PowerLaw:
  """Least squares of log y on log x; raises NotEnoughData with fewer than 2 distinct x."""
  log_x, log_y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
  if len(np.unique(log_x)) < 2:
    raise inputs.NotEnoughData("a power law needs points at 2 or more distinct compute budgets")
  result = scipy.stats.linregress(log_x, log_y)
  with np.errstate(over="ignore"):
    return PowerLaw(float(np.exp(result.intercept)), float(result.slope))


def bootstrap(replicate: Callable[[np.random.Generator], T | None], count: int,
              seed: int) -> list[T]:
  """Runs `replicate` `count` times on one generator seeded with `seed`.

  A replicate returns None (or raises NotEnoughData) when its resample cannot be fitted; such
  replicates are left out of the intervals.
  """
  rng = np.random.default_rng(seed)
  results = []
  for _ in range(count):
    try:
      result = replicate(rng)
    except inputs.NotEnoughData:
      result = None
    if result is not None:
      results.append(result)
  return results


def interval(samples: Sequence[float]) -> list[float] | None:
  """The central 95% of the finite samples; None with fewer than 2 of them."""
  finite = np.asarray(samples, float)
  finite = finite[np.isfinite(finite)]
  if len(finite) < 2:
    return None
  low, high = np.percentile(finite, [2.5, 97.5])
  return [float(low), float(high)]


def identified(samples: Sequence[float], exponent: bool) -> bool | None:
  """Whether the bootstrap pins the value down, by `IDENTIFIED_RULE`; None without an interval."""
  ci = interval(samples)
  if ci is None:
    return None
  values = np.asarray(samples, float)
  if np.mean(~np.isfinite(values)) > MAX_NON_FINITE:  # the interval would hide these
    return False
  low, high = ci
  if exponent:
    return bool(high - low <= MAX_EXPONENT_WIDTH)
  return bool(low > 0 and high / low <= MAX_SCALE_RATIO)


def estimate(value: float, samples: Sequence[float], exponent: bool = False) -> dict:
  """The fit.json form of a fitted value: {"value": x, "ci95": [lo, hi] or null, "identified":
  true, false, or null without an interval}; `exponent` picks the rule for exponents."""
  return {"value": float(value), "ci95": interval(samples),
          "identified": identified(samples, exponent)}


@dataclasses.dataclass(frozen=True)
class Frontier:
  """Compute-optimal N_opt(C) (parameters) and D_opt(C) (tokens), with bootstrap replicates."""
  n_opt: PowerLaw
  d_opt: PowerLaw
  n_samples: tuple[PowerLaw, ...] = ()
  d_samples: tuple[PowerLaw, ...] = ()

  def band(self, which: str, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise 95% band of N_opt ("n") or D_opt ("d") over compute `c`, or None."""
    samples = self.n_samples if which == "n" else self.d_samples
    if len(samples) < 2:
      return None
    values = np.array([law(c) for law in samples])
    low, high = np.nanpercentile(values, [2.5, 97.5], axis=0)
    return low, high

  def at(self, c: float) -> dict:
    """N_opt and D_opt at compute `c` (FLOPs), in fit.json form."""
    return {"C": float(c),
            "N_opt": estimate(self.n_opt(c), [law(c) for law in self.n_samples]),
            "D_opt": estimate(self.d_opt(c), [law(c) for law in self.d_samples])}

  def to_json(self) -> dict:
    """Exponents and coefficients: N_opt = G * C**a, D_opt = G_prime * C**b (C in FLOPs)."""
    return {
        "law": "N_opt = G * C**a, D_opt = G_prime * C**b (C in FLOPs)",
        "a": estimate(self.n_opt.exponent, [s.exponent for s in self.n_samples], exponent=True),
        "b": estimate(self.d_opt.exponent, [s.exponent for s in self.d_samples], exponent=True),
        "G": estimate(self.n_opt.coefficient, [s.coefficient for s in self.n_samples]),
        "G_prime": estimate(self.d_opt.coefficient, [s.coefficient for s in self.d_samples]),
    }


def frontier_from_points(c: np.ndarray, n_opt: np.ndarray, d_opt: np.ndarray) -> Frontier:
  """Fits N_opt(C) and D_opt(C) to per-budget (or per-bin) optima."""
  return Frontier(fit(c, n_opt), fit(c, d_opt))


def with_samples(frontier: Frontier, replicates: Sequence[Frontier]) -> Frontier:
  return dataclasses.replace(frontier, n_samples=tuple(r.n_opt for r in replicates),
                             d_samples=tuple(r.d_opt for r in replicates))
