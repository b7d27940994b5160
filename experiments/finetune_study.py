"""Which play is this passage from? Pretraining against training from scratch, and full
fine-tuning against LoRA against the head alone, at equal fine-tuning steps (issue 18):

  python -m isoflop.experiments.finetune_study --out=runs/plays \\
      [--figure=docs/figures/finetune_plays.png] [--seeds=3] [--pretrain_steps=1500] \\
      [--finetune_steps=400]

1. ``<out>/pretrain``: a small decoder (d_model 64, 2 layers) trained as a causal LM on the
   training scenes' text (``data.source=shakespeare_plays``, ``task=causal_lm``: the held-out
   scenes never read), tokenized by a SentencePiece model of ``--vocab_size`` pieces trained
   on the training scenes (passages of 128 pieces, about 500 characters).
2. For each seed, four classification runs of ``finetune_steps`` steps on the passages
   (``model.num_classes=38``, the same held-out scenes):
     scratch     every parameter from a fresh initialization
     full        ``init_from`` the pretrained run, every parameter trained
     lora        ``init_from`` it, adapters of rank ``--lora_rank`` on the attention and MLP
                 kernels and the fresh head trained, the body frozen
     head        ``init_from`` it, only the fresh head (``finetune.trainable=^classifier/``)
   Seeds change the head's (and the scratch body's, the adapters') initialization and the
   order of the passages; the pretrained run is one. Every run is its own workdir, so an
   interrupted study resumes where it stopped, and a finished one is only summarized again.
3. ``<out>/runs.csv`` (one row per run: held-out accuracy and loss at the end, trainable
   parameters, seconds), ``<out>/summary.json`` (per condition: mean accuracy and a 95%
   Student-t interval over seeds; the differences between conditions paired by seed, which
   share the order of the passages) and ``<out>/finetune_plays.png`` (copied to ``--figure``).
Held-out accuracy is over the same ``eval_batches x batch_size`` held-out passages for every
run (their order is fixed), from scenes no training passage comes from.
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np

PROG = "python -m isoflop.experiments.finetune_study"
CONDITIONS = ("scratch", "full", "lora", "head")
LABELS = {"scratch": "from scratch", "full": "pretrained, full fine-tuning",
          "lora": "pretrained, LoRA", "head": "pretrained, head only"}


def base_config(args) -> Any:
  from isoflop.experiments.configs import plays_lm
  c = plays_lm.get_config()
  c.seq_len, c.batch_size = args.seq_len, args.batch_size
  # SentencePiece trained on the training scenes: a name is a token or two, and 128 tokens
  # are about 500 characters of a scene.
  c.data.tokenizer, c.data.vocab_size = "sentencepiece", args.vocab_size
  c.model.vocab_size = args.vocab_size
  c.model.update(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.d_model // 16)
  c.optimizer.lr, c.optimizer.warmup_steps = args.lr, 20
  c.log_every, c.checkpoint_every = 100, 10_000
  c.eval_batches = args.eval_batches
  return c


def pretrain_config(args) -> Any:
  c = base_config(args)
  c.steps, c.eval_every = args.pretrain_steps, args.pretrain_steps
  return c


def finetune_config(args, condition: str, seed: int, pretrained: str) -> Any:
  c = base_config(args)
  c.task, c.model.num_classes, c.seed = "classification", 38, seed
  c.steps, c.eval_every = args.finetune_steps, max(1, args.finetune_steps // 4)
  if condition != "scratch":
    c.init_from = pretrained
  if condition == "lora":
    c.finetune.lora.rank, c.finetune.lora.alpha = args.lora_rank, 2.0 * args.lora_rank
  elif condition == "head":
    c.finetune.trainable = "^classifier/"
  return c


def _train(config, workdir: str) -> tuple[list[dict], dict, float]:
  """Trains ``workdir`` unless a previous study finished it (then only reads it)."""
  from isoflop.train import loop
  timing = os.path.join(workdir, "study_seconds.json")
  if not os.path.exists(timing):
    start = time.perf_counter()
    loop.train(config, workdir, progress=False)
    with open(timing, "w", encoding="utf-8") as f:
      json.dump({"seconds": time.perf_counter() - start}, f)
  with open(timing, encoding="utf-8") as f:
    seconds = json.load(f)["seconds"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return rows, json.load(f), seconds


def interval95(values: Sequence[float]) -> tuple[float, float, float]:
  """(mean, low, high): a Student-t 95% interval of the mean over seeds."""
  from scipy import stats
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, mean, mean
  half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
  return mean, mean - half, mean + half


def run(args) -> dict[str, Any]:
  import pandas as pd
  from isoflop.train import compile_cache
  compile_cache.enable()
  os.makedirs(args.out, exist_ok=True)
  pretrained = os.path.join(args.out, "pretrain")
  lm_rows, _, lm_seconds = _train(pretrain_config(args), pretrained)
  lm_eval = [r for r in lm_rows if "eval_loss" in r][-1]
  print(f"pretrained {args.pretrain_steps} steps in {lm_seconds:.0f} s: held-out loss "
        f"{lm_eval['eval_loss']:.3f} nats/token")
  table, curves = [], {}
  for condition in CONDITIONS:
    for seed in range(args.seeds):
      name = f"{condition}_seed{seed}"
      rows, record, seconds = _train(finetune_config(args, condition, seed, pretrained),
                                     os.path.join(args.out, name))
      evals = [r for r in rows if "eval_accuracy" in r]
      curves.setdefault(condition, []).append(
          [(r["step"], r["eval_accuracy"]) for r in evals])
      table.append({"condition": condition, "seed": seed, "steps": args.finetune_steps,
                    "eval_accuracy": evals[-1]["eval_accuracy"],
                    "eval_top5_accuracy": evals[-1]["eval_top5_accuracy"],
                    "eval_loss": evals[-1]["eval_loss"],
                    "final_train_loss": [r for r in rows if "loss" in r][-1]["loss_mean"],
                    "n_params_trainable": record["n_params_trainable"],
                    "n_params_frozen": record["n_params_frozen"], "seconds": seconds})
      print(f"{name}: held-out accuracy {table[-1]['eval_accuracy']:.3f} ({seconds:.0f} s)")
  frame = pd.DataFrame(table)
  frame.to_csv(os.path.join(args.out, "runs.csv"), index=False)
  summary = {"command": " ".join([PROG] + list(args.argv)), "pretrain": {
      "steps": args.pretrain_steps, "eval_loss": lm_eval["eval_loss"], "seconds": lm_seconds},
      "chance": 1.0 / 38, "eval_passages": args.eval_batches * args.batch_size,
      "conditions": {}}
  for condition in CONDITIONS:
    part = frame[frame["condition"] == condition]
    mean, low, high = interval95(part["eval_accuracy"])
    summary["conditions"][condition] = {
        "label": LABELS[condition], "eval_accuracy_mean": mean, "eval_accuracy_ci95": [low, high],
        "eval_accuracy_per_seed": part["eval_accuracy"].tolist(),
        "eval_loss_mean": float(part["eval_loss"].mean()),
        "n_params_trainable": int(part["n_params_trainable"].iloc[0])}
  # Seed s of every condition reads the passages in the same order (and starts the head
  # alike): differences within a seed are paired, and their interval is the sharper one.
  pairs = [("full", "scratch"), ("lora", "scratch"), ("head", "scratch"), ("lora", "full"),
           ("head", "full")]
  summary["paired_differences"] = {}
  for a, b in pairs:
    diff = (frame[frame["condition"] == a]["eval_accuracy"].to_numpy()
            - frame[frame["condition"] == b]["eval_accuracy"].to_numpy())
    mean, low, high = interval95(diff)
    summary["paired_differences"][f"{a} - {b}"] = {"mean": mean, "ci95": [low, high],
                                                   "per_seed": diff.tolist()}
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  figure = os.path.join(args.out, "finetune_plays.png")
  _plot(summary, curves, figure)
  if args.figure:
    os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
    shutil.copy(figure, args.figure)
  return summary


def _plot(summary: dict[str, Any], curves: dict[str, list], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = dict(zip(CONDITIONS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
  for i, condition in enumerate(CONDITIONS):
    stats = summary["conditions"][condition]
    mean, (low, high) = stats["eval_accuracy_mean"], stats["eval_accuracy_ci95"]
    bars.bar(i, mean, color=colors[condition], yerr=[[mean - low], [high - mean]], capsize=6)
    seeds = stats["eval_accuracy_per_seed"]
    bars.scatter(np.full(len(seeds), i) + np.linspace(-0.12, 0.12, len(seeds)), seeds,
                 color="black", s=12, zorder=3)
    for curve in curves[condition]:
      steps, accuracy = zip(*curve)
      lines.plot(steps, accuracy, color=colors[condition], alpha=0.5)
    lines.plot([], [], color=colors[condition], label=LABELS[condition])
  for axis in (bars, lines):
    axis.axhline(summary["chance"], color="black", linestyle=":", linewidth=1)
  bars.set_xticks(range(len(CONDITIONS)), [LABELS[c].replace(", ", ",\n") for c in CONDITIONS],
                  fontsize=8)
  bars.set_ylabel("held-out accuracy (38 plays)")
  bars.set_title("mean and 95% interval over seeds (dots: seeds)")
  lines.set_xlabel("fine-tuning step")
  lines.set_ylabel("held-out accuracy")
  lines.set_title("held-out accuracy during fine-tuning (dotted: chance)")
  lines.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory for the runs and the results")
  parser.add_argument("--figure", default=None, help="also copy the figure here")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--pretrain_steps", type=int, default=1200)
  parser.add_argument("--finetune_steps", type=int, default=400)
  parser.add_argument("--d_model", type=int, default=64)
  parser.add_argument("--n_layers", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--vocab_size", type=int, default=2048, help="SentencePiece vocabulary")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--lora_rank", type=int, default=8)
  parser.add_argument("--eval_batches", type=int, default=48)
  args = parser.parse_args(argv)
  args.argv = argv
  if args.seeds < 1 or args.pretrain_steps < 1 or args.finetune_steps < 4:
    print(f"{PROG}: error: --seeds and --pretrain_steps must be >= 1 and --finetune_steps >= "
          "4", file=sys.stderr)
    return 2
  try:
    summary = run(args)
  except ValueError as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for condition, stats in summary["conditions"].items():
    low, high = stats["eval_accuracy_ci95"]
    print(f"{stats['label']}: {stats['eval_accuracy_mean']:.3f} [{low:.3f}, {high:.3f}]")
  for pair, stats in summary["paired_differences"].items():
    low, high = stats["ci95"]
    print(f"paired {pair}: {stats['mean']:+.3f} [{low:+.3f}, {high:+.3f}]")
  return 0


if __name__ == "__main__":
  sys.exit(main())
