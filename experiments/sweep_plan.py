"""``isoflop sweep --dry_run --topology=v5p:4x4x4``: every member's TPU plan
(train/tpu_plan.py), compiled in this process for the slice, as a table and ``plan.csv``.

Per member: whether its step fits a chip's HBM, the memory it needs per chip, the roofline step
time, tokens/s, and the hours and chip-hours of its training steps (a WSD branch trains only
the steps after its branch point). The sweep's total assumes members run one after another
on the whole slice.
"""

import os
import sys

import pandas as pd

from isoflop.experiments import sweep_definition, sweep_estimate
from isoflop.train import tpu_plan

PLAN_COLUMNS = ["name", "fits", "memory_needed_per_chip_bytes", "hbm_per_chip_bytes",
                "hbm_fraction", "estimated_step_time_s", "bound", "units_per_s", "unit",
                "steps", "trained_steps", "estimated_hours", "estimated_chip_hours",
                "flops_per_chip", "bytes_accessed_per_chip", "N", "D", "C", "topology",
                "chips", "largest_buffers", "error"]


def member_row(sweep, config, member, topology: str) -> dict:
  """One row of plan.csv: the member's plan, or its error (``fits`` None)."""
  counts = sweep_estimate.member_counts(sweep, config, member)
  row = dict.fromkeys(PLAN_COLUMNS)
  row.update(name=member.name, topology=topology, N=counts["N"], D=counts["D"], C=counts["C"],
             steps=counts["steps"], trained_steps=counts["steps"] - (member.branch_step or 0))
  try:
    prepared = tpu_plan.prepare(sweep_definition.resolved_config(config, member), topology)
    plan = tpu_plan.plan(prepared, topology)
  except ValueError as e:  # this member's config cannot be planned (mesh, batch, shapes)
    row["error"] = " ".join(str(e).split())
    return row
  unit = prepared.record["unit"]
  step_s = plan["estimated_step_time_s"]
  row.update({key: plan[key] for key in ("fits", "memory_needed_per_chip_bytes",
                                         "hbm_per_chip_bytes", "hbm_fraction", "chips",
                                         "estimated_step_time_s", "flops_per_chip",
                                         "bytes_accessed_per_chip")})
  row.update(bound=plan["roofline"]["bound"], unit=unit, units_per_s=plan[f"{unit}s_per_s"],
             estimated_hours=row["trained_steps"] * step_s / 3600,
             estimated_chip_hours=row["trained_steps"] * step_s * plan["chips"] / 3600,
             largest_buffers="; ".join(f"{k} {v / 2**30:.3g} GiB" for k, v in
                                       plan["largest_buffers_per_chip_bytes"].items()))
  return row


def _cell(value, fmt: str) -> str:
  return "-" if value is None or value != value else format(value, fmt)


def write_csv(table: pd.DataFrame, path: str) -> None:
  """Written whole or not at all: a temporary file, then renamed."""
  table.to_csv(f"{path}.tmp", index=False)
  os.replace(f"{path}.tmp", path)


def report(sweep, config, members, topology: str, out_dir: str) -> int:
  """Plans every member for ``topology``, prints the table and writes ``<out_dir>/plan.csv``;
  returns 0 when every member fits, else ``tpu_plan.EXIT_DOES_NOT_FIT``."""
  tpu_plan.topology_devices(topology)  # the slice itself, before any member (PlanError)
  rows = [member_row(sweep, config, m, topology) for m in members]
  table = pd.DataFrame(rows, columns=PLAN_COLUMNS)
  width = max([24] + [len(r["name"]) for r in rows])
  print(f"{'member':<{width}} {'N':>12} {'steps':>7} {'fits':>5} {'GiB/chip':>9} {'HBM':>6} "
        f"{'step s':>9} {'bound':>7} {'units/s':>11} {'chip-h':>9}")
  for r in rows:
    fits = "error" if r["error"] else ("yes" if r["fits"] else "no")
    memory = None if r["memory_needed_per_chip_bytes"] is None else (
        r["memory_needed_per_chip_bytes"] / 2**30)
    print(f"{r['name']:<{width}} {r['N']:>12,} {r['steps']:>7} {fits:>5} "
          f"{_cell(memory, '.3g'):>9} {_cell(r['hbm_fraction'], '.1%'):>6} "
          f"{_cell(r['estimated_step_time_s'], '.3g'):>9} {r['bound'] or '-':>7} "
          f"{_cell(r['units_per_s'], ',.0f'):>11} {_cell(r['estimated_chip_hours'], '.3g'):>9}")
  for r in rows:
    if r["error"]:
      print(f"  {r['name']}: {r['error']}")
  planned = table[table.error.isna()]
  fit = int(planned.fits.astype(bool).sum())
  chips = int(planned.chips.iloc[0]) if len(planned) else None
  chip_hours = planned.estimated_chip_hours.sum()
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "plan.csv")
  write_csv(table, path)
  on = f" on {chips} chips" if chips else ""
  print(f"{fit} of {len(rows)} members fit {topology}{on}; the sweep: {chip_hours:.3g} "
        f"chip-hours ({planned.estimated_hours.sum():.3g} h on the slice, members one after "
        f"another; roofline estimates, inter-chip communication not counted); wrote {path}")
  sys.stdout.flush()
  return 0 if fit == len(rows) else tpu_plan.EXIT_DOES_NOT_FIT
