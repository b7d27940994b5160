"""``isoflop train --dry_run --topology=v5p:4x4x4``: the run's real step compiled ahead of time
for a TPU slice that is not attached (libtpu's compile-only devices, on any machine), and what
the run would cost there.

Per chip: the compiled step's memory against the chip's HBM (``hardware.TPU_HBM``), its
FLOPs (the measured FLOPs shared by the chips) and HBM bytes accessed (the compiled step's,
its loops counted in full: ``step_cost.per_device``). The roofline step time is
``max(FLOPs per chip / peak bf16 FLOP/s, bytes accessed per chip / HBM bandwidth)``: a lower
bound that leaves out inter-chip communication and the input pipeline. Compiled figures hold
for the jax and libtpu versions recorded with them.
"""

import importlib.metadata
import importlib.util
import math
import os
import re
import sys
from typing import Any

import jax

from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib
from isoflop.train import hardware, run_record

EXIT_DOES_NOT_FIT = 4  # the plan was written (fits: false); the run would not fit the chips

# name -> (libtpu topology options, the Cloud TPU accelerator type of n chips)
GENERATIONS: dict[str, tuple[dict[str, str], Any]] = {
    # one JAX device per v4 chip (its two TensorCores as one), as on a v4 TPU VM
    "v4": ({"chip_config_name": "megacore"}, lambda chips: f"v4-{2 * chips}"),
    "v5e": ({}, lambda chips: f"v5litepod-{chips}"),
    "v5p": ({}, lambda chips: f"v5p-{2 * chips}"),
    "v6e": ({}, lambda chips: f"v6e-{chips}"),
}
EXAMPLES = "v5e:2x2, v5e:16x16, v5p:2x2x2, v5p:4x4x4, v6e:4x4, v4:2x2x2"
_NAME = re.compile(r"^(?P<generation>[a-z0-9]+):(?P<shape>\d+(x\d+){1,2})$")


class PlanError(ValueError):
  """Bad input for a plan (topology name, libtpu, mesh); its message is one line."""


def libtpu_version() -> str | None:
  if importlib.util.find_spec("libtpu") is None:
    return None
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def check_topology_name(name: str) -> tuple[str, tuple[int, ...]]:
  """(generation, chip grid) of a name such as ``v5p:4x4x4``; raises ``PlanError``."""
  match = _NAME.match(name or "")
  if not match or match["generation"] not in GENERATIONS:
    raise PlanError(f"unknown TPU topology {name!r}; pass <generation>:<chip grid> with a "
                    f"generation of {', '.join(GENERATIONS)}, e.g. {EXAMPLES}")
  if libtpu_version() is None:
    raise PlanError("--topology compiles for TPUs through libtpu, which is not installed; "
                    "pip install isoflop[tpu]")
  return match["generation"], tuple(int(n) for n in match["shape"].split("x"))


def topology_devices(name: str) -> list:
  """libtpu's compile-only devices of the slice ``name``, one per chip."""
  generation, grid = check_topology_name(name)
  options, accelerator_type = GENERATIONS[generation]
  if not hardware.tpu_attached():
    # Without a TPU VM's metadata libtpu prints warnings for these; they do not change what
    # is compiled for the topology asked for.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(math.prod(grid)))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compile-only, no chip to guard: several planning processes (a sweep's, the tests')
    # may hold libtpu at once instead of failing on its single-process lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name,
                                             **options).devices)
  except Exception as e:  # libtpu's own refusal, e.g. a grid its hosts cannot tile
    message = " ".join(str(e).split())
    raise PlanError(f"libtpu refused --topology={name}: {message}; e.g. {EXAMPLES}") from None


def check_mesh(config, name: str, chips: int) -> None:
  """Refuses a config whose mesh sizes do not resolve against the slice's chip count."""
  rules = rules_lib.get_rules(config.mesh.rules)
  sizes = {axis: size for axis, size in config.mesh.items() if axis != "rules"}
  try:
    mesh_lib.resolve_mesh_shape(sizes, chips, rules_lib.mesh_axes(rules), config.mesh.rules)
  except ValueError as e:
    raise PlanError(f"--topology={name} has {chips} chips: {e}") from None


def check_config(config) -> None:
  if config.get("distill") and config.distill.teacher:
    raise PlanError("distill.teacher: a plan cannot load the teacher's weights onto chips "
                    "that are not attached; plan the student without it (distill.teacher=None)")


def prepare(config, name: str, workdir: str | None = None):
  """``build.prepare`` of ``config`` over the slice ``name``, with per-chip costs. A step XLA
  refuses for the chips' memory gives the preparation without a compiled step
  (``compiled_step`` None; ``record["memory_fit"]["fits"]`` False) instead of an error."""
  from isoflop.train import build
  check_config(config)
  devices = topology_devices(name)
  check_mesh(config, name, len(devices))
  # libtpu's compile-only executables cannot be read back from JAX's persistent cache
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return build.prepare(config, devices=devices, workdir=workdir, device_costs=True)
  except build.StepDoesNotFit as e:
    return e.prepared
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)


def largest_buffers(prepared, count: int = 3) -> list[tuple[str, int]]:
  """The ``count`` largest buffers of a chip: the step's temporaries (activations, gradients,
  XLA's workspace, from the compiled memory analysis or XLA's refusal) and the train state's
  arrays at their per-chip (sharded) sizes. (Asking XLA for its largest temporary would take
  a second, full compilation: about a minute for a 1B model on two CPU cores.)"""
  from isoflop.train import step_cost
  memory = prepared.record["memory_per_device_bytes"]
  sizes = step_cost.per_device_arrays(prepared.abstract_state)
  if memory["temporaries"] is not None:
    sizes.append(("temporaries", memory["temporaries"]))
  return sorted(sizes, key=lambda item: -item[1])[:count]


def per_chip_costs(record: dict[str, Any], chips: int) -> tuple[float, float | None]:
  """(FLOPs, HBM bytes accessed) of one chip's step. FLOPs: the step's measured (hardware)
  FLOPs, every loop unrolled, shared evenly by the chips (work every chip repeats, such as
  the optimizer's update of replicated parameters, is counted once). Bytes: the compiled
  step's, its loops counted in full (``step_cost.per_device``); None where XLA refused the
  step for memory."""
  flops = record["flops_per_step"]["measured"] / chips
  compiled = record.get("cost_per_device")
  return flops, None if not compiled else compiled["bytes_accessed"]


def plan(prepared, name: str) -> dict[str, Any]:
  """What ``dry_run.json`` gains for a topology: the chip, whether the step fits its HBM, and
  the roofline step time, throughput and chip-hours to ``config.steps``."""
  record = prepared.record
  device = prepared.mesh.devices.flat[0]
  chips = int(prepared.mesh.devices.size)
  generation, _ = check_topology_name(name)
  capacity, bandwidth, hbm_source = hardware.tpu_hbm(device.device_kind)
  peak, peak_source = hardware.peak_bf16_flops(device.device_kind)
  needed = record["memory_per_device_bytes"]["needed"]
  unit = record["unit"]
  steps = int(prepared.config.steps)
  flops, accessed = per_chip_costs(record, chips)
  compute_s = flops / peak
  memory_s = None if accessed is None else accessed / bandwidth
  step_s = max(compute_s, memory_s or 0.0)
  return {
      "topology": name,
      "accelerator_type": GENERATIONS[generation][1](chips),
      "chips": chips,
      "chip": device.device_kind,
      "hbm_per_chip_bytes": capacity,
      "hbm_bandwidth_bytes_per_s": bandwidth,
      "peak_bf16_flops_per_chip": peak,
      "memory_needed_per_chip_bytes": needed,
      "hbm_fraction": needed / capacity,
      "fits": record["memory_fit"]["fits"] and needed <= capacity,
      "largest_buffers_per_chip_bytes": dict(largest_buffers(prepared)),
      "flops_per_chip": flops,
      "bytes_accessed_per_chip": accessed,
      "cost_per_chip": record.get("cost_per_device"),  # compiled, and its loop scales
      "roofline": {"compute_s": compute_s, "memory_s": memory_s,
                   "bound": "compute" if compute_s >= (memory_s or 0.0) else "memory"},
      "estimated_step_time_s": step_s,
      f"{unit}s_per_s": record[f"{unit}s_per_step"] / step_s,
      "steps": steps,
      "estimated_hours": steps * step_s / 3600,
      "estimated_chip_hours": steps * step_s * chips / 3600,
      "sources": {"peak_bf16_flops": peak_source, "hbm": hbm_source},
      # compiled memory and costs hold for these versions only
      "versions": {**record["versions"], "libtpu": libtpu_version()},
  }


def _gib(n: float) -> str:
  return f"{n / 2**30:.3g} GiB"


def refusal(result: dict[str, Any]) -> str:
  """The one line that says a step does not fit the slice's chips, and why."""
  largest = ", ".join(f"{k} {_gib(v)}" for k, v in result["largest_buffers_per_chip_bytes"]
                      .items())
  return (f"does not fit {result['topology']}: the step needs "
          f"{_gib(result['memory_needed_per_chip_bytes'])} per chip but a {result['chip']} "
          f"chip has {_gib(result['hbm_per_chip_bytes'])} of HBM; largest per chip: {largest}; "
          "lower batch_size or seq_len, add microbatches, raise mesh.fsdp or set "
          "model.remat=full")


def lines(result: dict[str, Any]) -> list[str]:
  """The plan's part of the printed report."""
  unit = result["unit"]
  roofline = result["roofline"]
  accessed = result["bytes_accessed_per_chip"]
  if accessed is None:
    costs = f"{result['flops_per_chip']:.4g} FLOPs per step (the measured FLOPs / chips)"
    memory_term = "HBM term unknown"
  else:
    costs = (f"{result['flops_per_chip']:.4g} FLOPs (measured / chips) and {accessed:.4g} "
             "bytes accessed (compiled, loops counted in full) per step")
    memory_term = (f"HBM {roofline['memory_s']:.4g} s at "
                   f"{result['hbm_bandwidth_bytes_per_s'] / 1e9:g} GB/s")
  return [
      f"TPU plan for {result['topology']} ({result['accelerator_type']}: {result['chips']} x "
      f"{result['chip']}, compile-only, jax {result['versions']['jax']}, libtpu "
      f"{result['versions']['libtpu']})",
      f"per chip: needs {_gib(result['memory_needed_per_chip_bytes'])} of "
      f"{_gib(result['hbm_per_chip_bytes'])} HBM ({result['hbm_fraction']:.1%}); {costs}",
      f"roofline step time {result['estimated_step_time_s']:.4g} s, {roofline['bound']}-bound "
      f"(compute {roofline['compute_s']:.4g} s at {result['peak_bf16_flops_per_chip'] / 1e12:g}"
      f" TFLOP/s, {memory_term}; inter-chip communication not counted)",
      f"{result[f'{unit}s_per_s']:,.0f} {unit}s/s; {result['steps']:,} steps: "
      f"{result['estimated_hours']:.3g} h on {result['chips']} chips = "
      f"{result['estimated_chip_hours']:.3g} chip-hours",
  ]


def report(prepared, name: str, workdir: str) -> int:
  """Writes ``<workdir>/dry_run.json`` (the dry run's keys and the plan's) and prints the
  report, or one line if the step does not fit; returns 0, or ``EXIT_DOES_NOT_FIT``."""
  from isoflop.train import dry_run
  extra = plan(prepared, name)
  result = {**dry_run.summary(prepared), **extra}
  if extra["fits"]:
    dry_run.report(prepared, workdir, extra=extra, extra_lines=lines(result))
    return 0
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "dry_run.json")
  run_record.write_json_atomically(path, result)
  print(f"isoflop train: {refusal(result)}; wrote {path}", file=sys.stderr)
  return EXIT_DOES_NOT_FIT
