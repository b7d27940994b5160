"""``isoflop compare``: sweeps of different families (or variants) side by side.

  isoflop compare --workdirs=runs/fig7_decoder,runs/fig7_lstm --labels=Transformer,LSTM \\
      --x=N_kaplan --out=runs/fig7
  isoflop compare --workdirs=runs/moe_vs_dense --group_by=model.num_experts --x=C_palm \\
      --out=runs/moe_vs_dense/compare

For each sweep (a directory with ``runs.csv``; with ``--group_by=<config key>`` each value of
that key within a sweep is its own series), its finished members' final loss (held-out when
every member evaluated, else training; seed-ensemble standard deviations as error bars)
against a ``runs.csv`` column ``--x`` (a parameter count such as ``N_kaplan`` or
``N_active``, or a compute such as ``C_palm``). Writes to ``--out``:

  compare.json      the points; per sweep a power law loss = a * x^b (least squares in log-log,
                    no irreducible term: a local description over the sweep's range) and, for
                    two sweeps, where the two laws cross (and whether that lies inside the
                    measured range); per member with ``eval_loss_by_position`` its loss at
                    positions 1, 8, 64, ... and ``context_slope``, the least-squares slope of
                    loss against ln(position) over positions 16 and later (nats per e-fold of
                    context: 0 where more context stops helping)
  loss_vs_<x>.png   loss against x, one series per sweep
  loss_by_position.png  (when members logged it) loss against position, one panel per sweep

With ``--frontier`` (IsoFLOP sweeps; ``--x`` a compute column such as ``C_chinchilla``) each
sweep's points are instead its compute-optimal ones, Approach 2's parabola minima per budget
(N and C under the same convention), with ``loss_opt_law`` (L_opt = H C^c) and ``a``
(N_opt = G C^a) and their 95% bootstrap intervals as ``isoflop analyze`` computes them; an
extra figure ``n_opt_vs_<x>.png`` shows N_opt against C:

  isoflop compare --workdirs=runs/objectives_causal_lm,runs/objectives_masked_lm \
      --labels="causal LM,masked LM" --x=C_chinchilla --frontier --out=runs/objectives
"""

import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
import pandas as pd

from isoflop.experiments.analysis import analyze, approach2, inputs, powerlaw
from isoflop.train import workdir as workdir_lib

PROG = "isoflop compare"
FIRST_CONTEXT_POSITION = 16  # context_slope ignores the first positions (no context yet)


def _final_eval_row(member_dir: str) -> dict[str, Any] | None:
  path = os.path.join(member_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  rows = [json.loads(line) for line in open(path) if line.strip()]
  evals = [r for r in rows if "eval_loss" in r]
  return evals[-1] if evals else None


def by_position(losses: Sequence[float]) -> dict[str, Any]:
  """Loss at positions 1, 8, 64, ... and the slope of loss against ln(position)."""
  loss = np.asarray(losses, float)
  positions = np.arange(1, len(loss) + 1)
  late = positions >= FIRST_CONTEXT_POSITION
  slope = None
  if late.sum() >= 2:
    slope = float(np.polyfit(np.log(positions[late]), loss[late], 1)[0])
  marks = [p for p in (1, 8, 64, 512, 4096) if p <= len(loss)] + [len(loss)]
  return {"loss_at_position": {str(p): float(loss[p - 1]) for p in sorted(set(marks))},
          "context_slope": slope}


def log_binned(losses: Sequence[float], bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
  """Mean loss in log-spaced bins of position (each position alone while bins are narrower
  than one): a few hundred sequences per position leave single positions noisy."""
  loss = np.asarray(losses, float)
  edges = np.unique(np.round(np.geomspace(1, len(loss) + 1, bins + 1)).astype(int))
  centres = np.sqrt(edges[:-1] * (edges[1:] - 1).clip(min=edges[:-1]))
  means = np.array([loss[a - 1:b - 1].mean() for a, b in zip(edges[:-1], edges[1:])])
  return centres, means


def load(workdir: str, x: str) -> tuple[pd.DataFrame, str]:
  path = os.path.join(workdir, "runs.csv")
  if not os.path.exists(path):
    raise ValueError(f"{path} not found; pass directories of finished `isoflop sweep` runs")
  table = pd.read_csv(path)
  if x not in table.columns:
    numeric = [c for c in table.columns if c.startswith(("N_", "C_")) or c == "D"]
    raise ValueError(f"--x={x} is not a column of {path}; choose one of {numeric}")
  done = table[(table.status == "done") & table[x].notna()]
  if done.empty:
    raise ValueError(f"{path} has no finished member with {x}; finish the sweep first")
  evaluated = done["final_eval_loss"].notna().all()
  return done.sort_values(x), "final_eval_loss" if evaluated else "final_train_loss"


def _config_value(member_dir: str, dotted_key: str) -> Any:
  path = os.path.join(member_dir, "config.json")
  if not os.path.exists(path):
    return None
  node = json.load(open(path))["config"]
  for part in dotted_key.split("."):
    if not isinstance(node, dict) or part not in node:
      raise ValueError(f"--group_by={dotted_key} is not a config key of {path}; pass a dotted "
                       "key such as model.num_experts")
    node = node[part]
  return node


def analyse(workdirs: Sequence[str], labels: Sequence[str], x: str,
            group_by: str | None = None) -> dict[str, Any]:
  """Points per series: one series per sweep, or per (sweep, value of ``group_by``)."""
  series, laws = {}, {}
  for workdir, label in zip(workdirs, labels):
    table, loss_column = load(workdir, x)
    std_column = f"{loss_column}_std"
    for _, row in table.iterrows():
      member_dir = os.path.join(workdir, str(row["workdir"]))
      point = {"name": row["name"], "x": float(row[x]), "loss": float(row[loss_column]),
               "loss_std": (float(row[std_column]) if std_column in row and
                            pd.notna(row[std_column]) else None),
               "model_family": row.get("model_family")}
      final = _final_eval_row(member_dir)
      if final and "eval_loss_by_position" in final:
        point["by_position"] = by_position(final["eval_loss_by_position"])
        point["eval_loss_by_position"] = final["eval_loss_by_position"]
      name = label
      if group_by:
        value = _config_value(member_dir, group_by)
        name = f"{label} {group_by.split('.')[-1]}={value}"
      entry = series.setdefault(name, {"workdir": workdir, "loss_column": loss_column,
                                       "points": []})
      entry["points"].append(point)
  for name, entry in series.items():
    xs = np.array([p["x"] for p in entry["points"]])
    if len(np.unique(xs)) >= 2:
      law = powerlaw.fit(xs, np.array([p["loss"] for p in entry["points"]]))
      laws[name] = {"coefficient": law.coefficient, "exponent": law.exponent}
  result = {"x": x, "group_by": group_by, "series": series, "power_law": laws,
            "crossing": None}
  if len(laws) == 2:
    result["crossing"] = crossing(series, laws)
  return result


def analyse_frontiers(workdirs: Sequence[str], labels: Sequence[str], x: str,
                      bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
  """Each sweep's compute-optimal points and laws (Approach 2), one series per sweep."""
  convention = x.removeprefix("C_")
  if not x.startswith("C_") or convention not in inputs.N_CONVENTIONS:
    raise ValueError(f"--frontier needs --x=C_<convention> with a matching N, one of "
                     f"{['C_' + c for c in inputs.N_CONVENTIONS]}; got --x={x}")
  series, laws = {}, {}
  for workdir, label in zip(workdirs, labels):
    points = inputs.from_sweep(workdir, convention, convention)
    fit = approach2.fit(points, bootstrap, seed).to_json(max(points.table["C"]))
    series[label] = {"workdir": workdir, "loss_column": points.loss_column + " at N_opt",
                     "points": [{"name": f"C{p['C']:.3g}", "x": p["C"], "loss": p["loss"],
                                 "loss_std": None, "N_opt": p["N_opt"],
                                 "tokens_per_param": p["tokens_per_param"]}
                                for p in fit["points"]],
                     "rejected_budgets": fit["rejected_budgets"],
                     "loss_opt_law": fit.get("loss_opt_law"), "a": fit["a"], "G": fit["G"]}
    law = fit.get("loss_opt_law")
    if law:
      laws[label] = {"coefficient": law["H"]["value"], "exponent": law["c"]["value"]}
  result = {"x": x, "group_by": None, "frontier": True, "series": series, "power_law": laws,
            "crossing": None}
  if len(laws) == 2:
    result["crossing"] = crossing(series, laws)
  return result


def _n_opt_figure(result: dict[str, Any], out: str, plt) -> str:
  fig, ax = plt.subplots(figsize=(5.6, 4.2))
  colors = plt.cm.tab10(np.arange(len(result["series"])))
  for color, (label, entry) in zip(colors, result["series"].items()):
    cs = np.array([p["x"] for p in entry["points"]])
    ax.plot(cs, [p["N_opt"] for p in entry["points"]], "o", color=color)
    a, g = entry["a"], entry["G"]["value"]
    ci = a["ci95"]
    grid = np.geomspace(cs.min(), cs.max(), 50)
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    ax.plot(grid, g * grid ** a["value"], "-", color=color, alpha=0.6,
            label=f"{label}: a = {a['value']:.2f}{interval}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(result["x"])
  ax.set_ylabel("N_opt (parameters, Approach 2)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = _save(fig, os.path.join(out, f"n_opt_vs_{result['x']}.png"))
  plt.close(fig)
  return path


def crossing(series: dict, laws: dict) -> dict[str, Any]:
  """Where the two fitted laws a1 x^b1 and a2 x^b2 meet, and whether inside both ranges."""
  (name_1, law_1), (name_2, law_2) = laws.items()
  if law_1["exponent"] == law_2["exponent"]:
    return {"x": None, "inside_measured_range": False, "note": "parallel fits: no crossing"}
  log_x = (math.log(law_2["coefficient"]) - math.log(law_1["coefficient"])) / (
      law_1["exponent"] - law_2["exponent"])
  where = math.exp(log_x)
  low = max(min(p["x"] for p in series[n]["points"]) for n in (name_1, name_2))
  high = min(max(p["x"] for p in series[n]["points"]) for n in (name_1, name_2))
  steeper = name_1 if law_1["exponent"] < law_2["exponent"] else name_2
  return {"x": where, "inside_measured_range": bool(low <= where <= high),
          "lower_beyond": steeper,
          "note": f"beyond x = {where:.3g} the fitted laws put {steeper} lower"}


def figures(result: dict[str, Any], out: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  fig, ax = plt.subplots(figsize=(5.6, 4.2))
  colors = plt.cm.tab10(np.arange(len(result["series"])))
  for color, (label, entry) in zip(colors, result["series"].items()):
    xs = np.array([p["x"] for p in entry["points"]])
    ys = np.array([p["loss"] for p in entry["points"]])
    err = np.array([p["loss_std"] or 0.0 for p in entry["points"]])
    ax.errorbar(xs, ys, yerr=err if err.any() else None, fmt="o", color=color, capsize=3,
                label=label)
    if label in result["power_law"]:
      law = powerlaw.PowerLaw(**result["power_law"][label])
      grid = np.geomspace(xs.min(), xs.max(), 50)
      ax.plot(grid, law(grid), "-", color=color, alpha=0.6,
              label=f"{label}: {law.coefficient:.3g} x^{law.exponent:.3f}")
  ax.set_xscale("log")
  ax.set_xlabel(result["x"])
  ax.set_ylabel("final loss (" + next(iter(result["series"].values()))["loss_column"] + ")")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  written.append(_save(fig, os.path.join(out, f"loss_vs_{result['x']}.png")))
  plt.close(fig)
  if result.get("frontier"):
    written.append(_n_opt_figure(result, out, plt))

  with_positions = {label: [p for p in entry["points"] if "eval_loss_by_position" in p]
                    for label, entry in result["series"].items()}
  with_positions = {k: v for k, v in with_positions.items() if v}
  if with_positions:
    fig, axes = plt.subplots(1, len(with_positions), figsize=(5.2 * len(with_positions), 4.2),
                             squeeze=False, sharey=True)
    for ax, (label, points) in zip(axes[0], with_positions.items()):
      shades = plt.cm.viridis(np.linspace(0, 0.85, len(points)))
      for shade, point in zip(shades, points):
        centres, means = log_binned(point["eval_loss_by_position"])
        ax.plot(centres, means, "o-", color=shade, lw=1.2, markersize=3,
                label=f"{result['x']} {point['x']:.3g}")
      ax.set_xscale("log")
      ax.set_xlabel("token position in the context")
      ax.set_title(label, fontsize=10)
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("held-out loss at that position (nats; log-spaced bins)")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(out, "loss_by_position.png")))
    plt.close(fig)
  return written


def _save(fig, path: str) -> str:
  fig.savefig(f"{path}.tmp.png", dpi=120)
  os.replace(f"{path}.tmp.png", path)
  return path


def run(workdirs: Sequence[str], labels: Sequence[str], x: str, out: str,
        group_by: str | None = None, frontier: bool = False) -> dict[str, Any]:
  """Raises ValueError, in one line, on bad input; an unwritable `out` before reading."""
  workdir_lib.check_writable(out, flag="--out")
  if frontier and group_by:
    raise ValueError("--frontier and --group_by do not combine; compare whole sweeps")
  result = (analyse_frontiers(workdirs, labels, x) if frontier
            else analyse(workdirs, labels, x, group_by))
  os.makedirs(out, exist_ok=True)
  slim = json.loads(json.dumps(result))  # the per-position lists stay in metrics.jsonl
  for entry in slim["series"].values():
    for point in entry["points"]:
      point.pop("eval_loss_by_position", None)
  analyze.write_json_atomically(os.path.join(out, "compare.json"), slim)
  result["figures"] = figures(result, out)
  return slim


def _ci(estimate: dict) -> str:
  ci = estimate.get("ci95")
  return f"95% [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "no interval: fewer than 3 budgets"


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  flags.DEFINE_list("workdirs", None, "sweep directories to compare, comma-separated",
                    flag_values=flag_values)
  flags.DEFINE_list("labels", None, "a label per sweep (default: the directories' names)",
                    flag_values=flag_values)
  flags.DEFINE_string("x", "N_kaplan", "the runs.csv column on the x axis (N_kaplan, "
                      "N_chinchilla, N_active, C_palm, ...)", flag_values=flag_values)
  flags.DEFINE_string("group_by", None, "a dotted config key (e.g. model.num_experts): one "
                      "series per value within each sweep", flag_values=flag_values)
  flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
  flags.DEFINE_boolean("frontier", False, "IsoFLOP sweeps: compare their compute-optimal "
                       "points (Approach 2) and laws, with intervals; --x=C_<convention>",
                       flag_values=flag_values)
  from isoflop.experiments import cli
  if not cli.parse_flags_or_report(PROG, flag_values, argv):
    return 2
  workdirs, out = flag_values.workdirs, flag_values.out
  if not workdirs or not out:
    print(f"{PROG}: error: pass --workdirs=<sweep dir>,<sweep dir> and --out=<dir>",
          file=sys.stderr)
    return 2
  labels = flag_values.labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    print(f"{PROG}: error: {len(labels)} --labels for {len(workdirs)} --workdirs; give one "
          "label per sweep", file=sys.stderr)
    return 2
  try:
    result = run(workdirs, labels, flag_values.x, out, flag_values.group_by,
                 flag_values.frontier)
  except (ValueError, OSError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for label, entry in result["series"].items():
    law = result["power_law"].get(label)
    line = f"{label}: {len(entry['points'])} " + ("budgets" if result.get("frontier")
                                                  else "runs")
    if law:
      line += f", loss = {law['coefficient']:.3g} * {result['x']}^{law['exponent']:.3f}"
    if result.get("frontier"):
      c, a = entry["loss_opt_law"], entry["a"]
      line += (f" ({_ci(c['c'])})" if c else "") + f"; N_opt ~ C^{a['value']:.3f} ({_ci(a)})"
    slopes = [p["by_position"]["context_slope"] for p in entry["points"] if "by_position" in p]
    if slopes:
      line += ", context_slope " + ", ".join(f"{s:.3f}" for s in slopes if s is not None)
    print(line)
  if result["crossing"]:
    c = result["crossing"]
    print(f"crossing: {c['note']}"
          + (" (inside the measured range)" if c["inside_measured_range"] else
             " (outside the measured range: an extrapolation)") if c["x"] else c["note"])
  print(f"wrote {os.path.join(out, 'compare.json')} and figures")
  return 0
