"""``isoflop sweep --dry_run``: each member's N, D and C from the counters, and an estimated
time on this machine from one short timed run of one member (the median in compute).

A member's time is ``startup_s + training``. ``startup_s`` is what each member pays once,
whatever its length: building the data, compiling, the first steps' warm-up, the final
checkpoint and evaluation. It is measured as the timed run's wall time less its steady-state
training time (its steps at the step time after warm-up) and less the process's own start
(imports, ``worker_start_s``), which a sweep pays once per long-lived worker process
(experiments/sweep_worker.py), not per member. Training is the member's FLOPs (only those
after the branch point, for a WSD branch) times the timed run's steady seconds per FLOP.
Small models run below the FLOP rate of the timed one, large ones above it, so per member the
training figure is rough; the start-up, which dominates small sweeps, is measured.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

from isoflop.experiments import cli, sweep_definition

TIMED_STEPS = 20  # logged every 10: the second interval is past compilation and warm-up


@dataclasses.dataclass(frozen=True)
class Timing:
  """What the timed run of ``member`` measured on this machine."""
  member: str
  seconds_per_flop: float  # steady-state training, after warm-up
  startup_s: float  # per member: its wall time less its steady training time and imports
  worker_start_s: float = 0.0  # once per worker process: Python, JAX and the libraries


def member_counts(sweep, config, member) -> dict:
  return sweep_definition.member_counts(sweep, config, member)


def timing_from_run(member: str, wall_s: float, metric_rows: list[dict],
                    flops_per_step: float, steps: int, imports_s: float = 0.0) -> Timing:
  """The timing of a run of ``steps`` steps that took ``wall_s`` from process start to exit:
  its steady step time is that of its last log interval, and whatever the wall time holds
  beyond ``steps`` such steps is start-up; of that, ``imports_s`` (the process's own start,
  before the run's preparation) is paid once per sweep worker, not per member."""
  step_time = [r for r in metric_rows if "step_time_s" in r][-1]["step_time_s"]
  startup = max(wall_s - steps * step_time, 0.0)
  imports_s = min(imports_s, startup)
  return Timing(member, step_time / flops_per_step, startup - imports_s, imports_s)


def time_member(sweep, config, member) -> Timing | None:
  """Runs ``TIMED_STEPS`` steps of ``member`` as its own ``isoflop train`` process, as the
  sweep would, and times it; None if the run fails."""
  config_path = cli.resolve_config_path(sweep.config)
  evaluates = sweep_definition.resolved_config(config, member).eval_every > 0
  # Checkpoints and the evaluation only at the end, as a member of a sweep mostly has them:
  # inside the timed steps they would count as training time.
  overrides = {**sweep_definition.shared_overrides(sweep), **member.overrides,
               "steps": TIMED_STEPS, "log_every": 10, "optimizer.warmup_steps": 0,
               "checkpoint_every": 10 ** 9, "eval_every": 10 ** 9 if evaluates else 0}
  from isoflop.experiments.sweep import member_command
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    out = subprocess.run(member_command(config_path, tmp, overrides), capture_output=True,
                         text=True, timeout=600)
    wall_s = time.perf_counter() - start
    if out.returncode:
      return None
    with open(os.path.join(tmp, "metrics.jsonl"), encoding="utf-8") as f:
      rows = [json.loads(line) for line in f]
    with open(os.path.join(tmp, "config.json"), encoding="utf-8") as f:
      record = json.load(f)
  return timing_from_run(member.name, wall_s, rows,
                         record["flops_per_step"][sweep.flop_convention], TIMED_STEPS,
                         record.get("startup_s", {}).get("imports", 0.0))


def _plural(count: int, noun: str) -> str:
  return f"{count} {noun}{'' if count == 1 else 's'}"


def report(sweep, config, members, *, workers: int = 1,
           measure: Callable[..., Timing | None] = time_member) -> list[dict]:
  """Prints one row per member (N, D, C, steps, and its start-up, training and total
  seconds) and the sweep's total; returns the rows. ``measure(sweep, config, member)``
  times the median member."""
  rows = [member_counts(sweep, config, m) for m in members]
  median = sorted(range(len(rows)), key=lambda i: rows[i]["C"])[len(rows) // 2]
  timing = measure(sweep, config, members[median])
  width = max([24] + [len(r["name"]) for r in rows])
  print(f"{'member':<{width}} {'N':>10} {'D':>12} {'C':>10} {'steps':>7} {'start s':>8} "
        f"{'train s':>8} {'est. s':>8}")
  for row, member in zip(rows, members):
    # a WSD branch trains only the steps after the point it branches from
    trained = row["C"] * (row["steps"] - (member.branch_step or 0)) / row["steps"]
    if timing is None:
      row.update(startup_s=None, train_time_s=None, est_time_s=None)
      times = ["?"] * 3
    else:
      row.update(startup_s=timing.startup_s, train_time_s=trained * timing.seconds_per_flop)
      row["est_time_s"] = row["startup_s"] + row["train_time_s"]
      times = [f"{row[k]:.1f}" for k in ("startup_s", "train_time_s", "est_time_s")]
    print(f"{row['name']:<{width}} {row['N']:>10,} {row['D']:>12,} {row['C']:>10.3g} "
          f"{row['steps']:>7} {times[0]:>8} {times[1]:>8} {times[2]:>8}")
  counted = (f"{_plural(len(rows), 'member')}; N under {sweep.n_convention}, C under "
             f"{sweep.flop_convention}")
  if timing is None:
    print(f"{counted}; no time estimate: the timed run of {members[median].name} failed")
  else:
    training = sum(r["train_time_s"] for r in rows)
    members_s = sum(r["est_time_s"] for r in rows)
    total = members_s / workers + timing.worker_start_s
    on = "one worker" if workers == 1 else f"{workers} workers"
    parts = (f"{_plural(len(rows), 'member')} x {timing.startup_s:.1f} s start-up + "
             f"{training:.0f} s training")
    if workers > 1:
      parts = f"({parts}) / {workers}"
    if timing.worker_start_s:
      parts += f" + {timing.worker_start_s:.1f} s worker start"
    print(f"{counted}; estimated time {total:.0f} s on {on} = {parts}, from a timed run of "
          f"{timing.member} ({TIMED_STEPS} steps; start-up = its wall time less its steady "
          "training time; members share long-lived worker processes)")
  sys.stdout.flush()
  return rows
