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

Which curves (`SOURCES`): "curves" uses every logged point of each run's training curve. Under
a schedule that decays the learning rate towards the end of the run (cosine, WSD), only the
final point is decayed: the envelope's loss at every other compute is higher than a run
decayed at that length would reach. "final" uses only the runs' final points (the loss of
the input, the held-out loss when a sweep has one): one curve per model size N through the
final points of its runs of different lengths (loss linear in ln C between them), so every
point compared is at the end of its own schedule (Hoffmann et al. trained each size to several
horizons for this reason). It needs >= 3 sizes trained to >= 2 lengths each; sizes trained
once are left out.
"""

import dataclasses

import numpy as np
import pandas as pd

from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw

BINS = 30
SOURCES = {"curves": "every logged point of each run's training curve",
           "final": "each model size's final points (runs of one N at several lengths)"}
# Schedules that do not depend on the run's length: a point of a long run is then the end of
# a shorter run. Under the others (cosine, linear, wsd) it is not: its rate has not decayed.
LENGTH_FREE_SCHEDULES = ("constant", "inverse_sqrt")
UNDECAYED_NOTE = ("the runs' learning rate decays towards their end ({}), so the intermediate "
                  "points of their curves are not decayed and the envelope's loss between "
                  "final points is too high; --approach1_points=final uses only final points")


def final_point_curves(table: pd.DataFrame) -> tuple[inputs.Curve, ...]:
  """One curve per model size: its runs' final (D, loss), at FLOPs per token C/D."""
  curves = []
  for n, runs in table.groupby("N", sort=True):
    if runs["D"].nunique() < 2:
      continue
    runs = runs.sort_values("D", kind="stable")
    flops_per_token = float(np.exp(np.mean(np.log(runs["C"] / runs["D"]))))
    name = f"N={n:.6g} ({inputs.plural(len(runs), 'run')})"
    curves.append(inputs.Curve(name, float(n), flops_per_token, runs["D"].to_numpy(float),
                               runs["loss"].to_numpy(float)))
  return tuple(curves)


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
        f"(with smaller and larger runs reaching the same compute); "
        f"{inputs.plural(len(curves), 'run')}")
  frontier = powerlaw.frontier_from_points(*(points[k].to_numpy() for k in ("C", "N_opt",
                                                                             "D_opt")))
  return frontier, points


@dataclasses.dataclass(frozen=True)
class Result:
  frontier: powerlaw.Frontier
  points: pd.DataFrame
  runs: int
  curves: int  # one per run, or one per model size with --approach1_points=final
  source: str = "curves"
  schedules: tuple[str, ...] = ()  # the runs' learning-rate schedules, where known

  def to_json(self, extrapolate_to: float) -> dict:
    at = self.frontier.at(extrapolate_to)
    result = {
        **self.frontier.to_json(),
        "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "points": self.points.to_dict(orient="records"),
        "envelope_of": SOURCES[self.source], "schedules": list(self.schedules),
        "bins": BINS, "runs": self.runs, "curves": self.curves,
        "bootstrap_replicates": len(self.frontier.n_samples),
    }
    decaying = [s for s in self.schedules if s not in LENGTH_FREE_SCHEDULES]
    if self.source == "curves" and decaying:
      result["note"] = UNDECAYED_NOTE.format(", ".join(decaying))
    return result


def _curves(points: inputs.Points, source: str) -> tuple[inputs.Curve, ...]:
  if source not in SOURCES:
    raise inputs.AnalysisInputError(f"unknown Approach-1 points {source!r}; one of "
                                    f"{', '.join(SOURCES)}")
  if source == "final":
    curves = final_point_curves(points.table)
    if len(curves) < 3:
      raise inputs.NotEnoughData(
          "with final points only, needs >= 3 model sizes each trained to >= 2 lengths "
          f"(runs of one N and different D); found {len(curves)}")
    return curves
  if not points.curves:
    raise inputs.NotEnoughData(points.no_curves_reason)
  if len(points.curves) < 3:
    raise inputs.NotEnoughData(f"needs >= 3 runs' training curves; found {len(points.curves)}")
  return points.curves


def fit(points: inputs.Points, bootstrap: int, seed: int, source: str = "curves") -> Result:
  """Approach 1 on the curves `source` names; raises NotEnoughData when it cannot run."""
  curves = _curves(points, source)
  frontier, envelope_points = _frontier(curves)

  def replicate(rng: np.random.Generator) -> powerlaw.Frontier:
    rows = rng.integers(0, len(curves), len(curves))
    return _frontier(tuple(curves[i] for i in rows))[0]

  replicates = powerlaw.bootstrap(replicate, bootstrap, seed)
  schedules = tuple(sorted({c.schedule for c in points.curves or () if c.schedule}))
  runs = (len(curves) if source == "curves"
          else int(points.table["N"].isin([c.n for c in curves]).sum()))
  return Result(powerlaw.with_samples(frontier, replicates), envelope_points, runs,
                len(curves), source, schedules)
