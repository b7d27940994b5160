"""Chinchilla Approach 1: the lower envelope of training curves (Hoffmann et al. 2022, sec. 3.1).

Along each run's curve, compute is C(t) = flops_per_token x tokens_seen(t) (FLOPs) and data is
D(t) = tokens_seen(t). At BINS compute values spaced evenly in ln C across all curves, every
curve that reaches that compute is interpolated linearly in ln C; the lowest loss is the
envelope, with the N of its run and the D that run had seen there. An envelope point is kept
only when runs both smaller and larger than the winner reach that compute: otherwise the best
size may lie outside the sizes trained, and the point would sit at the sweep's edge (the
smallest model wins every compute that larger runs have not reached yet). Then N_opt = G C^a
and D_opt = G' C^b by least squares in log-log space. The bootstrap resamples runs with
replacement.
"""

import dataclasses

import numpy as np
import pandas as pd

from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw

BINS = 30


def envelope(curves: tuple[inputs.Curve, ...], bins: int = BINS) -> pd.DataFrame:
  """Lower envelope: columns C (FLOPs), N_opt, D_opt (tokens), loss, run."""
  log_flops = [np.log(curve.flops) for curve in curves]
  log_grid = np.linspace(min(f[0] for f in log_flops), max(f[-1] for f in log_flops), bins)
  losses = np.full((len(curves), bins), np.inf)
  for row, (curve, log_f) in enumerate(zip(curves, log_flops, strict=True)):
    reached = (log_grid >= log_f[0]) & (log_grid <= log_f[-1])
    losses[row, reached] = np.interp(log_grid[reached], log_f, curve.loss)
  sizes = np.array([curve.n for curve in curves])
  points = []
  for column in range(bins):
    reached = np.isfinite(losses[:, column])
    if not reached.any():
      continue
    best = int(np.argmin(losses[:, column]))
    if not sizes[reached].min() < sizes[best] < sizes[reached].max():
      continue
    c = float(np.exp(log_grid[column]))
    points.append({"C": c, "N_opt": sizes[best], "D_opt": c / curves[best].flops_per_token,
                   "loss": losses[best, column], "run": curves[best].name})
  return pd.DataFrame(points, columns=["C", "N_opt", "D_opt", "loss", "run"])


def _frontier(curves: tuple[inputs.Curve, ...]) -> tuple[powerlaw.Frontier, pd.DataFrame]:
  points = envelope(curves)
  if points["N_opt"].nunique() < 2:
    raise inputs.NotEnoughData(
        "the lower envelope of the training curves has its minimum at fewer than 2 run sizes "
        f"(with smaller and larger runs reaching the same compute); {len(curves)} runs")
  frontier = powerlaw.frontier_from_points(*(points[k].to_numpy() for k in ("C", "N_opt",
                                                                             "D_opt")))
  return frontier, points


@dataclasses.dataclass(frozen=True)
class Result:
  frontier: powerlaw.Frontier
  points: pd.DataFrame
  runs: int

  def to_json(self, extrapolate_to: float) -> dict:
    at = self.frontier.at(extrapolate_to)
    return {
        **self.frontier.to_json(),
        "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "points": self.points.to_dict(orient="records"),
        "bins": BINS, "runs": self.runs,
        "bootstrap_replicates": len(self.frontier.n_samples),
    }


def fit(points: inputs.Points, bootstrap: int, seed: int) -> Result:
  """Approach 1 on the runs' training curves; raises NotEnoughData when it cannot run."""
  curves = points.curves
  if not curves:
    raise inputs.NotEnoughData(points.no_curves_reason)
  if len(curves) < 3:
    raise inputs.NotEnoughData(f"needs >= 3 runs' training curves; found {len(curves)}")
  frontier, envelope_points = _frontier(curves)

  def replicate(rng: np.random.Generator) -> powerlaw.Frontier:
    rows = rng.integers(0, len(curves), len(curves))
    return _frontier(tuple(curves[i] for i in rows))[0]

  replicates = powerlaw.bootstrap(replicate, bootstrap, seed)
  return Result(powerlaw.with_samples(frontier, replicates), envelope_points, len(curves))
