"""Search against a grid of the same cost (issue 21): the best held-out loss found after 8, 16
and 32 trials of ``search_tiny_shakespeare.py`` against the 8-, 16- and 32-point learning-rate
grids nested in ``grid_lr_tiny_shakespeare.py`` (every 4th, every 2nd, every point):

  isoflop sweep --sweep=experiments/sweeps/search_tiny_shakespeare.py --workdir=runs/search \\
    --workers=2
  isoflop sweep --sweep=experiments/sweeps/grid_lr_tiny_shakespeare.py --workdir=runs/grid_lr \\
    --workers=2
  python -m isoflop.experiments.search_study --search=runs/search --grid=runs/grid_lr \\
    --out=runs/search_study [--figure=docs/figures/search_vs_grid.png]

Writes ``<out>/search_vs_grid.json`` (per budget: the best loss and its learning rate for each)
and ``<out>/search_vs_grid.png`` (best loss so far against trials, and every trial's loss
against its learning rate).
"""

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

import numpy as np

PROG = "python -m isoflop.experiments.search_study"
BUDGETS = (8, 16, 32)


def compare(search_dir: str, grid_dir: str) -> dict:
  import pandas as pd
  trials = pd.read_csv(os.path.join(search_dir, "trials.csv")).sort_values("trial")
  grid = pd.read_csv(os.path.join(grid_dir, "runs.csv")).sort_values("lr").reset_index()
  out = {"budgets": {}}
  for n in BUDGETS:
    if n > len(trials) or len(grid) % n:
      continue
    first = trials.iloc[:n]
    done = first[first.state == "COMPLETE"]
    best = done.loc[done.value.idxmin()]
    nested = grid.iloc[::len(grid) // n]
    nested = nested[nested.status == "done"]
    best_grid = nested.loc[nested.final_eval_loss.idxmin()]
    out["budgets"][n] = {
        "search_best": float(best.value), "search_lr": float(best["optimizer.lr"]),
        "grid_best": float(best_grid.final_eval_loss), "grid_lr": float(best_grid.lr),
        "search_failed": int((first.state == "FAIL").sum())}
  out["search_trials"] = trials[["trial", "optimizer.lr", "value", "state"]].to_dict("records")
  out["grid"] = grid[["lr", "final_eval_loss", "status"]].to_dict("records")
  return out


def figure(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  values = [t["value"] if t["state"] == "COMPLETE" else np.nan for t in result["search_trials"]]
  left.plot(np.arange(1, len(values) + 1), np.fmin.accumulate(np.nan_to_num(values, nan=np.inf)),
            label="TPE search")
  budgets = sorted(result["budgets"], key=int)
  left.scatter([int(n) for n in budgets], [result["budgets"][n]["grid_best"] for n in budgets],
               color="C1", zorder=3, label="grid of the same cost")
  left.set(xlabel="trials", ylabel="best held-out loss so far", xscale="log", title="search "
           "against grid")
  left.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
  left.legend(fontsize=8)
  grid = [g for g in result["grid"] if g["status"] == "done"]
  right.plot([g["lr"] for g in grid], [g["final_eval_loss"] for g in grid], ".-", color="C1",
             label="grid")
  done = [t for t in result["search_trials"] if t["state"] == "COMPLETE"]
  right.scatter([t["optimizer.lr"] for t in done], [t["value"] for t in done], s=12,
                color="C0", label="search trials")
  right.set(xscale="log", xlabel="AdamW learning rate", ylabel="held-out loss",
            title="every trial")
  right.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--search", required=True)
  parser.add_argument("--grid", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--figure")
  args = parser.parse_args(argv)
  for path, name in ((args.search, "trials.csv"), (args.grid, "runs.csv")):
    if not os.path.exists(os.path.join(path, name)):
      print(f"{PROG}: error: {path} has no {name}; run its sweep first", file=sys.stderr)
      return 2
  result = compare(args.search, args.grid)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "search_vs_grid.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  path = os.path.join(args.out, "search_vs_grid.png")
  figure(result, path)
  if args.figure:
    shutil.copyfile(path, args.figure)
  for n, entry in result["budgets"].items():
    print(f"{n} trials: search {entry['search_best']:.4f} (lr {entry['search_lr']:.3g}), "
          f"grid {entry['grid_best']:.4f} (lr {entry['grid_lr']:.3g})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
