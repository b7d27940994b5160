"""``isoflop transfer``: does the best learning rate move with width? Reads a learning rate x
width (x parametrization) grid sweep and writes ``lr_transfer.json`` and ``lr_transfer.png``.

  isoflop transfer --workdir=runs/mup_lr --out=runs/mup_lr/transfer

For each parametrization and width, the optimum is the grid's lowest final loss (held-out
when the runs evaluated, else training), refined by a parabola through it and its two
neighbours in log2(lr) when it is inside the grid. The drift is the least-squares slope of
log2(lr*) against log2(width): about -1 when lr* ~ 1/width (what SP with Adam is expected to
show), about 0 when the optimum transfers (muP). Failed or non-finite runs are drawn as
diverged, never as a loss.
"""

import math
import os
import sys
from typing import Any, Sequence

import numpy as np
import pandas as pd

from isoflop.experiments.analysis import analyze
from isoflop.train import workdir as workdir_lib

PROG = "isoflop transfer"


def _loss_column(table: pd.DataFrame) -> str:
  evaluated = table["final_eval_loss"].notna().any()
  return "final_eval_loss" if evaluated else "final_train_loss"


def load(workdir: str) -> tuple[pd.DataFrame, str]:
  path = os.path.join(workdir, "runs.csv")
  if not os.path.exists(path):
    raise ValueError(f"{path} not found; pass the directory of a finished `isoflop sweep`")
  table = pd.read_csv(path)
  needed = {"lr", "d_model", "parametrization", "status", "final_train_loss",
            "final_eval_loss"}
  missing = needed - set(table.columns)
  if missing:
    raise ValueError(f"{path} lacks columns {sorted(missing)}; rerun `isoflop sweep` on it to "
                     "rewrite runs.csv")
  table = table[table["lr"].notna() & table["d_model"].notna()]
  if table.empty or table["lr"].nunique() < 3:
    raise ValueError(f"{path} needs runs at 3 or more learning rates; sweep optimizer.lr")
  return table, _loss_column(table)


def optimum(lrs: np.ndarray, losses: np.ndarray) -> dict[str, Any]:
  """The best learning rate of one curve: grid argmin, refined by a parabola in log2(lr)."""
  finite = np.isfinite(losses)
  if not finite.any():
    return {"lr": None, "grid_lr": None, "loss": None, "at_edge": None}
  best = int(np.nanargmin(np.where(finite, losses, np.nan)))
  result = {"grid_lr": float(lrs[best]), "lr": float(lrs[best]), "loss": float(losses[best]),
            "at_edge": best in (0, len(lrs) - 1)}
  if not result["at_edge"] and finite[best - 1] and finite[best + 1]:
    x = np.log2(lrs[best - 1:best + 2])
    a, b, _ = np.polyfit(x, losses[best - 1:best + 2], 2)
    if a > 0:  # a minimum: stays between the neighbours since the middle point is lowest
      result["lr"] = float(2.0 ** (-b / (2 * a)))
  return result


def analyse(table: pd.DataFrame, loss_column: str) -> dict[str, Any]:
  out: dict[str, Any] = {"loss_column": loss_column, "parametrizations": {}}
  for parametrization, runs in table.groupby("parametrization"):
    widths: dict[str, Any] = {}
    for width, curve in runs.groupby("d_model"):
      curve = curve.sort_values("lr")
      losses = np.where(curve["status"] == "done", curve[loss_column], np.nan).astype(float)
      lrs = curve["lr"].to_numpy(dtype=float)
      widths[str(int(width))] = {"lr": lrs.tolist(),
                                 "loss": [None if not math.isfinite(v) else v for v in losses],
                                 "optimum": optimum(lrs, losses)}
    usable = {int(w): e["optimum"]["lr"] for w, e in widths.items()
              if e["optimum"]["lr"] is not None}
    drift = None
    if len(usable) >= 2:
      w = np.array(sorted(usable), dtype=float)
      drift = float(np.polyfit(np.log2(w), np.log2([usable[int(v)] for v in w]), 1)[0])
    best = [usable[w] for w in sorted(usable)]
    out["parametrizations"][str(parametrization)] = {
        "widths": widths,
        "log2_lr_opt_slope_vs_log2_width": drift,
        "lr_opt_range_factor": (max(best) / min(best)) if best else None,
        "optimum_at_grid_edge": any(e["optimum"]["at_edge"] for e in widths.values()),
    }
  return out


def figure(result: dict[str, Any], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = sorted(result["parametrizations"], key=lambda p: (p != "sp", p))
  fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False,
                           sharey=True)
  for ax, name in zip(axes[0], names):
    entry = result["parametrizations"][name]
    widths = sorted(entry["widths"], key=int)
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(widths)))
    for color, width in zip(colors, widths):
      curve = entry["widths"][width]
      lrs = np.array(curve["lr"])
      losses = np.array([np.nan if v is None else v for v in curve["loss"]])
      ax.plot(lrs, losses, "o-", color=color, markersize=3, label=f"d_model {width}")
      best = curve["optimum"]
      if best["grid_lr"] is not None:
        ax.plot(best["grid_lr"], best["loss"], "*", color=color, markersize=12,
                markeredgecolor="black")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("learning rate")
    drift = entry["log2_lr_opt_slope_vs_log2_width"]
    ax.set_title(f"{name}: d log2 lr* / d log2 width = "
                 f"{'n/a' if drift is None else f'{drift:.2f}'}", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel(result["loss_column"].replace("_", " "))
  axes[0, -1].legend(fontsize=8)
  finite = [v for e in result["parametrizations"].values() for w in e["widths"].values()
            for v in w["loss"] if v is not None]
  if finite:  # diverged runs can reach huge losses: keep the interesting range in view
    low = min(finite)
    axes[0, 0].set_ylim(low - 0.05, min(max(finite), low + 1.5) + 0.05)
  fig.tight_layout()
  fig.savefig(f"{path}.tmp.png", dpi=120)
  plt.close(fig)
  os.replace(f"{path}.tmp.png", path)


def run(workdir: str, out: str) -> dict[str, Any]:
  """Raises ValueError, in one line, on bad input; an unwritable `out` before reading anything."""
  workdir_lib.check_writable(out, flag="--out")
  table, loss_column = load(workdir)
  result = analyse(table, loss_column)
  result["source"] = os.path.abspath(os.path.join(workdir, "runs.csv"))
  os.makedirs(out, exist_ok=True)
  figure(result, os.path.join(out, "lr_transfer.png"))
  analyze.write_json_atomically(os.path.join(out, "lr_transfer.json"), result)
  return result


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "directory of a learning rate x width grid sweep",
                      flag_values=flag_values)
  flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
  from isoflop.experiments import cli
  if not cli.parse_flags_or_report(PROG, flag_values, argv):
    return 2
  if not flag_values.workdir or not flag_values.out:
    print(f"{PROG}: error: pass --workdir=<sweep dir> and --out=<dir>", file=sys.stderr)
    return 2
  try:
    result = run(flag_values.workdir, flag_values.out)
  except ValueError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # e.g. a disk that fills while writing
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for name, entry in result["parametrizations"].items():
    best = {w: e["optimum"]["lr"] for w, e in sorted(entry["widths"].items(),
                                                      key=lambda kv: int(kv[0]))}
    drift = entry["log2_lr_opt_slope_vs_log2_width"]
    print(f"{name}: best lr by width "
          + ", ".join(f"{w}: {'-' if v is None else f'{v:.3g}'}" for w, v in best.items())
          + f"; slope of log2 lr* vs log2 width {'n/a' if drift is None else f'{drift:.2f}'}"
          + (" (an optimum sits at the grid's edge)" if entry["optimum_at_grid_edge"] else ""))
  print(f"wrote {os.path.join(flag_values.out, 'lr_transfer.json')} and lr_transfer.png")
  return 0
