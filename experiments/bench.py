"""``isoflop bench``: the training step's speed, MFU, memory and energy on this machine.

Compiles once, warms up, then times ``--steps`` steps with the device synchronized, and
writes a JSON file. MFU divides the step's FLOPs (under ``--flop_convention``, PaLM's by
default, the usual MFU definition; all ``ensemble`` models' FLOPs for a seed ensemble) by the
devices' peak bf16 FLOP/s from ``train/hardware.py``; an unknown device gives ``mfu: null``.
``hfu`` does the same with the ``measured`` FLOPs (what the compiled step executes,
rematerialization included).
"""

import os
import platform
import sys
import time

import numpy as np


def utilization(flops_per_step: float, step_time_s: float, peak_per_device: float | None,
                n_devices: int) -> float | None:
  """FLOPs per second achieved over the devices' peak; None without a known peak."""
  if peak_per_device is None:
    return None
  return flops_per_step / step_time_s / (peak_per_device * n_devices)


def run(config, out_path: str, steps: int, warmup: int, flop_convention: str,
        peak_flops: float | None = None) -> dict:
  import flax.linen as nn
  import jax

  from isoflop.models import conventions
  from isoflop.train import build, hardware, run_record
  from isoflop.train import state as state_lib

  prepared = build.prepare(config)
  record = prepared.record
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes,
                                   state_lib.seed_keys(config.seed, config.ensemble),
                                   jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
  batches = [{k: jax.device_put(v, prepared.batch_shardings[k]) for k, v in
              prepared.source.batch(np.arange(config.batch_size) + i * config.batch_size).items()}
             for i in range(2)]  # data prepared up front: bench times the step alone
  for i in range(warmup):
    state, metrics = prepared.compiled_step(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  devices = prepared.mesh.devices.flat
  meter = hardware.EnergyMeter()
  energy_start = meter.joules()
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = prepared.compiled_step(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  energy_end = meter.joules()
  step_time = elapsed / steps
  tokens_per_step = record["tokens_per_step"]
  device = next(iter(devices))
  n_devices = prepared.mesh.devices.size
  if peak_flops:  # the user's figure for a device the table does not know
    peak, peak_source = peak_flops, "--peak_flops (command line)"
  else:
    peak, peak_source = hardware.peak_bf16_flops(device.device_kind)
  # An ensemble step trains ``ensemble`` models; the record's FLOPs are per model.
  flops_per_step = record["flops_per_step"][flop_convention] * config.ensemble
  hardware_flops_per_step = record["flops_per_step"][conventions.MEASURED] * config.ensemble
  memory = [d.memory_stats() or {} for d in devices]
  peak_memory = max((m.get("peak_bytes_in_use") for m in memory if m.get("peak_bytes_in_use")),
                    default=None)
  joules = None if energy_start is None else energy_end - energy_start
  result = {
      "step_time_s": step_time,
      "tokens_per_s": tokens_per_step / step_time,
      "mfu": utilization(flops_per_step, step_time, peak, n_devices),
      "flop_convention": flop_convention,
      "flops_per_step": flops_per_step,
      # Hardware FLOPs utilization: what the compiled step executes, remat included.
      "hfu": utilization(hardware_flops_per_step, step_time, peak, n_devices),
      "hfu_flop_convention": conventions.MEASURED,
      "ensemble": config.ensemble,
      "flops_per_token": record["flops_per_token"],
      "peak_flops_per_device": peak,
      "peak_flops_source": peak_source,
      "peak_memory_bytes": peak_memory,
      "compiled_memory_per_device_bytes": record["memory_per_device_bytes"],
      "compile_time_s": record["compile_time_s"],
      "joules_per_token": None if joules is None else joules / (steps * tokens_per_step),
      "average_watts": None if joules is None else joules / elapsed,
      "energy_note": meter.reason,
      "device": {"kind": device.device_kind, "platform": device.platform, "count": n_devices,
                 "mesh": dict(prepared.mesh.shape)},
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "tokens_per_step": tokens_per_step, "steps_timed": steps, "warmup_steps": warmup,
      "param_counts": record["param_counts"], "n_params": record["n_params"],
      "model": config.model.to_dict(),
      "versions": {**run_record.versions(), "platform": platform.platform()},
      "command": " ".join(sys.argv),
      "date": time.strftime("%Y-%m-%d"),
  }
  if os.path.dirname(out_path):
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
  run_record.write_json_atomically(out_path, result)
  mfu = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
  print(f"{device.device_kind} x {n_devices}: {result['step_time_s'] * 1e3:.2f} ms/step, "
        f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu} ({flop_convention}); "
        f"wrote {out_path}")
  return result


def main(argv) -> int:
  from absl import flags

  from isoflop.experiments import cli
  from isoflop.models import conventions

  def define(flag_values):
    flags.DEFINE_string("out", "bench.json", "JSON file to write", flag_values=flag_values)
    flags.DEFINE_integer("steps", 20, "timed steps", flag_values=flag_values)
    flags.DEFINE_integer("warmup", 3, "untimed steps after compiling", flag_values=flag_values)
    flags.DEFINE_enum("flop_convention", "palm", list(conventions.FLOP_CONVENTIONS),
                      "FLOPs per step used for MFU", flag_values=flag_values)
    flags.DEFINE_float("peak_flops", None, "peak FLOP/s of one device, for MFU on a device "
                       "the built-in table does not know (e.g. 1.979e15 for dense FP8 on "
                       "an H100); overrides the table", flag_values=flag_values)

  flag_values = cli.parse_config(argv, define)
  if flag_values.steps <= 0 or flag_values.warmup < 0:
    raise cli.UsageError("--steps must be positive and --warmup non-negative")
  if flag_values.peak_flops is not None and flag_values.peak_flops <= 0:
    raise cli.UsageError(f"--peak_flops={flag_values.peak_flops} must be a positive FLOP/s "
                         "figure per device, e.g. --peak_flops=9.89e14")
  cli.check_output(flag_values.out, "--out", is_file=True)
  from isoflop.train import compile_cache
  compile_cache.enable()
  try:
    run(flag_values.config, flag_values.out, flag_values.steps, flag_values.warmup,
        flag_values.flop_convention, flag_values.peak_flops)
  except ValueError as e:
    raise cli.UsageError(cli.one_line(e)) from None
  return 0


