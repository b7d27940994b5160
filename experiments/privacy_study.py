"""Utility against privacy spent with DP-SGD (issue 21):

  python -m isoflop.experiments.privacy_study --out=runs/privacy \\
      [--figure=docs/figures/privacy_utility.png] [--steps=400]

Two tasks, each trained without DP and with DP-SGD at noise multipliers ``--noise`` (default
0.5, 1, 2, 4; clip norm ``--clip_norm``, 1.0), the same steps and batches: a small decoder
(d_model 64, 2 layers) on the embedded Shakespeare bytes (held-out loss) and the tiny ViT on
scikit-learn's digits (held-out accuracy). ε is ``dp_epsilon`` at δ = 1e-5 after the last step
(dp-accounting's RDP accountant; train/privacy.py says how sampling is treated). Writes
``<out>/runs.csv`` and ``<out>/privacy_utility.png``; each run is its own workdir.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

PROG = "python -m isoflop.experiments.privacy_study"


def _decoder(args):
  from isoflop.experiments.configs import tiny_shakespeare
  c = tiny_shakespeare.get_config()
  c.update(steps=args.steps, batch_size=32, seq_len=64, log_every=20, eval_every=args.steps,
           eval_batches=8, checkpoint_every=10 ** 9)
  c.model.update(d_model=64, n_layers=2, n_heads=4)
  c.optimizer.update(lr=3e-3, warmup_steps=20)
  return c


def _vit(args):
  from isoflop.experiments.configs import vit_tiny
  c = vit_tiny.get_config()
  c.update(steps=args.steps, log_every=20, eval_every=args.steps, checkpoint_every=10 ** 9)
  c.model.dropout = 0.0  # the noise regularizes; dropout would confound the comparison
  return c


TASKS = {"decoder_shakespeare": (_decoder, "eval_loss"), "vit_digits": (_vit, "eval_accuracy")}


def run(args) -> list[dict]:
  from isoflop.train import loop
  results = []
  for task, (make, metric) in TASKS.items():
    for noise in [None, *args.noise]:
      config = make(args)
      if noise is not None:
        config.privacy.update(noise_multiplier=noise, clip_norm=args.clip_norm)
        config.optimizer.clip_norm = 0.0  # DP-SGD clips per example already
      name = f"{task}_" + ("nodp" if noise is None else f"sigma{noise:g}")
      workdir = os.path.join(args.out, name)
      loop.train(config, workdir, progress=False)
      with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
      last_train = [r for r in rows if "loss" in r][-1]
      last_eval = [r for r in rows if metric in r][-1]
      results.append({"task": task, "noise_multiplier": noise, "metric": metric,
                      "value": last_eval[metric], "eval_loss": last_eval["eval_loss"],
                      "epsilon": last_train.get("dp_epsilon"), "delta": config.privacy.delta})
      print(f"{name}: {metric} {last_eval[metric]:.4f}, epsilon "
            f"{results[-1]['epsilon']}", flush=True)
  return results


def figure(results: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.8), squeeze=False)
  for ax, task in zip(axes[0], TASKS):
    rows = [r for r in results if r["task"] == task]
    private = [r for r in rows if r["noise_multiplier"] is not None]
    ax.plot([r["epsilon"] for r in private], [r["value"] for r in private], "o-",
            label="DP-SGD")
    for r in private:
      ax.annotate(f"σ={r['noise_multiplier']:g}", (r["epsilon"], r["value"]), fontsize=7)
    baseline = [r for r in rows if r["noise_multiplier"] is None]
    if baseline:
      ax.axhline(baseline[0]["value"], color="gray", ls="--", label="no DP (ε = ∞)")
    ax.set(xscale="log", xlabel=f"ε at δ = {rows[0]['delta']:g}", ylabel=rows[0]["metric"],
           title=task.replace("_", " on "))
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--figure")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--clip_norm", type=float, default=1.0)
  parser.add_argument("--noise", type=lambda s: [float(x) for x in s.split(",")],
                      default=[0.5, 1.0, 2.0, 4.0])
  args = parser.parse_args(argv)
  if any(n <= 0 for n in args.noise) or args.clip_norm <= 0:
    print(f"{PROG}: error: --noise values and --clip_norm must be > 0", file=sys.stderr)
    return 2
  from isoflop.experiments import cli
  cli.default_platforms()  # CPU, not libtpu's compile-only TPU, where no accelerator is attached
  os.makedirs(args.out, exist_ok=True)
  results = run(args)
  import pandas as pd
  pd.DataFrame(results).to_csv(os.path.join(args.out, "runs.csv"), index=False)
  path = os.path.join(args.out, "privacy_utility.png")
  figure(results, path)
  if args.figure:
    shutil.copyfile(path, args.figure)
  print(f"{os.path.join(args.out, 'runs.csv')}, {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
