"""Held-out error against training compute for image classifiers, and its saturating fit.

    python -m isoflop.experiments.analysis.vision_frontier \\
        --workdirs=runs/vision_vit_ladder,runs/vision_resnet_ladder --labels=ViT,ResNet \\
        --out=runs/vision_frontier

Each sweep's members logged ``eval_accuracy`` at several steps; a point is (C, E): the
training FLOPs so far (``flops_per_example`` under ``--convention`` from the member's
config.json, times the examples seen) and the held-out error 1 - accuracy. A sweep's frontier
is its points that no cheaper point beats (the running minimum of E over increasing C), as
Zhai et al. (2022, "Scaling Vision Transformers") take it, and is fitted by their saturating
law E = a (C + d)^(-b) + c: least squares on log E (scipy), with C in units of the smallest
point's compute so the fit is well scaled, bounds a, b > 0 and c, d >= 0, and percentile
bootstrap intervals from refits on frontier points resampled with replacement. Writes
``frontier.json`` (points, frontier, fit with intervals, each member's final accuracy) and
``error_vs_compute.png``.
"""

import json
import os
import sys
from typing import Any, Sequence

import numpy as np
import pandas as pd

from isoflop.experiments.analysis import analyze, powerlaw

PROG = "python -m isoflop.experiments.analysis.vision_frontier"


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def member_points(member_dir: str, convention: str) -> tuple[list[tuple[float, float]], dict]:
  """(C, error) at every evaluation of one run, and its last evaluation's summary."""
  record = _read_json(os.path.join(member_dir, "config.json"))
  per_example = record["flops_per_example"][convention]
  batch = record["config"]["batch_size"]
  points, last_step = [], 0
  with open(os.path.join(member_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if "eval_accuracy" in row:
        points.append((per_example * batch * row["step"], 1.0 - row["eval_accuracy"]))
        last_step = row["step"]
  if not points:
    raise ValueError(f"{member_dir} logged no eval_accuracy; run it with eval_every > 0")
  summary = {"N_chinchilla": record["n_params"]["chinchilla"], "steps": last_step,
             "C": points[-1][0], "final_eval_accuracy": 1.0 - points[-1][1]}
  return points, summary


def frontier(points: Sequence[tuple[float, float]]) -> np.ndarray:
  """The points no cheaper point beats: running minimum of the error over increasing C."""
  ordered = sorted(points)
  kept, best = [], np.inf
  for c, error in ordered:
    if error < best:
      kept.append((c, error))
      best = error
  return np.array(kept)


def fit_saturating(c: np.ndarray, error: np.ndarray) -> dict[str, float] | None:
  """E = a (C + d)^(-b) + c by least squares on log E; None when it does not converge."""
  import scipy.optimize
  scale = float(c.min())
  x = c / scale

  def residuals(theta):
    log_a, b, floor, offset = theta
    return np.log(np.exp(log_a) * (x + offset) ** (-b) + floor) - np.log(error)

  start = [np.log(error.max()), 0.5, 0.0, 0.0]
  try:
    result = scipy.optimize.least_squares(
        residuals, start, bounds=([-50.0, 1e-4, 0.0, 0.0], [50.0, 10.0, 1.0, 1e6]))
  except (ValueError, FloatingPointError):
    return None
  if not result.success:
    return None
  log_a, b, floor, offset = result.x
  # Back to FLOPs: a (x + d')^-b = a scale^b (C + d' scale)^-b.
  return {"a": float(np.exp(log_a) * scale ** b), "b": float(b), "c": float(floor),
          "d": float(offset * scale)}


def analyse(workdirs: Sequence[str], labels: Sequence[str], convention: str,
            bootstrap: int, seed: int) -> dict[str, Any]:
  series = {}
  for workdir, label in zip(workdirs, labels):
    table = pd.read_csv(os.path.join(workdir, "runs.csv"))
    done = table[table["status"] == "done"]
    if done.empty:
      raise ValueError(f"no finished member in {workdir}/runs.csv; run the sweep first")
    points, members = [], []
    for _, row in done.iterrows():
      member, summary = member_points(os.path.join(workdir, str(row["workdir"])), convention)
      points += member
      members.append({"name": row["name"], **summary})
    front = frontier(points)
    fit = fit_saturating(front[:, 0], front[:, 1]) if len(front) >= 4 else None
    entry = {"points": [list(p) for p in points], "frontier": front.tolist(),
             "members": members, "fit": None}
    if fit is not None:
      rng = np.random.default_rng(seed)
      samples = []
      for _ in range(bootstrap):
        rows = rng.integers(0, len(front), len(front))
        if len(np.unique(front[rows, 0])) >= 4:
          refit = fit_saturating(front[rows, 0], front[rows, 1])
          if refit is not None:
            samples.append(refit)
      entry["fit"] = {
          "law": "E = a * (C + d)**(-b) + c (C in FLOPs, E the held-out error)",
          **{k: powerlaw.estimate(v, [s[k] for s in samples], exponent=(k == "b"))
             for k, v in fit.items()},
          "bootstrap_replicates": len(samples)}
    series[label] = entry
  return {"convention": convention, "series": series}


def figure(result: dict[str, Any], out: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.8, 4.3))
  colors = plt.cm.tab10(np.arange(len(result["series"])))
  for color, (label, entry) in zip(colors, result["series"].items()):
    points, front = np.array(entry["points"]), np.array(entry["frontier"])
    ax.plot(points[:, 0], points[:, 1], ".", color=color, alpha=0.25)
    ax.plot(front[:, 0], front[:, 1], "o", color=color, label=f"{label} frontier")
    fit = entry["fit"]
    if fit:
      grid = np.geomspace(front[:, 0].min(), front[:, 0].max(), 100)
      a, b, c, d = (fit[k]["value"] for k in "abcd")
      ci = fit["b"]["ci95"]
      interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
      ax.plot(grid, a * (grid + d) ** (-b) + c, "-", color=color,
              label=f"{label}: b = {b:.2f}{interval}, c = {c:.3f}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(f"training FLOPs (C_{result['convention']})")
  ax.set_ylabel("held-out error (1 - accuracy)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out, "error_vs_compute.png")
  fig.savefig(f"{path}.tmp.png", dpi=120)
  os.replace(f"{path}.tmp.png", path)
  plt.close(fig)
  return path


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  flags.DEFINE_list("workdirs", None, "sweep directories, comma-separated",
                    flag_values=flag_values)
  flags.DEFINE_list("labels", None, "a label per sweep", flag_values=flag_values)
  flags.DEFINE_string("convention", "chinchilla", "the FLOP convention of C",
                      flag_values=flag_values)
  flags.DEFINE_integer("bootstrap", 200, "bootstrap refits for the intervals", lower_bound=0,
                       flag_values=flag_values)
  flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
  from isoflop.experiments import cli
  if not cli.parse_flags_or_report(PROG, flag_values, argv):
    return 2
  workdirs, out = flag_values.workdirs, flag_values.out
  labels = flag_values.labels or [os.path.basename(os.path.normpath(w)) for w in workdirs or []]
  if not workdirs or not out or len(labels) != len(workdirs):
    print(f"{PROG}: error: pass --workdirs=<sweep>,... --out=<dir> and one label per sweep",
          file=sys.stderr)
    return 2
  try:
    result = analyse(workdirs, labels, flag_values.convention, flag_values.bootstrap, seed=0)
  except (ValueError, OSError, KeyError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  os.makedirs(out, exist_ok=True)
  analyze.write_json_atomically(os.path.join(out, "frontier.json"), result)
  figure(result, out)
  for label, entry in result["series"].items():
    for m in entry["members"]:
      print(f"{label} {m['name']}: N {m['N_chinchilla']:,}, C {m['C']:.3g}, "
            f"final accuracy {m['final_eval_accuracy']:.4f}")
    fit = entry["fit"]
    if fit:
      print(f"{label}: E = {fit['a']['value']:.3g} (C + {fit['d']['value']:.3g})^-"
            f"{fit['b']['value']:.3f} + {fit['c']['value']:.4f}; b 95% {fit['b']['ci95']}, "
            f"c 95% {fit['c']['ci95']}")
    else:
      print(f"{label}: no saturating fit (fewer than 4 frontier points or no convergence)")
  print(f"wrote {out}/frontier.json and error_vs_compute.png")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
