"""Learning-rate sensitivity with and without stabilizers (issue 21; after Wortsman et al.
2023, "Small-scale proxies for large-scale Transformer training instabilities"):

  isoflop sweep --sweep=experiments/sweeps/lr_sensitivity_baseline.py \\
    --workdir=runs/lr_sens_baseline --workers=2
  isoflop sweep --sweep=experiments/sweeps/lr_sensitivity_stabilized.py \\
    --workdir=runs/lr_sens_stabilized --workers=2
  python -m isoflop.experiments.lr_sensitivity --baseline=runs/lr_sens_baseline \\
    --stabilized=runs/lr_sens_stabilized --out=runs/lr_sens \\
    [--figure=docs/figures/lr_sensitivity.png]

For each width and setting: the final held-out loss at each learning rate, the paper's LR
sensitivity E_lr[min(L(lr), L0) - L*] (L* the best loss over the learning rates, L0 the loss
at initialization, here ln 256 for bytes, standing in for a diverged or failed run), and the
largest attention logit |q.k| / sqrt(d_head) of the trained model on held-out text (read from
the final checkpoint), the quantity whose growth the paper finds behind divergence at high
learning rates. Writes ``<out>/lr_sensitivity.json`` and ``<out>/lr_sensitivity.png``.
"""

import argparse
import json
import math
import os
import shutil
import sys
from typing import Sequence

import numpy as np

PROG = "python -m isoflop.experiments.lr_sensitivity"
INITIAL_LOSS = math.log(256)  # a byte model at initialization: near uniform


def max_attention_logit(member_dir: str) -> float | None:
  """The largest |attention logit| of the member's final parameters on a held-out batch."""
  import jax
  import ml_collections
  import orbax.checkpoint as ocp

  from isoflop.train import data as data_lib
  from isoflop.train import task as task_lib
  steps = [int(d) for d in os.listdir(os.path.join(member_dir, "checkpoints")) if d.isdigit()]
  if not steps:
    return None
  with open(os.path.join(member_dir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(member_dir, "checkpoints", str(max(steps)), "state")))
  task = task_lib.make_task(config)
  batch = data_lib.make_source(config, workdir=member_dir).eval_batch(np.arange(8))

  def logits(params, inputs):
    _, variables = task.model.apply({"params": params}, inputs, mutable=["intermediates"])
    found = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
        variables["intermediates"]) if "attention_logits" in jax.tree_util.keystr(path)]
    return max(jax.numpy.max(jax.numpy.abs(x)) for x in found)

  return float(jax.jit(logits)(state["params"], batch["inputs"]))


def summarize(sweep_dir: str) -> dict:
  import pandas as pd
  table = pd.read_csv(os.path.join(sweep_dir, "runs.csv"))
  out = {}
  for width, rows in table.groupby("d_model"):
    rows = rows.sort_values("lr")
    losses = [float(v) if s == "done" and np.isfinite(v) else INITIAL_LOSS
              for v, s in zip(rows.final_eval_loss, rows.status)]
    best = min(losses)
    out[int(width)] = {
        "lr": [float(x) for x in rows.lr], "final_eval_loss": losses,
        "lr_sensitivity": float(np.mean([min(l, INITIAL_LOSS) - best for l in losses])),
        "best_loss": best,
        "max_attention_logit": [max_attention_logit(os.path.join(sweep_dir, n))
                                for n in rows.name]}
  return out


def figure(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for setting, style in (("baseline", "--"), ("stabilized", "-")):
    for i, (width, entry) in enumerate(sorted(result[setting].items(), key=lambda x: int(x[0]))):
      label = f"d={width} {setting} (sens. {entry['lr_sensitivity']:.3f})"
      left.plot(entry["lr"], entry["final_eval_loss"], style, color=f"C{i}", marker=".",
                label=label)
      logits = [np.nan if v is None else v for v in entry["max_attention_logit"]]
      right.plot(entry["lr"], logits, style, color=f"C{i}", marker=".",
                 label=f"d={width} {setting}")
  left.set(xscale="log", xlabel="learning rate", ylabel="final held-out loss",
           title="LR sensitivity (dashed: no QK-norm, no z-loss)")
  right.set(xscale="log", yscale="log", xlabel="learning rate",
            ylabel="max |attention logit|", title="attention logits after training")
  left.legend(fontsize=7)
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline", required=True)
  parser.add_argument("--stabilized", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--figure")
  args = parser.parse_args(argv)
  for path in (args.baseline, args.stabilized):
    if not os.path.exists(os.path.join(path, "runs.csv")):
      print(f"{PROG}: error: {path} has no runs.csv; run its sweep first", file=sys.stderr)
      return 2
  from isoflop.experiments import cli
  cli.default_platforms()
  result = {"baseline": summarize(args.baseline), "stabilized": summarize(args.stabilized),
            "initial_loss": INITIAL_LOSS}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "lr_sensitivity.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  path = os.path.join(args.out, "lr_sensitivity.png")
  figure(result, path)
  if args.figure:
    shutil.copyfile(path, args.figure)
  for setting in ("baseline", "stabilized"):
    for width, entry in sorted(result[setting].items()):
      print(f"{setting} d={width}: LR sensitivity {entry['lr_sensitivity']:.4f}, best "
            f"{entry['best_loss']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
