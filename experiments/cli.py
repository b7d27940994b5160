"""The ``isoflop`` command: ``isoflop <subcommand> [--flags]``.

Subcommands share one config system: ``--config=<file.py>`` returning an
``ml_collections.ConfigDict``, with any field overridable as ``--config.a.b=value``.
Input errors print one line (what was wrong, what to do) and exit with status 2.
"""

import difflib
import os
import sys
from typing import Callable, Sequence

USAGE = """usage: isoflop <subcommand> [flags]

subcommands:
  train   train a model, or resume it: rerun the same command on the same workdir
          isoflop train --config=experiments/configs/tiny.py --workdir=runs/x
          [--config.steps=40 --config.mesh.data=2 ...] [--dry_run]
          [--coordinator_address=host:port --num_processes=N --process_id=i]

  sweep   run (or resume) every member of a sweep, writing <workdir>/runs.csv
          isoflop sweep --sweep=experiments/sweeps/shakespeare_isoflop.py --workdir=runs/s
          [--workers=K] [--dry_run]
  analyze fit scaling laws to a sweep or a CSV: isoflop analyze --workdir=runs/s --out=DIR
          (or --csv=FILE with columns N, loss and D or C)
  bench   time the training step: isoflop bench --config=... --out=bench.json [--steps=N]
          (tokens/s, MFU against the device's peak, memory, joules per token on NVIDIA)
  coordcheck  activation sizes against width under SP and muP (Tensor Programs V):
          isoflop coordcheck --config=experiments/configs/coordcheck.py --out=DIR
          [--widths=128,256,512,1024,2048 --seeds=3 --steps=5]
  transfer  best learning rate against width from an lr x width sweep (SP vs muP):
          isoflop transfer --workdir=runs/mup_lr --out=DIR

exit status: 0 done, 1 sweep with failed members, 2 bad input, 3 non-finite loss,
75 preempted (SIGTERM/SIGINT; rerun the same command to resume)
"""
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; the last good checkpoint is intact


class UsageError(Exception):
  """Bad input from the command line; its message is the one line the user sees."""


def resolve_config_path(path: str, relative_to: str | None = None) -> str:
  """A config path as given, else relative to ``relative_to``, else inside the installed
  package (so ``experiments/configs/x.py`` works from any directory)."""
  import isoflop.experiments
  package_root = os.path.dirname(os.path.dirname(isoflop.experiments.__file__))
  for candidate in (path, relative_to and os.path.join(relative_to, path),
                    os.path.join(package_root, path)):
    if candidate and os.path.exists(candidate):
      return candidate
  raise UsageError(f"config file {path!r} not found; pass the path of a config file, "
                   "e.g. --config=experiments/configs/tiny.py")


def _resolve_config_path(argv: list[str]) -> list[str]:
  return [f"--config={resolve_config_path(a.split('=', 1)[1])}" if a.startswith("--config=")
          else a for a in argv]


def parse_config(argv: Sequence[str], extra_flags: Callable[[object], None]):
  """Parses ``--config`` (with overrides) and the subcommand's own flags."""
  from absl import flags
  from ml_collections import config_flags

  argv = _resolve_config_path(list(argv))
  flag_values = flags.FlagValues()
  # sys_argv: the overrides come from these arguments, not the process's own (in-process use).
  config_flags.DEFINE_config_file("config", None, "config file (.py)", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  extra_flags(flag_values)
  if not any(a.startswith("--config=") for a in argv):
    raise UsageError("missing --config; pass e.g. --config=experiments/configs/tiny.py")
  try:
    flag_values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    raise UsageError(_unknown_key_message(argv) or one_line(e)) from None
  return flag_values


def _unknown_key_message(argv: Sequence[str]) -> str | None:
  """Names the first ``--config.a.b=v`` override whose key the config file does not define."""
  import importlib.util
  path = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  try:
    spec = importlib.util.spec_from_file_location("_isoflop_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # the config file itself is broken: report the original error instead
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(part, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (f"unknown config key config.{key}{hint}; check the spelling against the "
                f"config file {path}")
      node = node[part]
  return None


def one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text or type(error).__name__


def train_command(argv: Sequence[str]) -> int:
  from absl import flags

  def define(flag_values):
    flags.DEFINE_string("workdir", None, "run directory", flag_values=flag_values)
    flags.DEFINE_bool("dry_run", False, "compile ahead of time and report memory, FLOPs and "
                      "parameter counts without training", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a "
                        "multi-process run (or JAX_COORDINATOR_ADDRESS)", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "processes in the run (or JAX_NUM_PROCESSES)",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "this process's index (or JAX_PROCESS_ID)",
                         flag_values=flag_values)

  flag_values = parse_config(argv, define)
  if not flag_values.workdir:
    raise UsageError("missing --workdir; pass the run directory, e.g. --workdir=runs/x")
  from isoflop.train import build, distributed, dry_run, loop, preemption
  try:
    distributed.initialize(flag_values.coordinator_address, flag_values.num_processes,
                           flag_values.process_id)
    prepared = build.prepare(flag_values.config, workdir=flag_values.workdir)
    if flag_values.dry_run:
      dry_run.report(prepared, flag_values.workdir)
      return 0
    loop.run(prepared, flag_values.workdir)
  except ValueError as e:  # raised at the boundary by config, mesh, data and optimizer checks
    if os.environ.get("ISOFLOP_DEBUG"):
      raise
    raise UsageError(one_line(e)) from None
  except preemption.Preempted as e:
    print(f"isoflop train: {e}", file=sys.stderr)
    return preemption.EXIT_PREEMPTED
  except loop.NonFiniteError as e:
    print(f"isoflop train: error: {e}", file=sys.stderr)
    return EXIT_NON_FINITE
  return 0


def sweep_command(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  flags.DEFINE_string("sweep", None, "sweep file (.py)", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "sweep directory", flag_values=flag_values)
  flags.DEFINE_integer("workers", 1, "members run at once, each on its share of the devices",
                       flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "list the members with N, D, C and estimated time",
                    flag_values=flag_values)
  try:
    flag_values(list(argv))
  except flags.Error as e:
    raise UsageError(one_line(e)) from None
  if not flag_values.sweep:
    raise UsageError("missing --sweep; pass e.g. --sweep=experiments/sweeps/"
                     "shakespeare_isoflop.py")
  if not flag_values.workdir and not flag_values.dry_run:
    raise UsageError("missing --workdir; pass the sweep directory, e.g. --workdir=runs/sweep")
  from isoflop.experiments import sweep
  path = resolve_sweep_path(flag_values.sweep)
  try:
    return sweep.run(path, flag_values.workdir, workers=flag_values.workers,
                     dry_run=flag_values.dry_run)
  except ValueError as e:
    raise UsageError(one_line(e)) from None


def resolve_sweep_path(path: str) -> str:
  try:
    return resolve_config_path(path)
  except UsageError:
    raise UsageError(f"sweep file {path!r} not found; pass e.g. "
                     "--sweep=experiments/sweeps/shakespeare_isoflop.py") from None


def analyze_command(argv: Sequence[str]) -> int:
  from isoflop.experiments.analysis import analyze
  return analyze.main(list(argv))


def bench_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import bench
  return bench.main(list(argv))


def transfer_command(argv: Sequence[str]) -> int:
  from isoflop.experiments.analysis import lr_transfer
  return lr_transfer.main(list(argv))


def coordcheck_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import coordcheck
  return coordcheck.main(list(argv))


SUBCOMMANDS = {"train": train_command, "sweep": sweep_command, "analyze": analyze_command,
               "bench": bench_command, "coordcheck": coordcheck_command,
               "transfer": transfer_command}


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else EXIT_BAD_INPUT
  name = argv[1]
  if name not in SUBCOMMANDS:
    print(f"isoflop: unknown subcommand {name!r}; choose one of {sorted(SUBCOMMANDS)}",
          file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    return SUBCOMMANDS[name]([f"isoflop {name}"] + argv[2:])
  except UsageError as e:
    print(f"isoflop {name}: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def entry_point() -> None:
  sys.exit(main())


if __name__ == "__main__":
  entry_point()
