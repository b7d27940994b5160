"""`isoflop compress`: compress a trained run after training, measured on its held-out split.

  isoflop compress --workdir=<trained run> --method=prune|quantize|lowrank --out=<dir>
      [--config.prune.sparsity=0.5 ...] [--finetune_steps=K] [--step=S]

The trained run's own config (from its config.json) takes ``--config.*`` overrides of the
compression blocks (``prune``, ``quant``, ``lowrank``) like ``isoflop train``. ``--out`` becomes a
loadable run (config.json says what was done; ``checkpoints/<step>`` holds the compressed
parameters, usable as ``init_from``, as a distillation teacher or by another ``compress``) with
``compress.json``: ``loss_before`` and ``loss_after`` (held-out), ``n_params_dense``,
``n_params_nonzero``, ``weight_bytes`` and ``flops_per_token`` before and after.
``--finetune_steps=K`` trains K more steps from the compressed parameters (pruning: masks held)
and adds ``loss_after_finetune``.
"""

import json
import os
import sys
from typing import Any, Sequence

import ml_collections

PROG = "isoflop compress"
METHODS = ("prune", "quantize", "lowrank")


class CompressError(ValueError):
  """Input compress cannot use; the message is the one line the user sees."""


def run_config(recorded: dict[str, Any]) -> ml_collections.ConfigDict:
  """A trained run's config as a typed ConfigDict: the base config (its family's model block)
  with the recorded values, so that ``--config.*`` overrides parse as for ``isoflop train``."""
  from isoflop.experiments.configs import base
  from isoflop.models import families
  config = base.get_config()
  family = recorded.get("model", {}).get("family", families.DEFAULT)
  if family != families.DEFAULT:
    config.model = base.family_model_block(family, families.get(family).config_class)

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and key in node and isinstance(node[key],
                                                                ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        with node.ignore_type():
          node[key] = tuple(value) if isinstance(value, list) else value

  merge(config, recorded)
  return config


def _source(workdir: str, step: int | None) -> tuple[dict[str, Any], int]:
  from isoflop.train import init_from
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CompressError(f"--workdir={workdir} has no config.json; point it at a trained run")
  try:
    _, step = init_from.resolve(f"{os.path.abspath(workdir)}"
                                + ("" if step is None else f":{step}"), flag="--workdir")
  except ValueError as e:
    raise CompressError(str(e)) from None
  with open(path, encoding="utf-8") as f:
    return json.load(f), step


def _flags(argv: Sequence[str], config: ml_collections.ConfigDict | None):
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "the trained run to compress", **define)
  flags.DEFINE_enum("method", None, list(METHODS), "what to do to its parameters", **define)
  flags.DEFINE_string("out", None, "directory for the compressed run and compress.json",
                      **define)
  flags.DEFINE_integer("finetune_steps", 0, "steps of recovery training after compressing",
                       lower_bound=0, **define)
  flags.DEFINE_integer("step", None, "checkpoint to compress (default: the newest)", **define)
  config_flags.DEFINE_config_dict(
      "config", config if config is not None else ml_collections.ConfigDict(),
      "the trained run's config; override the compression blocks as --config.prune.sparsity=0.5",
      lock_config=False, sys_argv=list(argv), **define)
  return flags, flag_values


def _prescan(argv: Sequence[str], name: str) -> str | None:
  for arg in argv:
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


def main(argv: Sequence[str]) -> int:
  from isoflop.experiments import cli
  try:
    workdir = _prescan(argv[1:], "workdir")
    config = None
    if workdir and not any(a in cli.HELP_ARGS for a in argv[1:]):
      step = _prescan(argv[1:], "step")
      recorded, _ = _source(workdir, int(step) if step and step.isdigit() else None)
      config = run_config(recorded["config"])
    flags, flag_values = _flags(argv, config)
    try:
      extra = cli.parse_flags(flag_values, argv)[1:]
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
      raise CompressError(cli.one_line(e)) from None
    if extra:
      raise CompressError(f"unexpected arguments {' '.join(extra)}")
    for name in ("workdir", "method", "out"):
      if not flag_values[name].value:
        raise CompressError(f"missing --{name}; usage: {cli.SUBCOMMAND_HELP['compress'][1]}")
    _, step = _source(flag_values.workdir, flag_values.step)
    out = flag_values.out
    if os.path.exists(out) and os.listdir(out):
      raise CompressError(f"--out={out} is not empty; pick a new directory (nothing there is "
                          "overwritten)")
    cli.check_output(out, "--out")
    from isoflop.train import compile_cache
    compile_cache.enable()
    from isoflop.train.compression import compress_run
    report = compress_run.compress(flag_values.config, flag_values.workdir, step,
                                   flag_values.method, out, flag_values.finetune_steps)
  except cli.UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
  except ValueError as e:  # CompressError and the checks of the config and the blocks
    print(f"{PROG}: error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
  shown = ("loss_before", "loss_after", "loss_after_finetune", "n_params_dense",
           "n_params_nonzero", "weight_bytes")
  print(", ".join(f"{k}={report[k]:.4g}" if isinstance(report[k], float) else f"{k}={report[k]:,}"
                  for k in shown if report.get(k) is not None))
  print(f"wrote {os.path.join(out, 'compress.json')}")
  return 0


