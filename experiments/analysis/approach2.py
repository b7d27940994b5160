"""Chinchilla Approach 2: parabolas through isoFLOP profiles (Hoffmann et al. 2022, sec. 3.2).

Budgets are the values of a `budget` column when the input has one; otherwise the clusters of
log10 C under complete linkage cut at 0.05, so that any two points of a budget have C within a
factor 10^0.05 (12%) of each other. In each budget with >= 3 distinct N, loss is fitted by a
parabola in ln N; a parabola that opens downward, or whose minimum lies outside the sizes
sampled, is rejected (and recorded). Its vertex is N_opt. The budget's C and D_opt are the
runs' own C (FLOPs, under the input's convention) and D (tokens trained on) at N_opt: each
linear in ln N on log axes, fitted over the budget's points and held at the ends of their
range of N (the common value when they share one). C/D is then the runs' FLOPs per token at
N_opt; C / (6 N_opt) would misstate D by the ratio of the two, far from 1 for small models
(embeddings, attention). Then N_opt = G C^a and D_opt = G' C^b, each by least squares in
log-log space on its own: b is fitted, not 1 - a (it equals 1 - a only when C = 6 N D).
The bootstrap resamples the points within each budget, with replacement.
"""

import dataclasses

import numpy as np
import pandas as pd
import scipy.cluster.hierarchy

from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw

BUDGET_TOLERANCE_DEX = 0.05
MIN_SIZES = 3
OPENS_DOWNWARD = "its parabola in ln N opens downward (no minimum)"
NOT_BRACKETED = "its parabola's minimum lies outside the sizes sampled (optimum not bracketed)"


@dataclasses.dataclass(frozen=True)
class Profile:
  """One budget's points (N parameters, D tokens, C FLOPs, loss nats) and its parabola.

  `parabola` holds (p2, p1, p0) of loss = p2 (ln N)^2 + p1 ln N + p0, or None when the budget
  has fewer than 3 distinct N; `rejected` says why the budget gives no N_opt (None if it does).
  """
  n: np.ndarray
  d: np.ndarray
  c: np.ndarray
  loss: np.ndarray
  parabola: np.ndarray | None
  rejected: str | None

  @property
  def c_nominal(self) -> float:
    return float(np.exp(np.mean(np.log(self.c))))

  @property
  def n_opt(self) -> float:
    p2, p1, _ = self.parabola
    return float(np.exp(-p1 / (2.0 * p2)))

  @property
  def loss_opt(self) -> float:
    return float(np.polyval(self.parabola, np.log(self.n_opt)))

  def _at_n_opt(self, values: np.ndarray) -> float:
    """`values` at N_opt, linear in (ln N, ln value) over the budget's points."""
    log_n, log_values = np.log(self.n), np.log(values)
    if np.ptp(log_values) == 0:
      return float(values[0])
    at = np.clip(np.log(self.n_opt), log_n.min(), log_n.max())  # no extrapolation
    return float(np.exp(np.polyval(np.polyfit(log_n, log_values, 1), at)))

  @property
  def c_opt(self) -> float:
    return self._at_n_opt(self.c)

  @property
  def d_opt(self) -> float:
    # The same straight-line fit as c_opt, so c_opt / d_opt is the fit of the runs' C/D.
    return self._at_n_opt(self.d)


def profile(n: np.ndarray, d: np.ndarray, c: np.ndarray, loss: np.ndarray) -> Profile:
  if len(np.unique(n)) < MIN_SIZES:
    return Profile(n, d, c, loss, None, f"fewer than {MIN_SIZES} distinct N")
  parabola = np.polyfit(np.log(n), loss, 2)
  if parabola[0] <= 0:
    return Profile(n, d, c, loss, parabola, OPENS_DOWNWARD)
  vertex = -parabola[1] / (2.0 * parabola[0])
  if not np.log(n).min() <= vertex <= np.log(n).max():  # an extrapolated minimum is a guess
    return Profile(n, d, c, loss, parabola, NOT_BRACKETED)
  return Profile(n, d, c, loss, parabola, None)


def group_budgets(table: pd.DataFrame) -> list[np.ndarray]:
  """Row indices of each budget, ordered by increasing compute."""
  if "budget" in table:
    labels = table["budget"].to_numpy()
  elif len(table) == 1:
    labels = np.zeros(1)
  else:
    log_c = np.log10(table["C"].to_numpy()).reshape(-1, 1)
    tree = scipy.cluster.hierarchy.linkage(log_c, method="complete")
    labels = scipy.cluster.hierarchy.fcluster(tree, t=BUDGET_TOLERANCE_DEX, criterion="distance")
  groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
  return sorted(groups, key=lambda rows: float(np.mean(np.log(table["C"].to_numpy()[rows]))))


def budget_profiles(table: pd.DataFrame) -> list[Profile]:
  """Each budget's profile, by increasing compute (also when too few are usable for a fit)."""
  n, d, c, loss = (table[k].to_numpy() for k in ("N", "D", "C", "loss"))
  return [profile(n[rows], d[rows], c[rows], loss[rows]) for rows in group_budgets(table)]


def _frontier(profiles: list[Profile]) -> powerlaw.Frontier:
  usable = [p for p in profiles if p.rejected is None]
  if len(usable) < 2:
    raise inputs.NotEnoughData(
        f"needs >= 2 compute budgets with >= {MIN_SIZES} distinct N and an upward parabola; "
        f"found {len(usable)} of {inputs.plural(len(profiles), 'budget')}")
  return powerlaw.frontier_from_points(*optima(usable))


def optima(profiles: list[Profile]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(C, N_opt, D_opt) arrays of the given budgets."""
  return tuple(np.array([getattr(p, k) for p in profiles]) for k in ("c_opt", "n_opt", "d_opt"))


@dataclasses.dataclass(frozen=True)
class Result:
  profiles: tuple[Profile, ...]
  frontier: powerlaw.Frontier
  replicates: int  # bootstrap replicates that could be fitted
  budget_column: bool = False
  loss_law: powerlaw.PowerLaw | None = None  # the budgets' minimum losses against C
  loss_law_replicates: tuple[powerlaw.PowerLaw, ...] = ()

  @property
  def used(self) -> list[Profile]:
    return [p for p in self.profiles if p.rejected is None]

  def to_json(self, extrapolate_to: float) -> dict:
    at = self.frontier.at(extrapolate_to)
    result = {
        **self.frontier.to_json(),
        "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "points": [{"C": p.c_opt, "N_opt": p.n_opt, "D_opt": p.d_opt,
                    "tokens_per_param": p.d_opt / p.n_opt,
                    "flops_per_token": p.c_opt / p.d_opt,
                    "loss": p.loss_opt, "runs": len(p.n)} for p in self.used],
        "rejected_budgets": [{"C": p.c_nominal, "runs": len(p.n), "reason": p.rejected}
                             for p in self.profiles if p.rejected is not None],
        "budget_rule": ("the budget column" if self.budget_column else
                        f"complete-linkage clusters of log10 C cut at {BUDGET_TOLERANCE_DEX}"),
        "D_opt_rule": ("C and D_opt: the runs' C and D (tokens) at N_opt, each linear in ln N "
                       "on log axes over the budget's points; b fitted on its own"),
        "bootstrap_replicates": self.replicates,
    }
    if self.loss_law is not None:
      samples = self.loss_law_replicates
      result["loss_opt_law"] = {
          "law": "L_opt = H * C**c: each budget's parabola minimum against its C",
          "c": powerlaw.estimate(self.loss_law.exponent, [r.exponent for r in samples],
                                 exponent=True),
          "H": powerlaw.estimate(self.loss_law.coefficient, [r.coefficient for r in samples])}
    if len(self.used) < 3:
      result["interval_note"] = "no interval: an interval needs >= 3 usable budgets"
    return result


def fit(points: inputs.Points, bootstrap: int, seed: int) -> Result:
  """Approach 2 on the final points; raises NotEnoughData when it cannot run."""
  budgets = budget_profiles(points.table)
  frontier = _frontier(budgets)
  used = [p for p in budgets if p.rejected is None]

  def replicate(rng: np.random.Generator):
    resampled = []
    for p in used:
      rows = rng.integers(0, len(p.n), len(p.n))
      resampled.append(profile(p.n[rows], p.d[rows], p.c[rows], p.loss[rows]))
    usable = [p for p in resampled if p.rejected is None]
    return _frontier(resampled), _loss_law(usable)

  replicates = powerlaw.bootstrap(replicate, bootstrap if len(used) >= 3 else 0, seed)
  frontiers = [frontier for frontier, _ in replicates]
  return Result(tuple(budgets), powerlaw.with_samples(frontier, frontiers), len(replicates),
                budget_column="budget" in points.table, loss_law=_loss_law(used),
                loss_law_replicates=tuple(law for _, law in replicates))


def _loss_law(profiles: list[Profile]) -> powerlaw.PowerLaw:
  """The minimum loss of each budget against its C, as a power law (no irreducible term: a
  local description over the budgets' range)."""
  return powerlaw.fit(np.array([p.c_opt for p in profiles]),
                      np.array([p.loss_opt for p in profiles]))
