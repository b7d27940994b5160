"""What ``isoflop compress`` does to a trained run: load its parameters, measure the held-out
loss, compress (prune, quantize or factorize), measure again, and write a loadable run.

The output directory is built under a temporary name beside ``out`` and renamed when complete,
so a failed or interrupted compress leaves no half-written run.
"""

import dataclasses
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from isoflop.train import build, checkpointing, init_from, loop, run_record
from isoflop.train import data as data_lib
from isoflop.train import state as state_lib

OFF = {"prune.method": None, "quant.bits": None, "lowrank.rank_fraction": None,
       "lowrank.energy": None, "lowrank.rank": None, "distill.teacher": None, "init_from": None}


def _set(config, dotted: str, value) -> None:
  *parents, last = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[last] = value


def _with(config, **dotted):
  config = config.copy_and_resolve_references()
  for key, value in dotted.items():
    _set(config, key.replace("__", "."), value)
  return config


def _evaluate(prepared, params, model_state, eval_fn=None) -> float:
  """Mean held-out loss over ``eval_batches`` batches (the run's own evaluation)."""
  config = prepared.config
  eval_fn = eval_fn or prepared.compiled_eval
  rows = loop.process_rows(prepared.row_sharding, config.batch_size)
  batches = []
  for k in range(config.eval_batches):
    host = prepared.source.eval_batch(k * config.batch_size + rows)
    batch = {key: jax.make_array_from_process_local_data(
        prepared.batch_shardings[key], value, prepared.batch_shapes[key].shape)
        for key, value in host.items()}
    batches.append(eval_fn(params, model_state, batch))
  return float(loop.eval_means(jax.device_get(batches))["loss"])


def _placed_like(new, like):
  """``new``'s values in ``like``'s dtypes, on ``like``'s shardings (the run's layout)."""
  return jax.tree.map(lambda a, b: jax.device_put(np.asarray(a, b.dtype), b.sharding), new, like)


def _fresh_state(prepared):
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    return state_lib.create_state(
        prepared.task, prepared.tx, prepared.batch_shapes, state_lib.seed_keys(
            prepared.config.seed), jax.tree.map(lambda a: a.sharding, prepared.abstract_state))


def _loaded_state(prepared, source: str, step: int):
  """A fresh state of ``prepared`` with the source's parameters (and model state)."""
  plan = init_from.plan(f"{source}:{step}", prepared.abstract_state)
  return init_from.load(plan, _fresh_state(prepared))


def _recovered(dense, source: str, factored, factored_specs, staging: str, steps: int):
  """Recovery training of the factors themselves (U and V, never a dense W): ``steps`` steps
  from the factorized weights. Returns (trained factors, their metrics.jsonl, held-out loss)."""
  from isoflop.train.compression import lowrank
  scratch = f"{staging}.factored"
  ranks = lowrank.ranks_of(factored)
  tune = _with(dense, init_from=f"{scratch}:0", steps=steps,
               optimizer__warmup_steps=min(dense.optimizer.warmup_steps, steps))
  prepared = build.prepare(tune, workdir=source, wrap_model=lambda model: lowrank.FactoredModel(
      model, factored_specs, ranks))
  state = _fresh_state(prepared)
  state = state.replace(params=_placed_like(factored, state.params))
  _write_run(prepared, state, scratch, {"method": "lowrank", "start_of_recovery": True})
  result = loop.run(prepared, os.path.join(scratch, "tuned"), progress=False)
  loss = _evaluate(prepared, result.state.params, result.state.model_state)
  metrics = f"{staging}.metrics.jsonl"
  shutil.copy(os.path.join(scratch, "tuned", "metrics.jsonl"), metrics)
  shutil.rmtree(scratch, ignore_errors=True)
  return jax.device_get(result.state.params), metrics, loss


def _param_specs(prepared):
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    boxed = state_lib.abstract_variables(prepared.task, prepared.batch_shapes)
  return nn.get_partition_spec(boxed)["params"]


def _float_bytes(params) -> int:
  return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params)))


def _write_run(prepared, state, out: str, compression: dict[str, Any]) -> None:
  """``out`` as a run of ``prepared``'s config holding ``state`` at step 0."""
  checkpoints = checkpointing.Checkpoints(out, keep=None)
  checkpoints.save(0, state, {"next_index": 0, "interval_losses": []})
  checkpoints.close()
  data_lib.save_tokenizer(prepared.source, out)
  run_record.write_json_atomically(os.path.join(out, "config.json"),
                                   {**prepared.record, "compression": compression})


def compress(config, source: str, step: int, method: str, out: str, finetune_steps: int
             ) -> dict[str, Any]:
  source = os.path.abspath(source)
  staging = f"{os.path.abspath(out).rstrip('/')}.tmp-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  try:
    report = _compress(config, source, step, method, staging, finetune_steps)
    run_record.write_json_atomically(os.path.join(staging, "compress.json"), report)
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked before): replaced by the complete run
    os.rename(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(f"{staging}.factored", ignore_errors=True)
    if os.path.exists(f"{staging}.metrics.jsonl"):
      os.remove(f"{staging}.metrics.jsonl")
  return report


def _compress(config, source, step, method, staging, finetune_steps) -> dict[str, Any]:
  dense = _with(config, eval_every=1, **{k.replace(".", "__"): v for k, v in OFF.items()})
  if method == "prune":
    block = config.prune
    if block.method == "gradual":
      raise ValueError("prune.method=gradual prunes during training; after training use "
                       "prune.method=magnitude or nm")
    steps = max(finetune_steps, 1)  # a run needs one step; without fine-tuning none is taken
    dense = _with(dense, prune__method=block.method or "magnitude", prune__start_step=0,
                  init_from=f"{source}:{step}", steps=steps,
                  optimizer__warmup_steps=min(config.optimizer.warmup_steps, steps))
  elif finetune_steps and method != "lowrank":
    raise ValueError(f"--finetune_steps works with --method=prune and lowrank; to recover "
                     f"after {method}, train from the compressed run with init_from")
  prepared = build.prepare(dense, workdir=source)
  record = prepared.record
  unit = record["unit"]
  state = _loaded_state(prepared, source, step)
  loss_before = _evaluate(prepared, state.params, state.model_state)
  n_dense = int(record["param_counts"]["total"])
  report = {"method": method, "source": {"workdir": source, "step": step},
            "loss_before": loss_before, "n_params_dense": n_dense,
            "weight_bytes_dense": _float_bytes(state.params),
            "flops_per_token_before": record[f"flops_per_{unit}"]}
  if method == "prune":
    state = loop._repruned(prepared, state)
    pruner = prepared.task.pruner
    pruned = pruner.planned_pruned()
    report.update(_pruned_report(pruner, state, n_dense, pruned))
    report["loss_after"] = _evaluate(prepared, state.params, state.model_state)
    # The step still multiplies the zeros: sparse FLOPs are not realized here.
    report["flops_per_token_after"] = report["flops_per_token_before"]
    if finetune_steps:
      prepared.record["compression"] = report
      result = loop.run(prepared, staging, progress=False)
      report["loss_after_finetune"] = _evaluate(prepared, result.state.params,
                                                result.state.model_state)
      report["finetune_steps"] = finetune_steps
    else:
      _write_run(prepared, state, staging, report)
  elif method == "lowrank":
    from isoflop.train.compression import lowrank
    settings = lowrank.settings_from_config(config.lowrank)
    if settings is None:
      raise ValueError("--method=lowrank needs lowrank.rank_fraction, lowrank.energy or "
                       "lowrank.rank, e.g. --config.lowrank.rank_fraction=0.5")
    factored, factored_specs, factor_report = lowrank.factorize(
        jax.device_get(state.params), _param_specs(prepared), settings)
    # The output run holds the dense U V (it loads as any run of this config); the report
    # counts the factored form.
    params = _placed_like(lowrank.materialize(factored, factored_specs), state.params)
    removed = factor_report["n_params_before"] - factor_report["n_params_after"]
    report.update(lowrank=factor_report, n_params_nonzero=n_dense - removed,
                  weight_bytes=_float_bytes(factored),
                  loss_after=_evaluate(prepared, params, state.model_state))
    report["flops_per_token_after"] = _lowrank_flops(report["flops_per_token_before"],
                                                      factor_report)
    if finetune_steps:
      tuned, metrics, report["loss_after_finetune"] = _recovered(
          dense, source, factored, factored_specs, staging, finetune_steps)
      params = _placed_like(lowrank.materialize(tuned, factored_specs), state.params)
      report["finetune_steps"] = finetune_steps
    _write_run(prepared, state.replace(params=params), staging, report)
    if finetune_steps:
      shutil.copy(metrics, os.path.join(staging, "metrics.jsonl"))
  else:
    from isoflop.train.compression import quantization
    settings = quantization.settings_from_config(config.quant)
    if settings is None or settings.mode == "qat":
      raise ValueError("--method=quantize needs quant.bits (8 or 4) and quant.mode "
                       "weight_only or w8a8, e.g. --config.quant.bits=8")
    model = prepared.task.model
    quantized_model, quantized_params = quantization.ptq(
        model, state.params, settings, param_specs=_param_specs(prepared))
    task = dataclasses.replace(prepared.task, wrap_model=lambda _: quantized_model)
    eval_fn = jax.jit(task.eval_metrics)
    report.update(quant=dataclasses.asdict(settings), n_params_nonzero=n_dense,
                  weight_bytes=int(quantization.weight_bytes(quantized_params)),
                  loss_after=_evaluate(prepared, quantized_params, state.model_state, eval_fn))
    report["flops_per_token_after"] = report["flops_per_token_before"]
    # The run holds the dequantized weights: loadable by any float run, computing what the
    # weight-only quantized model computes (w8a8's activation rounding is not stored).
    params = _placed_like(quantization.dequantized(quantized_params), state.params)
    _write_run(prepared, state.replace(params=params), staging, report)
  return report


def _pruned_report(pruner, state, n_dense: int, pruned: int) -> dict[str, Any]:
  """Non-zero counts (planned and counted in the weights) and the bytes of a sparse store:
  the kept values at their dtype plus one bit per prunable weight for the mask."""
  zeros = sum(int(np.sum(np.asarray(m) == 0)) for m in jax.tree.leaves(state.masks))
  dense_bytes = _float_bytes(state.params)
  itemsize = jax.tree.leaves(state.params)[0].dtype.itemsize
  return {"prune": dataclasses.asdict(pruner.settings), "pruned_params": zeros,
          "n_params_nonzero": n_dense - zeros,
          "weight_bytes": dense_bytes - zeros * itemsize + pruner.selected_size // 8,
          "planned_pruned_params": pruned}


def _lowrank_flops(before: dict[str, float], factor_report: dict[str, Any]) -> dict[str, float]:
  """Analytic FLOPs per token with the factored matmuls: training counts 3 x the forward's
  2 x multiply-adds, so each convention drops by 3 x the forward saving."""
  saving = 3.0 * (factor_report["matmul_flops_per_token_before"]
                  - factor_report["matmul_flops_per_token_after"])
  return {k: v - saving for k, v in before.items()
          if not k.startswith("measured")}


