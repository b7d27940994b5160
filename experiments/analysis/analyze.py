"""`isoflop analyze`: Chinchilla's three approaches on a sweep or a CSV; fit.json and figures.

  isoflop analyze --workdir=runs/sweep --out=runs/sweep/analysis
  isoflop analyze --csv=points.csv --out=runs/fit [--drop_highest_loss=5] [--bootstrap=200]
  isoflop analyze --workdir=runs/sweep --out=DIR --approach1_points=final
  isoflop analyze --law=sparsity --csv=S_N_D_loss.csv --out=DIR [--predict=0.75,603.98,5]

--law=sparsity fits Frantar et al. (2023)'s L(S, N, D) instead (`sparsity_law`).

Every fitted value in fit.json is {"value": x, "ci95": [lo, hi], "identified": bool}: a
percentile bootstrap interval (null without enough replicates) and whether it pins the value
down (`powerlaw.IDENTIFIED_RULE`, null without an interval). N in parameters, D in tokens, C in
FLOPs. numpy's and scipy's warnings (overflow in a wild bootstrap refit, ...) are counted into
fit.json's `warnings` instead of reaching the terminal.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import warnings
from typing import Sequence

import numpy as np

from isoflop.experiments.analysis import approach1
from isoflop.experiments.analysis import approach2
from isoflop.experiments.analysis import approach3
from isoflop.experiments.analysis import figures
from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw
from isoflop.experiments.analysis import sparsity_law
from isoflop.train import workdir as workdir_lib

PROG = "isoflop analyze"
EXIT_BAD_INPUT = 2
CHINCHILLA_BUDGET = 5.76e23  # FLOPs, Chinchilla's training compute (Hoffmann et al. 2022)
# Without --extrapolate_to, N_opt and D_opt are reported (and the frontiers drawn) up to this
# factor past the largest compute in the data: further out, the fit says little.
DEFAULT_EXTRAPOLATION = 10.0
MAX_WARNING_MESSAGES = 5  # distinct messages kept per phase in fit.json
APPROACHES = {"approach1": approach1.fit, "approach2": approach2.fit, "approach3": approach3.fit}
LAWS = ("chinchilla", "sparsity")
# Flags of one law only, refused with the other rather than silently ignored.
SPARSITY_FLAGS = ("predict", "huber_delta", "residual", "starts")
CHINCHILLA_FLAGS = ("flop_convention", "extrapolate_to", "drop_highest_loss", "approach1_points")
CONTRAST = {"kaplan": ("kaplan", "kaplan"), "chinchilla": ("chinchilla", "chinchilla")}
CONTRAST_TITLES = {"kaplan": "Kaplan: N without embeddings, C = C_kaplan",
                   "chinchilla": "Chinchilla: N with embeddings, C = C_chinchilla"}
PORIAN_NOTE = ("Porian et al. (2024) attribute the gap between Kaplan et al.'s and Hoffmann et "
               "al.'s exponents largely to Kaplan counting N without the embedding parameters "
               "(and C with the matching FLOPs), which bends N_opt(C) at small scale.")


@dataclasses.dataclass(frozen=True)
class Analysis:
  fit: dict  # the content of fit.json
  paths: list[str]  # files written: the figures, then fit.json


def _load(csv: str | None, workdir: str | None, n_convention: str, flop_convention: str,
          drop_highest_loss: int) -> inputs.Points:
  if csv is not None:
    points = inputs.from_csv(csv)
  else:
    points = inputs.from_sweep(workdir, n_convention, flop_convention)
  return inputs.drop_highest_loss(points, drop_highest_loss)


@contextlib.contextmanager
def counting_warnings(counts: dict, phase: str):
  """Keeps warnings raised inside off the terminal, counting them by message in counts[phase].

  Wild bootstrap refits overflow and matplotlib warns about empty bands: on the terminal these
  look like failures of the analysis, which the fits already handle.
  """
  seen = counts.setdefault(phase, collections.Counter())
  with warnings.catch_warnings():
    warnings.simplefilter("always")  # count every one, not only the first per code line
    warnings.showwarning = (lambda message, category, *_:
                            seen.update([f"{category.__name__}: {message}"]))
    yield


def _warnings_json(counts: dict) -> dict:
  """fit.json's `warnings`: per phase with any, the count and the commonest messages."""
  return {phase: {"count": sum(seen.values()),
                  "messages": [m for m, _ in seen.most_common(MAX_WARNING_MESSAGES)]}
          for phase, seen in counts.items() if seen}


def _run(points: inputs.Points, names: Sequence[str], bootstrap: int, seed: int,
         approach1_points: str = "curves", warning_counts: dict | None = None,
         phase_prefix: str = "") -> dict:
  """Each approach's result, or the reason (a string) it was skipped.

  Warnings are counted into warning_counts[phase_prefix + approach name].
  """
  options = {"approach1": {"source": approach1_points}}
  counts = {} if warning_counts is None else warning_counts
  results = {}
  for name in names:
    try:
      with counting_warnings(counts, phase_prefix + name):
        results[name] = APPROACHES[name](points, bootstrap, seed, **options.get(name, {}))
    except inputs.NotEnoughData as e:
      results[name] = str(e)
  return results


def _as_json(result, extrapolate_to: float) -> dict:
  if isinstance(result, str):
    return {"skipped": True, "reason": result}
  return result.to_json(extrapolate_to)


def _frontier_and_points(result) -> tuple:
  """(Frontier, (C, N_opt, D_opt) arrays or None) of an approach's result, for the figures."""
  if isinstance(result, approach3.Result):
    return result.frontier(), None
  if isinstance(result, approach2.Result):
    return result.frontier, approach2.optima(result.used)
  return result.frontier, tuple(result.points[k].to_numpy() for k in ("C", "N_opt", "D_opt"))


def _contrast(workdir: str, main_conventions: tuple, main_results: dict, bootstrap: int,
              seed: int, drop_highest_loss: int, warning_counts: dict) -> tuple[dict, dict]:
  """Approaches 2 and 3 under Kaplan's and Chinchilla's conventions: (fit.json part, panels)."""
  part, panels = {"note": PORIAN_NOTE}, {}
  for label, (n_convention, flop_convention) in CONTRAST.items():
    if (n_convention, flop_convention) == main_conventions:
      results = {k: main_results[k] for k in ("approach2", "approach3")}
    else:
      try:
        points = _load(None, workdir, n_convention, flop_convention, drop_highest_loss)
      except inputs.AnalysisInputError as e:
        part[label] = {"skipped": True, "reason": str(e)}
        continue
      results = _run(points, ("approach2", "approach3"), bootstrap, seed,
                     warning_counts=warning_counts, phase_prefix=f"contrast {label} ")
    entry = {"n_convention": n_convention, "flop_convention": flop_convention}
    for name, result in results.items():
      with counting_warnings(warning_counts, "contrast"):
        entry[name] = _as_json(result, CHINCHILLA_BUDGET)
      if not isinstance(result, str):
        entry[name] = {"a": entry[name]["a"]}
    part[label] = entry
    usable = {k: _frontier_and_points(r) for k, r in results.items() if not isinstance(r, str)}
    if usable:
      panels[CONTRAST_TITLES[label]] = usable
  return part, panels


def _clean(value):
  """Plain JSON values: numpy scalars to Python numbers, NaN and infinities to null."""
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, (np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def write_json_atomically(path: str, payload: dict) -> None:
  """Writes to a temporary file in the same directory, then renames it over `path`."""
  handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  try:
    with os.fdopen(handle, "w", encoding="utf-8") as f:
      json.dump(_clean(payload), f, indent=2, allow_nan=False)
      f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; fit.json is meant to be shared
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def default_extrapolation(c_range: tuple[float, float]) -> float:
  """Where N_opt and D_opt are reported without --extrapolate_to: a decade past the data."""
  return DEFAULT_EXTRAPOLATION * c_range[1]


def _compute_range(points: inputs.Points, frontiers: dict) -> tuple[float, float]:
  """The compute (FLOPs) of the points and of the approaches' optima."""
  # The envelope of Approach 1 reaches below the smallest final compute.
  c_seen = [points.table["C"].to_numpy()] + [p[0] for _, p in frontiers.values()
                                              if p is not None]
  return float(min(c.min() for c in c_seen)), float(max(c.max() for c in c_seen))


def _check_out(out: str) -> None:
  try:
    workdir_lib.check_writable(out, flag="--out")
  except workdir_lib.WorkdirError as e:
    raise inputs.AnalysisInputError(str(e)) from None


def run_analysis(*, out: str, csv: str | None = None, workdir: str | None = None,
                 n_convention: str = "chinchilla", flop_convention: str = "chinchilla",
                 bootstrap: int = 200, seed: int = 0, extrapolate_to: float | None = None,
                 drop_highest_loss: int = 0, approach1_points: str = "curves") -> Analysis:
  """Fits the three approaches, writes the figures then fit.json into `out`.

  `extrapolate_to` (FLOPs) is where N_opt and D_opt are reported and how far the frontiers are
  drawn; None: `default_extrapolation` of the data. Raises AnalysisInputError on bad input
  (an --out that cannot be written included, checked first), or when no approach can run;
  nothing is written then.
  """
  if (csv is None) == (workdir is None):
    raise inputs.AnalysisInputError("pass exactly one of --csv=FILE and --workdir=SWEEP_DIR")
  if bootstrap < 0 or drop_highest_loss < 0:
    raise inputs.AnalysisInputError("--bootstrap and --drop_highest_loss must be >= 0")
  if extrapolate_to is not None and not (math.isfinite(extrapolate_to) and extrapolate_to > 0):
    raise inputs.AnalysisInputError(f"--extrapolate_to={extrapolate_to} must be positive FLOPs")
  _check_out(out)
  points = _load(csv, workdir, n_convention, flop_convention, drop_highest_loss)
  warning_counts: dict = {}
  results = _run(points, list(APPROACHES), bootstrap, seed, approach1_points, warning_counts)
  if all(isinstance(r, str) for r in results.values()):
    reasons = "; ".join(f"{k}: {r}" for k, r in results.items())
    raise inputs.AnalysisInputError(
        f"no approach can run on the {inputs.plural(len(points.table), 'point')} of "
        f"{points.source}: {reasons}")
  ran = {k: r for k, r in results.items() if not isinstance(r, str)}
  frontiers = {k: _frontier_and_points(r) for k, r in ran.items()}
  c_range = _compute_range(points, frontiers)
  extrapolated_by = "--extrapolate_to" if extrapolate_to is not None else (
      f"default: {DEFAULT_EXTRAPOLATION:g} x the largest compute in the data")
  if extrapolate_to is None:
    extrapolate_to = default_extrapolation(c_range)
  fit = {"inputs": {"count": len(points.table), "source": points.source,
                    "loss_column": points.loss_column, "dropped_highest_loss": drop_highest_loss,
                    "compute": points.compute_label},
         "n_convention": n_convention, "flop_convention": flop_convention,
         "bootstrap": bootstrap, "seed": seed, "extrapolate_to": extrapolate_to,
         "extrapolate_to_from": extrapolated_by, "approach1_points": approach1_points,
         "identified_rule": powerlaw.IDENTIFIED_RULE}
  for name, result in results.items():
    with counting_warnings(warning_counts, name):
      fit[name] = _as_json(result, extrapolate_to)
  panels = {}
  if workdir is not None:
    fit["contrast"], panels = _contrast(workdir, (n_convention, flop_convention), results,
                                        bootstrap, seed, drop_highest_loss, warning_counts)

  os.makedirs(out, exist_ok=True)
  table = points.table
  paths = []
  with counting_warnings(warning_counts, "figures"):
    # Drawn even when Approach 2 is skipped: the profiles show what the sweep lacks.
    skipped = results.get("approach2") if isinstance(results.get("approach2"), str) else None
    profiles = (ran["approach2"].profiles if "approach2" in ran
                else approach2.budget_profiles(table))
    paths += figures.isoflop_curves(profiles, out, skipped)
    paths += figures.optimal_scaling(frontiers, c_range, extrapolate_to, out,
                                     points.compute_label)
    if "approach3" in ran:
      paths += figures.approach3_contours(ran["approach3"], table["N"].to_numpy(),
                                          table["C"].to_numpy(), out, points.compute_label)
    if panels:
      paths += figures.contrast(panels, c_range, out)
  fit["figures"] = [os.path.basename(p) for p in paths]
  fit["warnings"] = _warnings_json(warning_counts)
  fit_path = os.path.join(out, "fit.json")
  write_json_atomically(fit_path, fit)
  return Analysis(fit, paths + [fit_path])


POORLY_IDENTIFIED = "(poorly identified)"


def _interval(estimate: dict, digits: int = 4) -> str:
  value, ci = estimate["value"], estimate["ci95"]
  text = f"{value:.{digits}g}"
  text += f" [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else ""
  # Older fit.json files have no "identified": nothing to flag there.
  return text + (f" {POORLY_IDENTIFIED}" if estimate.get("identified") is False else "")


def summary(fit: dict) -> list[str]:
  """The human summary: a per approach, Approach 3's constants, N_opt at the target budget."""
  inputs_ = fit["inputs"]
  lines = [f"{inputs_['count']} points from {inputs_['source']} (loss: {inputs_['loss_column']});"
           f" N: {fit['n_convention']}, C: {fit['flop_convention']}; "
           f"{fit['bootstrap']} bootstrap resamples, 95% intervals in brackets"]
  for name in APPROACHES:
    entry = fit[name]
    if entry.get("skipped"):
      lines.append(f"{name}: skipped: {entry['reason']}")
      continue
    lines.append(f"{name}: a = {_interval(entry['a'], 3)}, b = {_interval(entry['b'], 3)}; "
                 f"N_opt({fit['extrapolate_to']:.3g} FLOPs) = {_interval(entry['N_opt'], 3)}")
    if entry.get("loss_opt_law"):
      law = entry["loss_opt_law"]
      lines.append(f"  loss at N_opt: L_opt = H * C**c, c = {_interval(law['c'], 3)}, "
                   f"H = {_interval(law['H'])}")
    if name == "approach3":
      lines.append("  " + ", ".join(f"{k} = {_interval(entry[k])}"
                                    for k in ("E", "A", "B", "alpha", "beta", "G")))
      lines.append("  FLOPs per token kappa * N**phi: " + ", ".join(
          f"{k} = {_interval(entry[k])}" for k in ("kappa", "phi")))
  for label in CONTRAST:
    entry = fit.get("contrast", {}).get(label)
    if entry and not entry.get("skipped"):
      parts = [f"{k} a = {_interval(v['a'], 3)}" for k, v in entry.items()
               if isinstance(v, dict) and "a" in v]
      lines.append(f"contrast {label}: " + ("; ".join(parts) or "no approach ran"))
  if any(POORLY_IDENTIFIED in line for line in lines):
    lines.append(f"{POORLY_IDENTIFIED}: the 95% interval spans more than a factor of "
                 f"{powerlaw.MAX_SCALE_RATIO:g} (exponents: more than "
                 f"{powerlaw.MAX_EXPONENT_WIDTH:g}), or too many bootstrap refits failed; the "
                 "data do not pin these values down (fit.json: identified_rule)")
  count = sum(phase["count"] for phase in fit.get("warnings", {}).values())
  if count:
    lines.append(f"{inputs.plural(count, 'numerical warning')} (overflow in bootstrap refits and "
                 "the like) kept off the terminal: see fit.json's warnings")
  return lines


def _flags():
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_enum("law", "chinchilla", LAWS, "chinchilla: the three approaches to "
                    "L(N, D); sparsity: Frantar et al. (2023)'s L(S, N, D) on columns S, N, D, "
                    "loss (or a sweep's sparsity, N_nonzero_<n_convention>, D)", **define)
  flags.DEFINE_string("workdir", None, "sweep directory holding runs.csv", **define)
  flags.DEFINE_string("csv", None, "CSV of points: N, loss, and D (tokens) or C (FLOPs); the "
                      "other from C = 6 N D", **define)
  flags.DEFINE_string("out", None, "directory for fit.json and the figures", **define)
  flags.DEFINE_enum("n_convention", "chinchilla", inputs.N_CONVENTIONS,
                    "parameter count: N_<convention> of runs.csv (with --csv, a label); "
                    "--law=sparsity reads N_nonzero_<convention>, kaplan unless given",
                    **define)
  flags.DEFINE_enum("flop_convention", "chinchilla", inputs.FLOP_CONVENTIONS,
                    "training FLOPs: C_<convention> of runs.csv (with --csv, a label)",
                    **define)
  flags.DEFINE_integer("bootstrap", 200, "bootstrap resamples for the 95% intervals",
                       lower_bound=0, **define)
  flags.DEFINE_integer("seed", 0, "seed of the bootstrap", **define)
  flags.DEFINE_float("extrapolate_to", None, "compute (FLOPs) at which to report N_opt and "
                     "D_opt, and up to which the optimal-scaling figure draws the frontiers; "
                     f"default {DEFAULT_EXTRAPOLATION:g} x the data's largest compute (a "
                     f"decade), e.g. {CHINCHILLA_BUDGET:g} for Chinchilla's budget", **define)
  flags.DEFINE_integer("drop_highest_loss", 0, "drop this many highest-loss points first",
                       lower_bound=0, **define)
  flags.DEFINE_enum("approach1_points", "curves", list(approach1.SOURCES),
                    "Approach 1's envelope: every point of the training curves, or only the "
                    "runs' final points (decayed under any schedule; needs sizes trained to "
                    "several lengths)", **define)
  flags.DEFINE_multi_string("predict", None, "--law=sparsity: report the fitted loss at S,N,D "
                            "(the data's units), e.g. --predict=0.75,603.98,5",
                            **define)
  flags.DEFINE_float("huber_delta", None, "--law=sparsity: the Huber loss's delta (default "
                     f"{sparsity_law.DEFAULT_HUBER_DELTA:g})", **define)
  flags.DEFINE_enum("residual", "log", sparsity_law.RESIDUALS, "--law=sparsity: residual "
                    "log(pred) - log(loss), or pred - loss", **define)
  flags.DEFINE_integer("starts", 25, "--law=sparsity: random starts of the fit, the best "
                       "kept", lower_bound=1, **define)
  return flags, flag_values


def _only(given: Sequence[str], law: str) -> str:
  return f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only to --law={law}"


def _run_sparsity(flag_values) -> tuple[dict, list[str]]:
  """--law=sparsity: refuses the other law's flags, then `sparsity_law.run`."""
  given = [f"--{name}" for name in CHINCHILLA_FLAGS if flag_values[name].present]
  if given:
    raise inputs.AnalysisInputError(_only(given, "chinchilla"))
  points = [sparsity_law.parse_point(text) for text in flag_values.predict or ()]
  n_convention = flag_values.n_convention if flag_values["n_convention"].present else "kaplan"
  return sparsity_law.run(
      flag_values.csv, flag_values.out, points, huber_delta=flag_values.huber_delta,
      residual=flag_values.residual, starts=flag_values.starts,
      bootstrap=flag_values.bootstrap, seed=flag_values.seed, workdir=flag_values.workdir,
      n_convention=n_convention)


def main(argv: Sequence[str]) -> int:
  """The `isoflop analyze` subcommand; argv[0] is the program name. Returns the exit status."""
  from isoflop.experiments import cli
  flags, flag_values = _flags()
  try:
    try:
      extra = cli.parse_flags(flag_values, argv)[1:]  # --help: cli.main prints it
    except flags.Error as e:
      raise inputs.AnalysisInputError(" ".join(str(e).split())) from None
    if extra:
      raise inputs.AnalysisInputError(f"unexpected argument{'s' * (len(extra) > 1)} "
                                      f"{' '.join(extra)}")
    if not flag_values.out:
      raise inputs.AnalysisInputError("missing --out; pass the directory for fit.json and "
                                      "the figures, e.g. --out=runs/fit")
    if flag_values.law == "sparsity":
      fit, paths = _run_sparsity(flag_values)
      for line in sparsity_law.summary(fit) + [f"wrote {path}" for path in paths]:
        print(line)
      return 0
    given = [f"--{name}" for name in SPARSITY_FLAGS if flag_values[name].present]
    if given:
      raise inputs.AnalysisInputError(_only(given, "sparsity"))
    analysis = run_analysis(
        out=flag_values.out, csv=flag_values.csv, workdir=flag_values.workdir,
        n_convention=flag_values.n_convention, flop_convention=flag_values.flop_convention,
        bootstrap=flag_values.bootstrap, seed=flag_values.seed,
        extrapolate_to=flag_values.extrapolate_to,
        drop_highest_loss=flag_values.drop_highest_loss,
        approach1_points=flag_values.approach1_points)
  except inputs.AnalysisInputError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except OSError as e:  # e.g. an --out that cannot be written
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT
  for line in summary(analysis.fit):
    print(line)
  for path in analysis.paths:
    print(f"wrote {path}")
  return 0
