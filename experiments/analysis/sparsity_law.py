"""Frantar et al. (2023)'s sparsity scaling law, fitted their way (`isoflop analyze --law=sparsity`).

  L(S, N, D) = (a (1 - S)^b + c) N^(-d) + e D^(-f) + g

S is the sparsity, N the non-zero parameters, D the data, both in the input's units (the
authors fit in millions of parameters and 1e5 steps or 1e9 examples; the coefficients a, c, e
depend on them). The fit minimizes the mean Huber loss of the residuals from random starts and
keeps the best. The authors found that objective multimodal; fit.json keeps every start's
objective to show whether it is. The loss is scaled by 1/delta^2 while minimizing: unscaled
(about 1e-5), a default gradient tolerance stops the optimizer long before the minimum.
"""

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure
import numpy as np
import pandas as pd
import scipy.optimize
import scipy.special
import threadpoolctl  # a dependency of scikit-learn, hence of isoflop

from isoflop.experiments.analysis import inputs
from isoflop.train import workdir as workdir_lib

LAW = "L(S, N, D) = (a (1 - S)^b + c) * N^(-d) + e * D^(-f) + g"
NAMES = ("a", "b", "c", "d", "e", "f", "g")
RESIDUALS = ("log", "plain")
DEFAULT_HUBER_DELTA = 1e-3
MIN_POINTS = len(NAMES) + 1
BOOTSTRAP_RANDOM_STARTS = 2  # each bootstrap refit starts from the best fit and these
CSV_UNITS = "N and D in the CSV's units"
SWEEP_UNITS = "N: runs.csv's {} (non-zero parameters); D: runs.csv's {} (tokens, or examples)"
# theta = (log a, b, log c, d, log e, f, log g) with N and D divided by their geometric means:
# positive coefficients and starts that do not depend on the units.
BOUNDS = [(-20.0, 10.0), (0.0, 5.0), (-20.0, 10.0), (0.0, 5.0), (-20.0, 10.0), (0.0, 5.0),
          (-20.0, 10.0)]


@dataclasses.dataclass(frozen=True)
class Data:
  """Points of the fit, checked: 0 <= S < 1, N, D, loss positive."""
  S: np.ndarray
  N: np.ndarray
  D: np.ndarray
  loss: np.ndarray
  source: str
  units: str


@dataclasses.dataclass(frozen=True)
class Fit:
  coefficients: dict  # name: value, in the data's units
  ci95: dict  # name: (lo, hi), or None without bootstrap replicates
  objective: float  # mean Huber loss at the best fit
  start_objectives: list  # each start's, sorted
  replicates: np.ndarray  # (bootstrap, 7) refitted coefficients in NAMES order


def predict(coeffs, S, N, D) -> np.ndarray:
  """The law's loss; coeffs a mapping of NAMES or a sequence in that order."""
  a, b, c, d, e, f, g = (coeffs[k] for k in NAMES) if isinstance(coeffs, dict) else coeffs
  S, N, D = (np.asarray(v, dtype=float) for v in (S, N, D))
  return (a * (1.0 - S) ** b + c) * N ** -d + e * D ** -f + g


def predict_loss(coeffs, s, n, d) -> float:
  """The law at one point (S, N, D)."""
  return float(predict(coeffs, s, n, d))


def _residual(pred, loss, residual: str):
  return np.log(pred) - np.log(loss) if residual == "log" else pred - loss


def objective(coeffs, S, N, D, loss, huber_delta: float = DEFAULT_HUBER_DELTA,
              residual: str = "log") -> float:
  """Mean Huber loss of the residuals, as Frantar et al. (and Hoffmann et al.) report it."""
  r = _residual(predict(coeffs, S, N, D), np.asarray(loss, dtype=float), residual)
  return float(np.mean(scipy.special.huber(huber_delta, r)))


def _scaled_objective(theta, log_keep, log_n, log_d, loss, delta, residual):
  """Mean Huber loss / delta^2 (so that L-BFGS-B's tolerances bite) and its gradient."""
  la, b, lc, d, le, f, lg = theta
  sparse = np.exp(la + b * log_keep - d * log_n)
  dense = np.exp(lc - d * log_n)
  data = np.exp(le - f * log_d)
  floor = np.exp(lg)
  pred = sparse + dense + data + floor
  r = _residual(pred, loss, residual)
  weight = np.clip(r, -delta, delta) / (len(loss) * delta ** 2)
  if residual == "log":
    weight = weight / pred
  grad = np.array([weight @ sparse, weight @ (sparse * log_keep), weight @ dense,
                   -weight @ ((sparse + dense) * log_n), weight @ data,
                   -weight @ (data * log_d), weight.sum() * floor])
  return float(np.mean(scipy.special.huber(delta, r)) / delta ** 2), grad


def _random_start(rng, loss) -> np.ndarray:
  """A start whose terms add up to about the mean loss, the floor g below the smallest."""
  floor = rng.uniform(0.1, 0.9) * loss.min()
  rest = loss.mean() - floor
  data = rng.uniform(0.1, 0.9) * rest
  sparse = rng.uniform(0.1, 0.9) * (rest - data)
  dense = rest - data - sparse
  b, d, f = rng.uniform(0.05, 1.0, 3)
  return np.array([math.log(sparse), b, math.log(dense), d, math.log(data), f, math.log(floor)])


class _Problem:
  """The data in the fit's normalized units, and the conversions to and from them."""

  def __init__(self, S, N, D, loss, delta, residual, scale=None):
    self.n0, self.d0 = scale or (float(np.exp(np.log(N).mean())),
                                 float(np.exp(np.log(D).mean())))
    self.delta = delta
    self.args = (np.log1p(-S), np.log(N / self.n0), np.log(D / self.d0), loss, delta,
                 residual)

  def minimize(self, starts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    best, values = None, []
    for x0 in starts:
      result = scipy.optimize.minimize(
          _scaled_objective, np.clip(x0, *np.array(BOUNDS).T), args=self.args, jac=True,
          method="L-BFGS-B", bounds=BOUNDS,
          options={"maxiter": 5000, "ftol": 1e-10, "gtol": 1e-8})
      if np.isfinite(result.fun):
        values.append(float(result.fun) * self.delta ** 2)
        if best is None or result.fun < best.fun:
          best = result
    if best is None:
      raise inputs.AnalysisInputError("every start of the sparsity-law fit failed; check the data")
    return best.x, values

  def coefficients(self, theta) -> np.ndarray:
    la, b, lc, d, le, f, lg = theta
    scale_n, scale_d = self.n0 ** d, self.d0 ** f
    return np.array([math.exp(la) * scale_n, b, math.exp(lc) * scale_n, d,
                     math.exp(le) * scale_d, f, math.exp(lg)])


def fit(S, N, D, loss, *, huber_delta: float = DEFAULT_HUBER_DELTA, residual: str = "log",
        starts: int = 25, seed: int = 0, bootstrap: int = 200) -> Fit:
  """Best of `starts` seeded random starts, then percentile bootstrap intervals."""
  if residual not in RESIDUALS:
    raise inputs.AnalysisInputError(f"--residual={residual} must be one of {', '.join(RESIDUALS)}")
  if not (huber_delta > 0 and math.isfinite(huber_delta)) or starts < 1 or bootstrap < 0:
    raise inputs.AnalysisInputError("--huber_delta must be positive, --starts >= 1 and "
                                    "--bootstrap >= 0")
  S, N, D, loss = (np.asarray(v, dtype=float) for v in (S, N, D, loss))
  # OpenBLAS threads on these tiny problems spin against each other: 10x slower on a busy host.
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    return _fit(S, N, D, loss, huber_delta, residual, starts, seed, bootstrap)


def _fit(S, N, D, loss, huber_delta, residual, starts, seed, bootstrap) -> Fit:
  rng = np.random.default_rng(seed)
  problem = _Problem(S, N, D, loss, huber_delta, residual)
  theta, values = problem.minimize([_random_start(rng, loss) for _ in range(starts)])
  replicates = []
  for _ in range(bootstrap):
    pick = rng.integers(0, len(loss), len(loss))
    # The same normalization keeps theta's meaning, so the best fit is a start.
    resampled = _Problem(S[pick], N[pick], D[pick], loss[pick], huber_delta, residual,
                         (problem.n0, problem.d0))
    x0 = [theta] + [_random_start(rng, loss[pick]) for _ in range(BOOTSTRAP_RANDOM_STARTS)]
    replicates.append(problem.coefficients(resampled.minimize(x0)[0]))
  replicates = np.array(replicates).reshape(-1, len(NAMES))
  coefficients = dict(zip(NAMES, problem.coefficients(theta).tolist()))
  ci95 = {k: (tuple(np.percentile(replicates[:, i], [2.5, 97.5]).tolist())
              if len(replicates) >= 2 else None) for i, k in enumerate(NAMES)}
  return Fit(coefficients, ci95, objective(coefficients, S, N, D, loss, huber_delta, residual),
             sorted(values), replicates)


def _checked(S, N, D, loss, labels: Sequence[str], source: str, units: str) -> Data:
  """Raises AnalysisInputError naming the first bad row, or when there are too few rows."""
  columns = {"S": S, "N": N, "D": D, "loss": loss}
  for name, values in columns.items():
    ok = np.isfinite(values) & ((values >= 0) & (values < 1) if name == "S" else values > 0)
    if not ok.all():
      first = int(np.flatnonzero(~ok)[0])
      rule = "in [0, 1)" if name == "S" else "a positive finite number"
      raise inputs.AnalysisInputError(f"{name} must be {rule}, but {labels[first]} of {source} "
                                      f"has {name} = {values[first]}; fix or remove that row")
  if len(loss) < MIN_POINTS:
    raise inputs.AnalysisInputError(
        f"the sparsity law has {len(NAMES)} coefficients and needs at least {MIN_POINTS} "
        f"points; {source} has {inputs.plural(len(loss), 'point')}")
  return Data(S, N, D, loss, source, units)


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
  return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def from_csv(path: str) -> Data:
  """Columns S, N, D, loss (others ignored)."""
  frame = inputs._read_csv(path, "CSV file")  # pylint: disable=protected-access
  missing = [c for c in ("S", "N", "D", "loss") if c not in frame]
  if missing:
    raise inputs.AnalysisInputError(
        f"CSV file {path} lacks column(s) {', '.join(missing)}; the sparsity law needs S, N, D "
        f"and loss; found {', '.join(frame.columns) or 'none'}")
  labels = [f"line {i + 2}" for i in range(len(frame))]
  return _checked(*(_numeric(frame, c) for c in ("S", "N", "D", "loss")), labels, path,
                  CSV_UNITS)


def from_sweep(workdir: str, n_convention: str = "kaplan") -> Data:
  """The done rows of runs.csv: sparsity (empty: dense), N_nonzero_<convention> (empty: the
  dense N_<convention>), D, and final_eval_loss where every row has one, else final_train_loss."""
  path = os.path.join(workdir, "runs.csv")
  frame = inputs._read_csv(path, "sweep table")  # pylint: disable=protected-access
  if "status" in frame:
    frame = frame[frame["status"].astype(str).str.strip() == "done"].reset_index(drop=True)
  nonzero, dense = f"N_nonzero_{n_convention}", f"N_{n_convention}"
  d_column = "D" if "D" in frame else "tokens"
  missing = [c for c in (d_column, "name") if c not in frame]
  if nonzero not in frame and dense not in frame:
    missing.append(f"{nonzero} or {dense}")
  if "final_eval_loss" not in frame and "final_train_loss" not in frame:
    missing.append("final_eval_loss or final_train_loss")
  if missing:
    raise inputs.AnalysisInputError(f"sweep table {path} lacks column(s) {', '.join(missing)}")
  if frame.empty:
    raise inputs.AnalysisInputError(f"no run in {path} has status done; finish the sweep first")
  n = _numeric(frame, nonzero) if nonzero in frame else np.full(len(frame), np.nan)
  if dense in frame:
    n = np.where(np.isnan(n), _numeric(frame, dense), n)
  sparsity = _numeric(frame, "sparsity") if "sparsity" in frame else np.zeros(len(frame))
  eval_loss = _numeric(frame, "final_eval_loss") if "final_eval_loss" in frame else None
  use_eval = eval_loss is not None and bool(np.isfinite(eval_loss).all())
  loss = eval_loss if use_eval else _numeric(frame, "final_train_loss")
  labels = ("run " + frame["name"].astype(str)).tolist()
  return _checked(np.nan_to_num(sparsity, nan=0.0), n, _numeric(frame, d_column), loss,
                  labels, path, SWEEP_UNITS.format(nonzero, d_column))


def parse_point(text: str) -> tuple[float, float, float]:
  """An --predict value "S,N,D"."""
  try:
    s, n, d = (float(v) for v in text.split(","))
  except ValueError:
    raise inputs.AnalysisInputError(f"--predict={text} must be S,N,D (three numbers), e.g. "
                                    "--predict=0.75,603.98,5") from None
  if not (0 <= s < 1 and n > 0 and d > 0 and math.isfinite(n) and math.isfinite(d)):
    raise inputs.AnalysisInputError(f"--predict={text} needs 0 <= S < 1 and positive N and D")
  return s, n, d


def _figures(result: Fit, data: Data, out: str) -> list[str]:
  """Predicted against measured loss; loss against N per sparsity at each D (when few)."""
  sparsities = np.unique(data.S)
  palette = matplotlib.colormaps["viridis"]
  color = {s: palette(i / max(len(sparsities) - 1, 1)) for i, s in enumerate(sparsities)}
  fig = Figure(figsize=(6, 5.5), layout="constrained")
  ax = fig.add_subplot()
  pred = predict(result.coefficients, data.S, data.N, data.D)
  for s in sparsities:
    ax.scatter(data.loss[data.S == s], pred[data.S == s], s=18, color=color[s], label=f"S = {s:g}")
  ends = [min(data.loss.min(), pred.min()), max(data.loss.max(), pred.max())]
  ax.plot(ends, ends, color="gray", lw=1, ls="--", label="y = x")
  ax.set(xlabel="measured loss", ylabel="predicted loss",
         title=f"sparsity law fit ({len(data.loss)} points, objective {result.objective:.3g})")
  ax.legend(fontsize=8)
  paths = [os.path.join(out, "sparsity_law.png")]
  fig.savefig(paths[0], dpi=150)
  budgets = np.unique(data.D)
  if len(budgets) > 6:  # D varies run by run (e.g. tokens per parameter): no common panels
    return paths
  fig = Figure(figsize=(4 * len(budgets), 4), layout="constrained")
  axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
  for ax, d in zip(axes, budgets):
    at = data.D == d
    for s in sparsities:
      here = at & (data.S == s)
      if here.any():
        ax.scatter(data.N[here], data.loss[here], s=18, color=color[s], label=f"S = {s:g}")
        grid = np.geomspace(data.N[here].min() / 1.5, data.N[here].max() * 1.5, 50)
        ax.plot(grid, predict(result.coefficients, s, grid, d), color=color[s], lw=1)
    ax.set(xscale="log", xlabel="non-zero parameters N (the data's units)", title=f"D = {d:g}")
  axes[0].set_ylabel("loss")
  axes[0].legend(fontsize=8)
  paths.append(os.path.join(out, "sparsity_law_loss_vs_N.png"))
  fig.savefig(paths[1], dpi=150)
  return paths


def _write_json(path: str, payload: dict) -> None:
  """Through a temporary file in the same directory, so a reader never sees half of it."""
  handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  try:
    with os.fdopen(handle, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2, allow_nan=False)
      f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _interval(values) -> list | None:
  return None if values is None else [float(v) for v in values]


def run(csv: str | None, out: str, predict: Sequence[tuple] = (), *,
        huber_delta: float | None = None, residual: str = "log", starts: int = 25,
        bootstrap: int = 200, seed: int = 0, workdir: str | None = None,
        n_convention: str = "kaplan") -> tuple[dict, list[str]]:
  """Fits the law to a CSV or a sweep, writes the figures then fit.json; (fit.json, paths).

  Raises AnalysisInputError on bad input (an unwritable --out first), writing nothing.
  """
  if (csv is None) == (workdir is None):
    raise inputs.AnalysisInputError("pass exactly one of --csv=FILE and --workdir=SWEEP_DIR")
  try:
    workdir_lib.check_writable(out, flag="--out")
  except workdir_lib.WorkdirError as e:
    raise inputs.AnalysisInputError(str(e)) from None
  delta = DEFAULT_HUBER_DELTA if huber_delta is None else huber_delta
  data = from_csv(csv) if csv is not None else from_sweep(workdir, n_convention)
  started = time.perf_counter()
  result = fit(data.S, data.N, data.D, data.loss, huber_delta=delta, residual=residual,
               starts=starts, seed=seed, bootstrap=bootstrap)
  predictions = []
  for s, n, d in predict:
    entry = {"S": s, "N": n, "D": d, "loss": predict_loss(result.coefficients, s, n, d)}
    samples = [predict_loss(dict(zip(NAMES, r)), s, n, d) for r in result.replicates]
    entry["ci95"] = (np.percentile(samples, [2.5, 97.5]).tolist() if len(samples) >= 2
                     else None)
    predictions.append(entry)
  fit_json = {
      "law": LAW, "source": data.source, "n_points": len(data.loss), "units": data.units,
      "coefficients": {k: {"value": v, "ci95": _interval(result.ci95[k])}
                       for k, v in result.coefficients.items()},
      "objective": result.objective, "huber_delta": delta, "residual": residual,
      "starts": starts, "seed": seed, "bootstrap": bootstrap,
      "start_objectives": result.start_objectives, "predictions": predictions,
      "fit_seconds": round(time.perf_counter() - started, 2)}
  os.makedirs(out, exist_ok=True)
  paths = _figures(result, data, out)
  fit_json["figures"] = [os.path.basename(p) for p in paths]
  fit_path = os.path.join(out, "fit.json")
  _write_json(fit_path, fit_json)
  return fit_json, paths + [fit_path]


def summary(fit_json: dict) -> list[str]:
  """Coefficients with their 95% intervals, the objective and the predictions."""
  def shown(value, ci):
    return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
  lines = [f"{fit_json['law']}: {fit_json['n_points']} points from {fit_json['source']} "
           f"({fit_json['units']}); {fit_json['bootstrap']} bootstrap resamples, 95% intervals "
           "in brackets",
           "  " + ", ".join(f"{k} = {shown(v['value'], v['ci95'])}"
                            for k, v in fit_json["coefficients"].items()),
           f"  objective (mean Huber, delta {fit_json['huber_delta']:g}, {fit_json['residual']} "
           f"residual) = {fit_json['objective']:.4g}; best of {fit_json['starts']} starts, which "
           f"ranged to {max(fit_json['start_objectives']):.4g}"]
  for p in fit_json["predictions"]:
    lines.append(f"  L(S={p['S']:g}, N={p['N']:g}, D={p['D']:g}) = {shown(p['loss'], p['ci95'])}")
  return lines
