"""What a compiled step costs, by XLA's analyses: FLOPs under the measured conventions, the
FLOPs and HBM bytes one device moves, and the memory of a step XLA refused to compile."""

import re
from typing import Any

import jax
import numpy as np

from isoflop.models import conventions


def lowered_cost(lowered) -> dict[str, float]:
  """XLA's cost analysis (``flops``, ``bytes accessed``) of a lowered, not yet partitioned or
  optimized step, for all devices together. Backends behind the PJRT C API (TPUs, and libtpu's
  compile-only devices) do not analyse a lowering: there the same HLO is analysed by the CPU
  backend's cost model, as on a CPU run."""
  cost = lowered.cost_analysis()
  if cost is None:
    from jax._src.lib import _jax  # the analysis jax's own Lowered.cost_analysis calls
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client,
                                         lowered.compiler_ir("hlo").as_hlo_module())
  return {"flops": float(cost["flops"]), "bytes accessed": float(cost["bytes accessed"])}


def measured_flops(jit_step, task, step_args, lowered_step,
                    microbatches: int) -> tuple[dict[str, float], dict[str, float]]:
  """FLOPs of one step by XLA's cost analysis, which counts a loop body once: so on the step
  with every loop unrolled (layers and microbatches). ``measured`` is what the step executes,
  rematerialized recomputation included (hardware FLOPs); ``measured_model`` is the same step
  without rematerialization (model FLOPs). Also the whole cost of the unrolled hardware step."""
  def cost(for_task):
    if for_task == task and microbatches == 1:  # nothing to unroll: the run's own lowering
      return lowered_cost(lowered_step)
    return lowered_cost(jit_step(for_task, unroll_microbatches=True).lower(*step_args))

  hardware = task.for_cost_analysis(remat=True)
  model = task.for_cost_analysis(remat=False)
  unrolled = cost(hardware)
  measured = unrolled["flops"]
  # Tasks are frozen dataclasses: equal means the run does not rematerialize.
  return {conventions.MEASURED: measured,
          conventions.MEASURED_MODEL: measured if model == hardware
          else cost(model)["flops"]}, unrolled


def per_device(compiled, lowered_step, unrolled: dict[str, float]) -> dict[str, Any]:
  """FLOPs and HBM bytes one device moves in a step, from the compiled step's cost analysis.
  It counts each loop body (the layer scan, microbatches) once, so each figure is scaled by
  the loop scale: the unrolled step's figure over the step's own, both of the lowered
  (unoptimized) program, all devices. An estimate: the bytes came within 3% of the unrolled
  program's compiled bytes for a 4-layer 1B-wide decoder on v5p:2x2x2; the scaled FLOPs read
  25% high for the 1B model at one sequence per chip (the measured FLOPs shared by the
  devices are the better figure). Compiling the unrolled step would count loops exactly, for
  a different program, in minutes rather than seconds for a 1B model."""
  compiled_cost = compiled.cost_analysis()
  scanned = lowered_cost(lowered_step)
  result = {"xla_optimal_seconds": compiled_cost.get("optimal_seconds")}
  for key, name in (("flops", "flops"), ("bytes accessed", "bytes_accessed")):
    scale = unrolled[key] / scanned[key] if scanned[key] else 1.0
    result.update({f"compiled_{name}": float(compiled_cost[key]), f"loop_scale_{name}": scale,
                   name: float(compiled_cost[key]) * scale})
  return result


def out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error)


def per_device_arrays(tree) -> list[tuple[str, int]]:
  """(path, bytes on one device) of each array in a tree of ``ShapeDtypeStruct`` s with
  shardings: what each device holds of it."""
  def name(key):
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  arrays = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    arrays.append(("/".join(name(k) for k in path), int(np.prod(shape)) * leaf.dtype.itemsize))
  return arrays


def memory_without_compiling(reason: str, step_args) -> dict[str, int | None]:
  """Memory per device of a step XLA refused: its arguments (the state and batch at their
  sharded sizes) and the temporaries XLA's message names, when it names them (TPU: "the total
  memory required for HLO temporaries (222.83G)", G meaning GiB)."""
  arguments = sum(size for _, size in per_device_arrays(step_args))
  match = re.search(r"HLO temporaries \(([\d.]+)G\)", reason)
  temporaries = None if match is None else int(float(match[1]) * 2**30)
  return {"arguments": arguments, "outputs": None, "temporaries": temporaries, "aliased": None,
          "code": None, "peak": None, "needed": arguments + (temporaries or 0),
          "compile_error": reason}
