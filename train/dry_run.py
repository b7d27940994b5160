"""``isoflop train --dry_run``: what a step will cost, from the ahead-of-time compilation,
before any accelerator time is spent on training."""

import os
from typing import Any, Sequence

import jax

from isoflop.train import run_record


def summary(prepared) -> dict[str, Any]:
  record = prepared.record
  unit = record["unit"]
  return {
      "memory_per_device_bytes": record["memory_per_device_bytes"],
      "memory_fit": record["memory_fit"],
      "flops_per_step": record["flops_per_step"],
      f"flops_per_{unit}": record[f"flops_per_{unit}"],
      "param_counts": record["param_counts"],
      "param_counts_padded": record["param_counts_padded"],
      "n_params": record["n_params"],
      f"{unit}s_per_step": record[f"{unit}s_per_step"],
      "model_family": record["model_family"],
      "unit": unit,
      "compile_time_s": record["compile_time_s"],
      "devices": record["devices"],
      "versions": record["versions"],
  }


def _gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.3f} GiB"


def report(prepared, workdir: str, extra: dict[str, Any] | None = None,
           extra_lines: Sequence[str] = ()) -> dict[str, Any]:
  """Prints the summary and writes it to ``<workdir>/dry_run.json``; trains nothing.
  ``extra`` (keys) and ``extra_lines`` (printed) come from a plan (train/tpu_plan.py)."""
  result = {**summary(prepared), **(extra or {})}
  if jax.process_index() == 0:
    memory = result["memory_per_device_bytes"]
    devices = result["devices"]
    print(f"dry run on {devices['count']} x {devices['kind']} ({devices['platform']}), "
          f"mesh {devices['mesh']}")
    print("memory per device: " + ", ".join(
        f"{k}={_gib(memory[k])}" for k in ("arguments", "outputs", "temporaries", "needed")))
    if memory["peak"] is not None and memory["peak"] < memory["temporaries"]:
      print(f"  (XLA's peak figure, {_gib(memory['peak'])}, leaves out the temporaries on this "
            "backend; 'needed' is arguments + outputs - donated + temporaries + code)")
    fit = result["memory_fit"]
    if not fit["fits"]:
      print(f"does not fit: needs {_gib(fit['needed_bytes_per_device'])} per device, a device "
            f"has {_gib(fit['limit_bytes_per_device'])} ({fit['limit']}); training would be "
            "refused")
    elif fit["limit_bytes_per_device"]:
      print(f"fits: {fit['needed_bytes_per_device'] / fit['limit_bytes_per_device']:.1%} of "
            f"{_gib(fit['limit_bytes_per_device'])} per device ({fit['limit']})")
    print("FLOPs per step: " + ", ".join(
        f"{k}={v:.4g}" for k, v in result["flops_per_step"].items()))
    counts = result["param_counts"]
    print("parameters: " + ", ".join(
        f"{k}={counts[k]:,}" for k in ("embedding", "non_embedding", "head", "total", "active")
        if k in counts))
    if result["param_counts_padded"] != counts:
      print(f"allocated with the vocabulary padded: {result['param_counts_padded']['total']:,}")
    for line in extra_lines:
      print(line)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "dry_run.json")
    run_record.write_json_atomically(path, result)
    print(f"wrote {path}")
  return result
