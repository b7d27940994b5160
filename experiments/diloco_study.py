"""DiLoCo against synchronous data parallelism at equal compute (issue 21):

  python -m isoflop.experiments.diloco_study --out=runs/diloco \\
      [--figure=docs/figures/diloco_shakespeare.png] [--steps=1000]

A small decoder (d_model 64, 2 layers) on the embedded Shakespeare bytes, every run the same
steps of the same global batch (so the same tokens and FLOPs), on M devices, one per group:
data parallel (the gradient all-reduced every step) and DiLoCo with M replicas and H inner
steps between outer steps (``--inner_steps``, default 10, 50, 200), for M in ``--replicas``
(default 2 and 4). AdamW inner optimizer with the run's cosine schedule, Nesterov outer step
(lr 0.7, momentum 0.9). Writes ``<out>/runs.csv`` (one row per run: M, H (0: data parallel),
held-out loss at the end, the last interval's training loss, bytes communicated) and
``<out>/diloco_shakespeare.png``: held-out-free training loss against steps and against bytes
communicated. Each run is its own workdir: an interrupted study resumes.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

PROG = "python -m isoflop.experiments.diloco_study"


def _config(args, replicas: int, inner_steps: int | None):
  from isoflop.experiments.configs import tiny_shakespeare
  c = tiny_shakespeare.get_config()
  c.update(steps=args.steps, batch_size=args.batch_size, seq_len=64, log_every=10,
           eval_every=args.steps, eval_batches=8, checkpoint_every=10 ** 9)
  c.model.update(d_model=64, n_layers=2, n_heads=4)
  c.optimizer.update(lr=args.lr, warmup_steps=30, schedule="cosine")
  if inner_steps:
    c.diloco.update(replicas=replicas, inner_steps=inner_steps)
  return c


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def run(args) -> list[dict]:
  import jax

  from isoflop.train import loop
  results = []
  for replicas in args.replicas:
    devices = jax.devices()[:replicas]
    for inner_steps in [0, *args.inner_steps]:
      name = f"M{replicas}_" + (f"H{inner_steps}" if inner_steps else "dp")
      workdir = os.path.join(args.out, name)
      loop.train(_config(args, replicas, inner_steps), workdir, devices=devices,
                 progress=False)
      rows = _rows(workdir)
      train = [r for r in rows if "loss" in r]
      evals = [r for r in rows if "eval_loss" in r]
      results.append({"name": name, "replicas": replicas, "inner_steps": inner_steps,
                      "final_eval_loss": evals[-1]["eval_loss"],
                      "final_train_loss": train[-1]["loss_mean"],
                      "comm_bytes": train[-1]["comm_bytes"],
                      "curve": [(r["step"], r["loss_mean"], r["comm_bytes"]) for r in train]})
      print(f"{name}: eval loss {results[-1]['final_eval_loss']:.4f}, "
            f"{results[-1]['comm_bytes'] / 1e9:.3g} GB communicated", flush=True)
  return results


def figure(results: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = sorted({r["replicas"] for r in results})
  fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.6 * len(groups)), squeeze=False)
  for row, replicas in enumerate(groups):
    for r in [r for r in results if r["replicas"] == replicas]:
      steps, losses, comm = zip(*r["curve"])
      label = ("data parallel" if not r["inner_steps"] else f"DiLoCo H={r['inner_steps']}")
      label += f" (eval {r['final_eval_loss']:.3f})"
      axes[row, 0].plot(steps, losses, label=label)
      axes[row, 1].plot([max(c, 1) for c in comm], losses, label=label)
    axes[row, 0].set(xlabel="step", ylabel="training loss (nats/byte)",
                     title=f"M = {replicas} groups")
    axes[row, 1].set(xscale="log", xlabel="bytes communicated between groups",
                     ylabel="training loss", title=f"M = {replicas}: loss against bytes")
    for ax in axes[row]:
      ax.set_ylim(top=min(3.6, max(l for r in results for _, l, _ in r["curve"])))
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--figure")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")],
                      default=[2, 4])
  parser.add_argument("--inner_steps", type=lambda s: [int(x) for x in s.split(",")],
                      default=[10, 50, 200])
  args = parser.parse_args(argv)
  if any(m < 1 for m in args.replicas) or any(h < 1 for h in args.inner_steps):
    print(f"{PROG}: error: --replicas and --inner_steps must be positive", file=sys.stderr)
    return 2
  most = max(args.replicas)
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:  # one CPU device per group
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={most}".strip()
  from isoflop.experiments import cli
  cli.default_platforms()  # CPU, not libtpu's compile-only TPU, where no accelerator is attached
  os.makedirs(args.out, exist_ok=True)
  results = run(args)
  import pandas as pd
  pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in results]).to_csv(
      os.path.join(args.out, "runs.csv"), index=False)
  path = os.path.join(args.out, "diloco_shakespeare.png")
  figure(results, path)
  if args.figure:
    shutil.copyfile(path, args.figure)
  print(f"{os.path.join(args.out, 'runs.csv')}, {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
