"""The ``isoflop`` command: ``isoflop <subcommand> [--flags]``.

Subcommands share one config system: ``--config=<file.py>`` returning an
``ml_collections.ConfigDict``, with any field overridable as ``--config.a.b=value``.
Input errors print one line (what was wrong, what to do) and exit with status 2.
"""

import difflib
import os
import sys
import time
from typing import Callable, Sequence

# Each subcommand's one-line summary, usage line and examples: `isoflop --help` lists the
# summaries and `isoflop <subcommand> --help` prints the rest with the subcommand's flags.
SUBCOMMAND_HELP = {
    "train": ("train a model, or resume it: rerun the same command on the same workdir",
              "isoflop train --config=<file.py> --workdir=<dir> [--config.a.b=value ...] "
              "[flags]",
              ["isoflop train --config=experiments/configs/tiny.py --workdir=runs/x",
               "isoflop train --config=experiments/configs/tiny.py --workdir=runs/x "
               "--config.steps=40 --config.mesh.data=2 --dry_run",
               "isoflop train --config=experiments/configs/llama_1b.py --workdir=runs/plan "
               "--dry_run --topology=v5p:2x2x2"]),
    "sweep": ("run (or resume) every member of a sweep, writing <workdir>/runs.csv",
              "isoflop sweep --sweep=<file.py> --workdir=<dir> [--workers=K] [--dry_run] "
              "[--launcher=local|ray|slurm] [--ray_address=...] [--slurm.*=...]",
              ["isoflop sweep --sweep=experiments/sweeps/shakespeare_isoflop.py "
               "--workdir=runs/s --workers=2",
               "isoflop sweep --sweep=experiments/sweeps/shakespeare_isoflop.py "
               "--workdir=runs/s_plan --dry_run --topology=v5e:2x2",
               "isoflop sweep --sweep=<file.py> --workdir=/shared/s --launcher=slurm "
               "--slurm.partition=gpu --slurm.gpus_per_node=8 --devices_per_member=8"]),
    "analyze": ("fit scaling laws (Chinchilla's three approaches) to a sweep or a CSV",
                "isoflop analyze (--workdir=<sweep dir> | --csv=<file>) --out=<dir> [flags]",
                ["isoflop analyze --workdir=runs/s --out=runs/s/analysis",
                 "isoflop analyze --csv=points.csv --out=runs/fit --drop_highest_loss=5"]),
    "bench": ("time the training step: tokens/s, MFU, memory, joules per token",
              "isoflop bench --config=<file.py> [--config.a.b=value ...] --out=<file.json> "
              "[flags]",
              ["isoflop bench --config=experiments/configs/tiny.py --out=bench.json --steps=20"]),
    "coordcheck": ("activation sizes against width under SP and muP (Tensor Programs V)",
                   "isoflop coordcheck --config=<file.py> --out=<dir> [flags]",
                   ["isoflop coordcheck --config=experiments/configs/coordcheck.py "
                    "--out=runs/coordcheck --widths=128,256,512 --seeds=3 --steps=5"]),
    "transfer": ("best learning rate against width from an lr x width sweep (SP vs muP)",
                 "isoflop transfer --workdir=<sweep dir> --out=<dir>",
                 ["isoflop transfer --workdir=runs/mup_lr --out=runs/mup_lr/transfer"]),
    "compress": ("prune, quantize or factorize a trained run; loss before and after",
                 "isoflop compress --workdir=<trained run> --method=prune|quantize|lowrank "
                 "--out=<dir> [--config.prune.sparsity=0.5 ...] [--finetune_steps=K]",
                 ["isoflop compress --workdir=runs/x --method=prune --out=runs/x_s50 "
                  "--config.prune.sparsity=0.5",
                  "isoflop compress --workdir=runs/x --method=quantize --out=runs/x_int8 "
                  "--config.quant.bits=8"]),
    "compare": ("final loss against N or C, and loss by position, for sweeps side by side",
                "isoflop compare --workdirs=<sweep dir>,<sweep dir> [--labels=a,b] "
                "[--x=N_kaplan] --out=<dir>",
                ["isoflop compare --workdirs=runs/kaplan_fig7_decoder,runs/kaplan_fig7_lstm "
                 "--labels=Transformer,LSTM --x=N_kaplan --out=runs/fig7"]),
    "sample": ("generate text from a trained run (decoder, MoE, LSTM, encoder-decoder)",
               "isoflop sample --workdir=<run> (--prompt=<text> | --prompt_tokens=1,2,3) "
               "[--max_new_tokens=N --temperature=T --top_k=K --top_p=P --seed=S "
               "--num_samples=M --step=S --json]",
               ["isoflop sample --workdir=runs/x --prompt='ROMEO:' --max_new_tokens=64 "
                "--temperature=0.8 --top_k=40",
                "isoflop sample --workdir=runs/x --prompt_tokens=1,2,3 --temperature=0 --json"]),
    "convert": ("Hugging Face checkpoints (GPT-2, Llama, BERT, T5) into runs, and runs back",
                "isoflop convert (--from_hf=<dir> --workdir=<new run> | --workdir=<run> "
                "--to_hf=<dir> [--step=S])",
                ["isoflop convert --from_hf=checkpoints/gpt2 --workdir=runs/gpt2",
                 "isoflop convert --workdir=runs/gpt2_ft --to_hf=exports/gpt2_ft"]),
}
HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull")
EXIT_STATUS_HELP = """\
exit status: 0 done, 1 sweep with failed members, 2 bad input, 3 non-finite loss,
4 a --topology plan that does not fit the chips, 75 preempted (SIGTERM/SIGINT; rerun the same
command to resume)"""
USAGE = ("usage: isoflop <subcommand> [flags]\n\nsubcommands:\n"
         + "".join(f"  {name:<11} {summary}\n"
                   for name, (summary, _, _) in SUBCOMMAND_HELP.items())
         + "\nisoflop <subcommand> --help (or -h) prints its flags and an example.\n\n"
         + EXIT_STATUS_HELP + "\n")
EXIT_BAD_INPUT = 2
# When this command began (a sweep worker resets it per member): the imports and set-up
# before the run's own preparation are timed from here.
command_started = time.perf_counter()
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; the last good checkpoint is intact


class UsageError(Exception):
  """Bad input from the command line; its message is the one line the user sees."""


class HelpRequested(Exception):
  """``--help``/``-h`` among a subcommand's arguments; ``main`` prints its help, exit 0."""

  def __init__(self, name: str, flag_values):
    super().__init__(name)
    self.name, self.flag_values = name, flag_values


def check_help(argv: Sequence[str], flag_values) -> None:
  """Raises ``HelpRequested`` if the arguments (after argv[0], before ``--``) ask for help.

  Called once the subcommand's flags are defined and before anything is parsed or read, so
  ``--help`` needs no config and writes nothing."""
  args = list(argv[1:])
  if "--" in args:
    args = args[:args.index("--")]
  if any(a in HELP_ARGS for a in args):
    name = argv[0].split()[-1] if argv else "isoflop"
    raise HelpRequested(name, flag_values)


def parse_flags(flag_values, argv: Sequence[str]) -> list[str]:
  """``flag_values(argv)`` after ``check_help``; returns the arguments that are not flags."""
  check_help(argv, flag_values)
  return flag_values(list(argv))


def parse_flags_or_report(prog: str, flag_values, argv: Sequence[str]) -> bool:
  """``parse_flags``; on a bad flag prints ``<prog>: error: ...`` in one line and returns
  False (the caller exits 2)."""
  from absl import flags
  try:
    parse_flags(flag_values, argv)  # --help: cli.main prints it
  except flags.Error as e:
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return False
  return True


def help_text(name: str, flag_values) -> str:
  """A subcommand's usage line, flags (with their help strings) and examples."""
  import textwrap
  _, usage, examples = SUBCOMMAND_HELP[name]
  lines = [f"usage: {usage}", "", f"{SUBCOMMAND_HELP[name][0]}", "", "flags:"]
  seen = set()
  for key in sorted(flag_values, key=lambda k: (k != "config", k)):
    flag = flag_values[key]
    if flag.name in seen:
      continue
    seen.add(flag.name)
    description = flag.help or ""
    if flag.name == "config":
      head = "--config=<file.py> plus --config.a.b=value overrides"
    elif flag.flag_type() == "bool":
      head = f"--[no]{flag.name}"
    elif hasattr(flag.parser, "enum_values"):
      choices = "|".join(flag.parser.enum_values)
      head = f"--{flag.name}=<{choices}>"
      description = description.removeprefix(f"<{choices}>: ")
    else:
      head = f"--{flag.name}=<{flag.flag_type()}>"
    if flag.default is not None and flag.name != "config":
      default = str(flag.default).lower() if isinstance(flag.default, bool) else flag.default
      description += f" (default: {default})"
    lines.append(f"  {head}")
    lines.extend(textwrap.wrap(description, width=92, initial_indent=" " * 6,
                               subsequent_indent=" " * 6))
  lines += ["", "example:" if len(examples) == 1 else "examples:"]
  lines += [f"  {example}" for example in examples]
  return "\n".join(lines) + "\n"


def print_help(name: str, flag_values) -> int:
  """Prints ``isoflop <name> --help`` to stdout; returns the exit status, 0."""
  print(help_text(name, flag_values))
  return 0


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

  argv = list(argv)
  flag_values = flags.FlagValues()
  # sys_argv: the overrides come from these arguments, not the process's own (in-process use).
  config_flags.DEFINE_config_file(
      "config", None, "config file (a .py whose get_config() returns a ConfigDict); "
      "override any of its fields with --config.a.b=value; required",
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  extra_flags(flag_values)
  check_help(argv, flag_values)  # before the config is looked for: --help needs none
  argv[:] = _resolve_config_path(argv)  # in place: the config flag reads overrides from argv
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


def check_output(path: str, flag: str, is_file: bool = False) -> None:
  """Refuses, in one line and before any work, an output path that cannot be written."""
  from isoflop.train import workdir as workdir_lib
  try:
    (workdir_lib.check_writable_file if is_file else workdir_lib.check_writable)(path, flag)
  except workdir_lib.WorkdirError as e:
    raise UsageError(str(e)) from None


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
    flags.DEFINE_string("topology", None, "with --dry_run: compile for a TPU slice that is "
                        "not attached, e.g. v5e:2x2 or v5p:4x4x4, and report per-chip memory "
                        "against its HBM, a roofline step time and chip-hours (needs "
                        "isoflop[tpu]); exit status 4 if it does not fit",
                        flag_values=flag_values)

  flag_values = parse_config(argv, define)
  if not flag_values.workdir:
    raise UsageError("missing --workdir; pass the run directory, e.g. --workdir=runs/x")
  topology = flag_values.topology
  if topology is not None:
    if not flag_values.dry_run:
      raise UsageError(f"--topology={topology} plans a run for a TPU slice that is not "
                       "attached; add --dry_run (on the slice itself, run the same command "
                       "without --topology)")
    from isoflop.train import tpu_plan
    try:
      tpu_plan.check_topology_name(topology)  # and libtpu: before anything is written
    except tpu_plan.PlanError as e:
      raise UsageError(str(e)) from None
  check_output(flag_values.workdir, "--workdir")  # before anything slow
  from isoflop.train import workdir as workdir_lib
  from isoflop.train import build, compile_cache, distributed, dry_run, loop, preemption
  compile_cache.enable()
  lock = None
  try:
    distributed.initialize(flag_values.coordinator_address, flag_values.num_processes,
                           flag_values.process_id)
    import jax
    if jax.process_index() == 0:  # the process that writes the workdir holds its lock
      lock = workdir_lib.Lock(flag_values.workdir).acquire()
      preemption.on_startup_exit(lock.remove_if_unused)
    from isoflop.train import wandb_log
    wandb_log.check_available(flag_values.config)
    before_prepare_s = time.perf_counter() - command_started
    if topology is not None:
      prepared = tpu_plan.prepare(flag_values.config, topology, workdir=flag_values.workdir)
    else:
      prepared = build.prepare(flag_values.config, workdir=flag_values.workdir)
    prepared.record["startup_s"] = {"imports": before_prepare_s,
                                    **prepared.record["startup_s"]}
    if topology is not None:
      return tpu_plan.report(prepared, topology, flag_values.workdir)
    if flag_values.dry_run:
      dry_run.report(prepared, flag_values.workdir)
      return 0
    loop.run(prepared, flag_values.workdir)
  except ValueError as e:  # raised at the boundary by config, mesh, data and optimizer checks
    if lock:
      lock.remove_if_unused()
    if os.environ.get("ISOFLOP_DEBUG"):
      raise
    raise UsageError(one_line(e)) from None
  except preemption.Preempted as e:
    if lock and e.step is None:
      lock.remove_if_unused()
    print(f"isoflop train: {e}", file=sys.stderr)
    return preemption.EXIT_PREEMPTED
  except loop.NonFiniteError as e:
    print(f"isoflop train: error: {e}", file=sys.stderr)
    return EXIT_NON_FINITE
  finally:
    if lock:
      lock.release()
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
  flags.DEFINE_string("launcher", "local", "where members run: local, ray or slurm",
                      flag_values=flag_values)
  flags.DEFINE_string("topology", None, "with --dry_run: compile every member for a TPU "
                      "slice that is not attached (e.g. v5p:4x4x4) and write the plan (fits, "
                      "memory per chip, step time, chip-hours) to <workdir, else .>/plan.csv; "
                      "exit status 4 if a member does not fit", flag_values=flag_values)
  define_launcher_flags(flag_values)
  try:
    parse_flags(flag_values, argv)
  except flags.Error as e:
    raise UsageError(one_line(e)) from None
  if not flag_values.sweep:
    raise UsageError("missing --sweep; pass e.g. --sweep=experiments/sweeps/"
                     "shakespeare_isoflop.py")
  if flag_values.topology is not None:
    if not flag_values.dry_run:
      raise UsageError(f"--topology={flag_values.topology} plans the sweep for a TPU slice "
                       "that is not attached; add --dry_run")
    from isoflop.train import tpu_plan
    try:
      tpu_plan.check_topology_name(flag_values.topology)
    except tpu_plan.PlanError as e:
      raise UsageError(str(e)) from None
    check_output(flag_values.workdir or os.getcwd(), "--workdir")  # where plan.csv goes
  if not flag_values.workdir and not flag_values.dry_run:
    raise UsageError("missing --workdir; pass the sweep directory, e.g. --workdir=runs/sweep")
  if flag_values.workdir and not flag_values.dry_run:
    check_output(flag_values.workdir, "--workdir")
  from isoflop.experiments import sweep
  path = resolve_sweep_path(flag_values.sweep)
  try:
    return sweep.run(path, flag_values.workdir, workers=flag_values.workers,
                     dry_run=flag_values.dry_run, launcher=flag_values.launcher,
                     launcher_flags=launcher_flags(flag_values),
                     topology=flag_values.topology)
  except ValueError as e:
    raise UsageError(one_line(e)) from None


# Launcher keys settable from the command line (dotted as in the sweep file's launcher
# block); --ray_address is ray.address.
LAUNCHER_FLAGS = {
    "devices_per_member": (int, "devices per member (per host): CPU fake devices, GPUs or TPU "
                                "chips"),
    "hosts_per_member": (int, "Ray: processes (hosts) per member, joined by jax.distributed"),
    "max_parallel": (int, "cluster launchers: members submitted at once (default all)"),
    "max_retries": (int, "requeues of a member that exits with the preemption status 75"),
    "ray.num_cpus": (float, "Ray: CPUs per member process"),
    "ray.num_gpus": (float, "Ray: GPUs per member process"),
    "ray.tpu_resource": (str, "Ray: the TPU resource name (e.g. TPU); devices_per_member of it"),
    "ray.placement": (str, "Ray: placement strategy of a multi-host member's processes"),
    "slurm.cluster": (str, "slurm (sbatch) or local (submitit's local executor)"),
    "slurm.partition": (str, "Slurm partition"),
    "slurm.account": (str, "Slurm account"),
    "slurm.gpus_per_node": (int, "GPUs per node"),
    "slurm.nodes": (int, "nodes per member (one process each)"),
    "slurm.cpus_per_task": (int, "CPUs per task"),
    "slurm.mem_gb": (float, "memory per node, GB"),
    "slurm.time_min": (int, "time limit per member job, minutes"),
    "slurm.folder": (str, "submitit's job files (default <workdir>/submitit)"),
}


def define_launcher_flags(flag_values) -> None:
  from absl import flags
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
  flags.DEFINE_string("ray_address", None, "Ray cluster (host:port or ray://host:10001); "
                      "default: a local cluster", flag_values=flag_values)
  for name, (kind, help_text) in LAUNCHER_FLAGS.items():
    define[kind](name, None, help_text, flag_values=flag_values)


def launcher_flags(flag_values) -> dict:
  """The launcher keys given on the command line (the sweep file's block holds the rest)."""
  given = {name: flag_values[name].value for name in LAUNCHER_FLAGS
           if flag_values[name].present}
  if flag_values["ray_address"].present:
    given["ray.address"] = flag_values.ray_address
  return given


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


def compare_command(argv: Sequence[str]) -> int:
  from isoflop.experiments.analysis import compare
  return compare.main(list(argv))


def compress_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import compress
  return compress.main(list(argv))


def convert_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import convert
  return convert.main(list(argv))


def sample_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import sample
  return sample.main(list(argv))


def coordcheck_command(argv: Sequence[str]) -> int:
  from isoflop.experiments import coordcheck
  return coordcheck.main(list(argv))


SUBCOMMANDS = {"train": train_command, "sweep": sweep_command, "analyze": analyze_command,
               "bench": bench_command, "coordcheck": coordcheck_command,
               "transfer": transfer_command, "compare": compare_command,
               "compress": compress_command, "sample": sample_command,
               "convert": convert_command}


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  default_platforms()
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else EXIT_BAD_INPUT
  name = argv[1]
  if name not in SUBCOMMANDS:
    close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    print(f"isoflop: unknown subcommand {name!r}{hint}; choose one of {sorted(SUBCOMMANDS)}",
          file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    return SUBCOMMANDS[name]([f"isoflop {name}"] + argv[2:])
  except HelpRequested as e:
    return print_help(name, e.flag_values)
  except UsageError as e:
    print(f"isoflop {name}: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def default_platforms() -> None:
  """Before JAX is imported: with libtpu installed (isoflop[tpu], for --topology plans) on a
  machine without TPUs or GPUs, JAX would try the TPU backend and print libtpu's warnings;
  there JAX_PLATFORMS defaults to cpu (``hardware.default_jax_platforms``)."""
  if "jax" in sys.modules:  # too late: JAX read JAX_PLATFORMS when it was imported
    return
  from isoflop.train import hardware
  platforms = hardware.default_jax_platforms()
  if platforms:
    os.environ["JAX_PLATFORMS"] = platforms  # inherited by sweep workers and members


def entry_point() -> None:
  from isoflop.train import preemption
  # Before any heavy import: Ctrl-C or SIGTERM during start-up exits at once with status 75.
  name = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS else ""
  preemption.install_startup_guard(f"isoflop {name}".strip())
  sys.exit(main())


if __name__ == "__main__":
  # Run the imported module, not this __main__ copy, so that the exceptions the subcommand
  # modules raise (cli.UsageError, cli.HelpRequested) are the classes main catches.
  from isoflop.experiments import cli as _cli
  _cli.entry_point()
