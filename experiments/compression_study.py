"""Compress every finished member of a sweep after training, one ``isoflop compress`` per member
and setting, and collect the reports into one table (issue 17's reproductions 3 and 5):

  python -m isoflop.experiments.compression_study --sweep_dir=runs/sparsity_shakespeare \\
      --out=runs/compressed --members=sparsity0.0 --quantize=8,4 --lowrank=0.25,0.5,0.75 \\
      [--recovery_steps=K]

``<out>/<member>/<method>_<setting>/`` is each compressed run (its compress.json);
``<out>/compression.csv`` has one row per compressed run, with the member's N, D and dense
loss from the sweep's runs.csv. A setting already compressed is skipped, so an interrupted
study resumes. ``--recovery_steps`` adds, for each low-rank setting, a second run that trains
that many steps from the factorized weights.
"""

import json
import os
import sys
from typing import Sequence

import pandas as pd

PROG = "python -m isoflop.experiments.compression_study"
TABLE = "compression.csv"
REPORT_KEYS = ("loss_before", "loss_after", "loss_after_finetune", "finetune_steps",
               "n_params_dense", "n_params_nonzero", "weight_bytes", "weight_bytes_dense")
MEMBER_KEYS = ("N_kaplan", "N_chinchilla", "D", "final_eval_loss", "sparsity")


def _numbers(text: str, flag: str, kind=float) -> list:
  try:
    return [kind(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--{flag}={text!r} must be a comma-separated list of numbers") from None


def jobs(quantize: Sequence[int], lowrank: Sequence[float], recovery_steps: int
         ) -> list[tuple[str, str, list[str]]]:
  """(tag, method, extra compress arguments) of every setting asked for."""
  out = [(f"quantize_int{bits}", "quantize", [f"--config.quant.bits={bits}"])
         for bits in quantize]
  for fraction in lowrank:
    flags = [f"--config.lowrank.rank_fraction={fraction}"]
    out.append((f"lowrank_{fraction:g}", "lowrank", flags))
    if recovery_steps:
      out.append((f"lowrank_{fraction:g}_recovered{recovery_steps}", "lowrank",
                  flags + [f"--finetune_steps={recovery_steps}"]))
  return out


def run(sweep_dir: str, out: str, members: str, quantize: Sequence[int],
        lowrank: Sequence[float], recovery_steps: int) -> pd.DataFrame:
  from isoflop.experiments import cli
  runs_path = os.path.join(sweep_dir, "runs.csv")
  if not os.path.exists(runs_path):
    raise ValueError(f"--sweep_dir={sweep_dir} has no runs.csv; run the sweep first")
  table = pd.read_csv(runs_path)
  table = table[(table["status"] == "done") & table["name"].str.contains(members, regex=False)]
  if table.empty:
    raise ValueError(f"no finished member of {sweep_dir} has {members!r} in its name")
  os.makedirs(out, exist_ok=True)
  rows = []
  for _, member in table.iterrows():
    for tag, method, extra in jobs(quantize, lowrank, recovery_steps):
      target = os.path.join(out, member["name"], tag)
      report_path = os.path.join(target, "compress.json")
      if not os.path.exists(report_path):
        status = cli.main(["isoflop", "compress",
                           f"--workdir={os.path.join(sweep_dir, member['workdir'])}",
                           f"--method={method}", f"--out={target}", *extra])
        if status != 0:
          raise ValueError(f"compressing {member['name']} ({tag}) failed; see the line above")
      with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
      row = {"member": member["name"], "tag": tag, "method": method,
             **{k: member.get(k) for k in MEMBER_KEYS},
             **{k: report.get(k) for k in REPORT_KEYS}}
      if method == "quantize":
        row["bits"] = report["quant"]["bits"]
      else:
        row["rank_fraction"] = report["lowrank"].get("rank_fraction")
      rows.append(row)
  frame = pd.DataFrame(rows)
  path = os.path.join(out, TABLE)
  frame.to_csv(path + ".tmp", index=False)
  os.replace(path + ".tmp", path)
  return frame


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("sweep_dir", None, "a sweep's workdir (its runs.csv and members)", **define)
  flags.DEFINE_string("out", None, "directory for the compressed runs and compression.csv",
                      **define)
  flags.DEFINE_string("members", "", "only members whose name contains this", **define)
  flags.DEFINE_string("quantize", "8,4", "weight bit widths of PTQ (empty: none)", **define)
  flags.DEFINE_string("lowrank", "", "rank fractions of the low-rank factorization", **define)
  flags.DEFINE_integer("recovery_steps", 0, "steps of recovery after each factorization",
                       lower_bound=0, **define)
  try:
    flag_values(list(argv))
    if not flag_values.sweep_dir or not flag_values.out:
      raise ValueError("pass --sweep_dir=<sweep workdir> and --out=<directory>")
    frame = run(flag_values.sweep_dir, flag_values.out, flag_values.members,
                _numbers(flag_values.quantize, "quantize", int),
                _numbers(flag_values.lowrank, "lowrank"), flag_values.recovery_steps)
  except (flags.Error, ValueError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(frame.to_string(index=False))
  print(f"wrote {os.path.join(flag_values.out, TABLE)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
