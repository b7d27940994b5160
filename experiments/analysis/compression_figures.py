"""Figures of issue 17's compression reproductions, from sweeps' runs.csv and the tables of
`compression_study` (compression.csv):

  python -m isoflop.experiments.analysis.compression_figures --out=docs/figures \\
      --sparsity_sweep=runs/sparsity_shakespeare --compressed=runs/compressed_ladder \\
      [--compressed_tokens=runs/compressed_tokens] [--distill_sweep=runs/distill_shakespeare]

- compression_quant_damage.png: PTQ's loss increase against N (the ladder, each data budget)
  and against tokens seen (one size), int8 and int4.
- compression_lowrank.png: held-out loss against rank fraction per size, with and without
  recovery steps.
- compression_frontier.png: held-out loss against bytes of weights for the decoder at one data
  budget: dense ladder, sparse training, PTQ, low-rank, distilled students.
- compression_summary.json: the numbers drawn.

Bytes of weights: float32 values of every parameter (dense); a sparse run's kept values plus a
one-bit mask per prunable matrix entry (taken as its N_kaplan, an upper bound); quantized and
factorized runs as their compress.json's weight_bytes.
"""

import json
import os
import sys
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PROG = "python -m isoflop.experiments.analysis.compression_figures"
FLOAT_BYTES = 4


def _done(sweep_dir: str) -> pd.DataFrame:
  table = pd.read_csv(os.path.join(sweep_dir, "runs.csv"))
  return table[table["status"] == "done"].copy()


def _budget(name: str) -> str:
  return name.split("_")[1]  # ladder_r40_N..., the ladder's tokens-per-parameter tag


def _save(fig: Figure, out: str, name: str) -> str:
  path = os.path.join(out, f"{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  return path


def quant_damage(ladder: pd.DataFrame, tokens: pd.DataFrame | None, out: str) -> tuple[str, dict]:
  quant = ladder[ladder["method"] == "quantize"].copy()
  quant["damage"] = quant["loss_after"] - quant["loss_before"]
  panels = 2 if tokens is not None else 1
  fig = Figure(figsize=(5.5 * panels, 4))
  ax = fig.add_subplot(1, panels, 1)
  summary = {"vs_N": [], "vs_D": []}
  for (budget, bits), group in quant.groupby([quant["member"].map(_budget), "bits"]):
    group = group.sort_values("N_kaplan")
    ax.plot(group["N_kaplan"], group["damage"], marker="o" if bits == 8 else "s",
            label=f"int{bits}, {budget[1:]} tokens/param")
    summary["vs_N"] += [{"budget": budget, "bits": int(bits), "N": float(n), "D": float(d),
                         "damage": float(x)} for n, d, x in
                        zip(group["N_kaplan"], group["D"], group["damage"])]
  ax.set(xscale="log", xlabel="N (non-embedding parameters)",
         ylabel="held-out loss increase after PTQ (nats/token)", title="PTQ damage vs size")
  ax.axhline(0, color="grey", lw=0.5)
  ax.legend(fontsize=7)
  if tokens is not None:
    ax = fig.add_subplot(1, 2, 2)
    quant = tokens[tokens["method"] == "quantize"].copy()
    quant["damage"] = quant["loss_after"] - quant["loss_before"]
    for bits, group in quant.groupby("bits"):
      group = group.sort_values("D")
      ax.plot(group["D"], group["damage"], marker="o" if bits == 8 else "s", label=f"int{bits}")
      summary["vs_D"] += [{"bits": int(bits), "N": float(n), "D": float(d), "damage": float(x)}
                          for n, d, x in zip(group["N_kaplan"], group["D"], group["damage"])]
    ax.set(xscale="log", xlabel="tokens seen D",
           title=f"PTQ damage vs data, N = {quant['N_kaplan'].iloc[0]:.3g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
  return _save(fig, out, "compression_quant_damage"), summary


def lowrank(ladder: pd.DataFrame, out: str) -> tuple[str, list]:
  rows = ladder[ladder["method"] == "lowrank"].copy()
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot(1, 1, 1)
  summary = []
  for member, group in rows.groupby("member"):
    plain = group[group["loss_after_finetune"].isna()].sort_values("rank_fraction")
    line, = ax.plot(list(plain["rank_fraction"]) + [1.0],
                    list(plain["loss_after"]) + [plain["loss_before"].iloc[0]], marker="o",
                    label=f"N = {group['N_kaplan'].iloc[0]:.3g}, {_budget(member)[1:]} tok/param")
    recovered = group[group["loss_after_finetune"].notna()].sort_values("rank_fraction")
    if not recovered.empty:
      steps = int(recovered["finetune_steps"].iloc[0])
      ax.plot(recovered["rank_fraction"], recovered["loss_after_finetune"], marker="^", ls="--",
              color=line.get_color(), label=f"  + {steps} recovery steps")
    for _, row in group.iterrows():
      summary.append({"member": member, "N": float(row["N_kaplan"]),
                      "rank_fraction": float(row["rank_fraction"]),
                      "loss_before": float(row["loss_before"]),
                      "loss_after": float(row["loss_after"]),
                      "loss_after_finetune": None if pd.isna(row["loss_after_finetune"])
                      else float(row["loss_after_finetune"])})
  ax.set(xlabel="rank fraction r / min(d_in, d_out)", ylabel="held-out loss (nats/token)",
         title="Low-rank factorization of the hidden matrices")
  ax.legend(fontsize=7)
  return _save(fig, out, "compression_lowrank"), summary


def frontier(sweep: pd.DataFrame, ladder: pd.DataFrame, distill: pd.DataFrame | None,
             budget: str, out: str) -> tuple[str, dict]:
  points: dict[str, list] = {}
  members = sweep[sweep["name"].map(_budget) == budget]
  dense = members[members["sparsity"].fillna(0) == 0]
  points["dense"] = [(FLOAT_BYTES * n, loss) for n, loss in
                     zip(dense["N_chinchilla"], dense["final_eval_loss"])]
  sparse = members[members["sparsity"].fillna(0) > 0]
  points["sparse training"] = [
      (FLOAT_BYTES * nz + n / 8, loss) for nz, n, loss in
      zip(sparse["N_nonzero_chinchilla"], sparse["N_kaplan"], sparse["final_eval_loss"])]
  compressed = ladder[ladder["member"].map(_budget) == budget]
  for bits in sorted(compressed["bits"].dropna().unique()):
    rows = compressed[compressed["bits"] == bits]
    points[f"PTQ int{int(bits)}"] = list(zip(rows["weight_bytes"], rows["loss_after"]))
  rows = compressed[compressed["method"] == "lowrank"]
  recovered = rows["loss_after_finetune"].notna()
  if (~recovered).any():
    points["low-rank"] = list(zip(rows[~recovered]["weight_bytes"], rows[~recovered]["loss_after"]))
  if recovered.any():
    points["low-rank + recovery"] = list(zip(rows[recovered]["weight_bytes"],
                                             rows[recovered]["loss_after_finetune"]))
  if distill is not None:
    students = distill[distill["name"].str.contains("teacher") &
                       ~distill["name"].str.contains("teacherNone")]
    points["distilled students (20 tok/param)"] = [
        (FLOAT_BYTES * n, loss) for n, loss in
        zip(students["N_chinchilla"], students["final_eval_loss"])]
  fig = Figure(figsize=(6, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  for label, xy in points.items():
    if xy:
      x, y = zip(*sorted(xy))
      ax.plot(x, y, marker="o", ls="-" if label == "dense" else "none", label=label)
  ax.set(xscale="log", xlabel="bytes of weights", ylabel="held-out loss (nats/token)",
         title=f"Decoder on Shakespeare bytes, {budget[1:]} tokens/param")
  ax.legend(fontsize=7)
  summary = {label: [{"bytes": float(b), "loss": float(l)} for b, l in xy]
             for label, xy in points.items()}
  return _save(fig, out, "compression_frontier"), summary


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "directory for the figures", **define)
  flags.DEFINE_string("sparsity_sweep", None, "workdir of the sparsity sweep", **define)
  flags.DEFINE_string("compressed", None, "compression_study output over the ladder", **define)
  flags.DEFINE_string("compressed_tokens", None, "compression_study output over the token "
                      "budgets of one size", **define)
  flags.DEFINE_string("distill_sweep", None, "workdir of the distillation sweep", **define)
  flags.DEFINE_string("budget", "r40", "the ladder's tokens-per-parameter tag of the frontier",
                      **define)
  try:
    flag_values(list(argv))
    if not (flag_values.out and flag_values.sparsity_sweep and flag_values.compressed):
      raise ValueError("pass --out, --sparsity_sweep and --compressed")
    os.makedirs(flag_values.out, exist_ok=True)
    sweep = _done(flag_values.sparsity_sweep)
    ladder = pd.read_csv(os.path.join(flag_values.compressed, "compression.csv"))
    tokens = (pd.read_csv(os.path.join(flag_values.compressed_tokens, "compression.csv"))
              if flag_values.compressed_tokens else None)
    distill = _done(flag_values.distill_sweep) if flag_values.distill_sweep else None
  except (flags.Error, ValueError, OSError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  paths, summary = [], {}
  path, summary["quant_damage"] = quant_damage(ladder, tokens, flag_values.out)
  paths.append(path)
  if (ladder["method"] == "lowrank").any():
    path, summary["lowrank"] = lowrank(ladder, flag_values.out)
    paths.append(path)
  path, summary["frontier"] = frontier(sweep, ladder, distill, flag_values.budget,
                                       flag_values.out)
  paths.append(path)
  summary_path = os.path.join(flag_values.out, "compression_summary.json")
  with open(summary_path, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=lambda x: None if np.isnan(x) else x)
  for path in paths + [summary_path]:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
