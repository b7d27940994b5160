"""``isoflop sweep --dry_run``: each member's N, D and C from the counters, and an estimated
time from a short timed run of one member (the median in compute) on this machine."""

import json
import os
import subprocess
import sys
import tempfile

from isoflop.experiments import cli, sweep_definition
from isoflop.models import counting
from isoflop.train import causal_lm


def member_counts(sweep, config, member) -> dict:
  resolved = config.copy_and_resolve_references()
  for key, value in member.overrides.items():
    sweep_definition.set_key(resolved, key, value)
  model = causal_lm.decoder_config(resolved)
  tokens = resolved.steps * resolved.batch_size * resolved.seq_len
  per_token = counting.flops_per_token(model, resolved.seq_len)
  return {"name": member.name, "steps": resolved.steps, "D": tokens,
          "N": counting.n_by_convention(model)[sweep.n_convention],
          "C": per_token[sweep.flop_convention] * tokens}


def seconds_per_flop(sweep, config, member) -> float | None:
  """Times 20 steps of ``member`` (the second 10, after compilation and warm-up)."""
  config_path = cli.resolve_config_path(sweep.config)
  overrides = {**sweep_definition.shared_overrides(sweep), **member.overrides, "steps": 20,
               "log_every": 10, "eval_every": 0, "optimizer.warmup_steps": 0}
  from isoflop.experiments.sweep import member_command
  with tempfile.TemporaryDirectory() as tmp:
    out = subprocess.run(member_command(config_path, tmp, overrides), capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
      return None
    with open(os.path.join(tmp, "metrics.jsonl"), encoding="utf-8") as f:
      rows = [json.loads(line) for line in f]
    with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
      flops_per_step = json.load(f)["flops_per_step"][sweep.flop_convention]
  return rows[-1]["step_time_s"] / flops_per_step


def report(sweep, config, members) -> list[dict]:
  rows = [member_counts(sweep, config, m) for m in members]
  median = sorted(range(len(rows)), key=lambda i: rows[i]["C"])[len(rows) // 2]
  rate = seconds_per_flop(sweep, config, members[median])
  print(f"{'member':<24} {'N':>10} {'D':>12} {'C':>10} {'steps':>7} {'est. s':>8}")
  for row in rows:
    row["est_time_s"] = None if rate is None else row["C"] * rate
    est = "?" if rate is None else f"{row['est_time_s']:.0f}"
    print(f"{row['name']:<24} {row['N']:>10,} {row['D']:>12,} {row['C']:>10.3g} "
          f"{row['steps']:>7} {est:>8}")
  total = sum(r["est_time_s"] or 0 for r in rows)
  print(f"{len(rows)} members; N under {sweep.n_convention}, C under {sweep.flop_convention}; "
        f"estimated training time {total:.0f} s on one worker"
        + ("" if rate else " (timing run failed)")
        + f", from a timed run of {members[median].name}, excluding start-up and compilation")
  sys.stdout.flush()
  return rows
