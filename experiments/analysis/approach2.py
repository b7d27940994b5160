"""Chinchilla Approach 2: parabolas through isoFLOP profiles (Hoffmann et al. 2022, sec. 3.2).

Budgets are the values of a `budget` column when the input has one; otherwise the clusters of
log10 C under complete linkage cut at 0.05, so that any two points of a budget have C within a
factor 10^0.05 (12%) of each other. In each budget with >= 3 distinct N, loss is fitted by a
parabola in ln N; a parabola that opens downward, or whose minimum lies outside the sizes
sampled, is rejected (and recorded). Its vertex is N_opt. The budget's C is the C at N_opt,
linear in (ln N, ln C) over the budget's points and held at the ends of their range of N
(the common C when they share one); D_opt = C / (6 N_opt).
Then N_opt = G C^a and D_opt = G' C^b by least squares in log-log space (so b = 1 - a).
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
  """One budget's points (N in parameters, C in FLOPs, loss in nats) and its parabola.

  `parabola` holds (p2, p1, p0) of loss = p2 (ln N)^2 + p1 ln N + p0, or None when the budget
  has fewer than 3 distinct N; `rejected` says why the budget gives no N_opt (None if it does).
  """
  n: np.ndarray
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

  @property
  def c_opt(self) -> float:
    log_n, log_c = np.log(self.n), np.log(self.c)
    if np.ptp(log_c) == 0:
      return float(self.c[0])
    at = np.clip(np.log(self.n_opt), log_n.min(), log_n.max())  # no extrapolation of C
    return float(np.exp(np.polyval(np.polyfit(log_n, log_c, 1), at)))


def profile(n: np.ndarray, c: np.ndarray, loss: np.ndarray) -> Profile:
  if len(np.unique(n)) < MIN_SIZES:
    return Profile(n, c, loss, None, f"fewer than {MIN_SIZES} distinct N")
  parabola = np.polyfit(np.log(n), loss, 2)
  if parabola[0] <= 0:
    return Profile(n, c, loss, parabola, OPENS_DOWNWARD)
  vertex = -parabola[1] / (2.0 * parabola[0])
  if not np.log(n).min() <= vertex <= np.log(n).max():  # an extrapolated minimum is a guess
    return Profile(n, c, loss, parabola, NOT_BRACKETED)
  return Profile(n, c, loss, parabola, None)


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


def _frontier(profiles: list[Profile]) -> powerlaw.Frontier:
  usable = [p for p in profiles if p.rejected is None]
  if len(usable) < 2:
    raise inputs.NotEnoughData(
        f"needs >= 2 compute budgets with >= {MIN_SIZES} distinct N and an upward parabola; "
        f"found {len(usable)} of {len(profiles)} budgets")
  c = np.array([p.c_opt for p in usable])
  n_opt = np.array([p.n_opt for p in usable])
  return powerlaw.frontier_from_points(c, n_opt, c / (6.0 * n_opt))


@dataclasses.dataclass(frozen=True)
class Result:
  profiles: tuple[Profile, ...]
  frontier: powerlaw.Frontier
  replicates: int  # bootstrap replicates that could be fitted
  budget_column: bool = False

  @property
  def used(self) -> list[Profile]:
    return [p for p in self.profiles if p.rejected is None]

  def to_json(self, extrapolate_to: float) -> dict:
    at = self.frontier.at(extrapolate_to)
    result = {
        **self.frontier.to_json(),
        "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "points": [{"C": p.c_opt, "N_opt": p.n_opt, "D_opt": p.c_opt / (6.0 * p.n_opt),
                    "loss": p.loss_opt, "runs": len(p.n)} for p in self.used],
        "rejected_budgets": [{"C": p.c_nominal, "runs": len(p.n), "reason": p.rejected}
                             for p in self.profiles if p.rejected is not None],
        "budget_rule": ("the budget column" if self.budget_column else
                        f"complete-linkage clusters of log10 C cut at {BUDGET_TOLERANCE_DEX}"),
        "D_opt_rule": "D_opt = C / (6 N_opt)",
        "bootstrap_replicates": self.replicates,
    }
    if len(self.used) < 3:
      result["interval_note"] = "no interval: an interval needs >= 3 usable budgets"
    return result


def fit(points: inputs.Points, bootstrap: int, seed: int) -> Result:
  """Approach 2 on the final points; raises NotEnoughData when it cannot run."""
  table = points.table
  n, c, loss = (table[k].to_numpy() for k in ("N", "C", "loss"))
  profiles = [profile(n[rows], c[rows], loss[rows]) for rows in group_budgets(table)]
  frontier = _frontier(profiles)
  used = [p for p in profiles if p.rejected is None]

  def replicate(rng: np.random.Generator) -> powerlaw.Frontier:
    resampled = []
    for p in used:
      rows = rng.integers(0, len(p.n), len(p.n))
      resampled.append(profile(p.n[rows], p.c[rows], p.loss[rows]))
    return _frontier(resampled)

  replicates = powerlaw.bootstrap(replicate, bootstrap if len(used) >= 3 else 0, seed)
  return Result(tuple(profiles), powerlaw.with_samples(frontier, replicates), len(replicates),
                budget_column="budget" in table)
