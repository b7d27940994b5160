"""The training loop: validate and build everything, compile once, then run the steps.

Everything that can be wrong with the input is checked before the workdir is touched, so a
bad command leaves nothing behind. The only host syncs are at log intervals.
"""

import dataclasses
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib
from isoflop.train import data as data_lib
from isoflop.train import metrics_log, optimizers, run_record
from isoflop.train import state as state_lib
from isoflop.train import step as step_lib
from isoflop.train import task as task_lib


@dataclasses.dataclass
class RunResult:
  state: state_lib.TrainState
  rows: list[dict[str, Any]]  # the logged metric rows, as written to metrics.jsonl
  record: dict[str, Any]  # what config.json holds


@dataclasses.dataclass
class Prepared:
  """A validated, compiled run that has not yet written anything."""
  config: Any
  task: Any
  source: Any
  mesh: Any
  rules: Any
  compiled_step: Any
  state_shardings: Any
  batch_sharding: Any
  batch_shapes: dict[str, jax.ShapeDtypeStruct]
  tx: Any
  record: dict[str, Any]


def _check_run_config(config) -> None:
  for name in ("steps", "batch_size", "seq_len", "log_every", "microbatches"):
    if config[name] <= 0:
      raise ValueError(f"{name}={config[name]} must be a positive integer")


def _host_to_global(host_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def prepare(config, devices: Sequence[jax.Device] | None = None) -> Prepared:
  """Checks the config, builds mesh, task, data and optimizer, and compiles the step."""
  _check_run_config(config)
  task = task_lib.make_task(config)
  source = data_lib.make_source(config.data, config.model.vocab_size, config.seq_len,
                                config.seed)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.steps)
  mesh = mesh_lib.build_mesh({a: config.mesh[a] for a in mesh_lib.MESH_AXES}, devices)
  rules = rules_lib.get_rules(config.mesh.rules)
  dp = rules_lib.data_parallel_size(mesh, rules)
  if config.batch_size % (dp * config.microbatches):
    raise ValueError(
        f"batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
        f"x microbatches={config.microbatches}; use a multiple of {dp * config.microbatches}")

  example = source.batch(0, config.batch_size)
  batch_sharding = rules_lib.batch_sharding(mesh, rules, ndim=2)
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                  for k, v in example.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shapes, logical_specs, shardings = state_lib.abstract_state(task, tx, batch_shapes, mesh,
                                                                rules)
    rules_lib.check_divisible(shapes, shardings)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    stacked = None
    if config.log_layer_norms:
      stacked = jax.tree.map(lambda spec: len(spec) > 0 and spec[0] == "layers",
                             logical_specs.params,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

    def jit_step(for_task):
      step = step_lib.make_train_step(
          for_task, tx, schedule, microbatches=config.microbatches, l1=config.loss.l1,
          l2=config.loss.l2, layer_norms_stacked=stacked)
      return jax.jit(step, in_shardings=(shardings, batch_sharding),
                     out_shardings=(shardings, rules_lib.replicated(mesh)), donate_argnums=0)

    start = time.perf_counter()
    compiled = jit_step(task).lower(abstract, batch_shapes).compile()
    compile_s = time.perf_counter() - start
    # XLA counts a while-loop body once, so measure FLOPs on the step with layers unrolled.
    cost = jit_step(task.for_cost_analysis()).lower(abstract, batch_shapes).cost_analysis()
  tokens_per_step = task.tokens(example)
  described = task.describe(example)
  described["flops_per_token"]["measured"] = float(cost["flops"]) / tokens_per_step
  record = {
      "config": config.to_dict(),
      "versions": run_record.versions(),
      "devices": run_record.devices_summary(mesh),
      **described,
      "flops_per_step": {k: v * tokens_per_step for k, v in described["flops_per_token"].items()},
      "tokens_per_step": tokens_per_step,
      "data": {"source": config.data.source, "entropy_nats": source.entropy_nats},
      "compile_time_s": compile_s,
  }
  return Prepared(config, task, source, mesh, rules, compiled, shardings, batch_sharding,
                  batch_shapes, tx, record)


def _claim_workdir(workdir: str) -> None:
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    raise ValueError(f"workdir {workdir} already holds a run (metrics.jsonl); choose a new "
                     "--workdir or delete the old one")
  os.makedirs(workdir, exist_ok=True)


def _print_counts(record: dict[str, Any]) -> None:
  counts = record["param_counts"]
  print("parameters: " + ", ".join(f"{k}={counts[k]:,}" for k in
                                   ("embedding", "non_embedding", "head", "total")))
  print("N by convention: " + ", ".join(f"{k}={v:,}" for k, v in record["n_params"].items()))
  print("train FLOPs/token: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                          record["flops_per_token"].items()))
  if record["data"]["entropy_nats"] is not None:
    print(f"loss floor (source entropy): {record['data']['entropy_nats']:.4f} nats/token")


def run(prepared: Prepared, workdir: str, *, progress: bool = True) -> RunResult:
  """Trains ``prepared`` for ``config.steps`` steps, logging into ``workdir``."""
  config = prepared.config
  _claim_workdir(workdir)
  run_record.write_json_atomically(os.path.join(workdir, "config.json"), prepared.record)
  is_main = jax.process_index() == 0
  if is_main and progress:
    _print_counts(prepared.record)
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes,
                                   jax.random.key(config.seed), prepared.state_shardings)
  tokens_per_step = prepared.record["tokens_per_step"]
  log = metrics_log.MetricsLog(workdir) if is_main else None
  rows: list[dict[str, Any]] = []
  bar = tqdm(total=config.steps, unit="step", disable=not (is_main and progress),
             dynamic_ncols=True)
  last_time, last_step = time.perf_counter(), 0
  try:
    for step in range(config.steps):
      batch = _host_to_global(prepared.source.batch(step, config.batch_size),
                              prepared.batch_sharding)
      state, metrics = prepared.compiled_step(state, batch)
      bar.update(1)
      done = step + 1
      if done % config.log_every and done != config.steps:
        continue
      metrics = jax.device_get(metrics)  # the one host sync, at log intervals only
      now = time.perf_counter()
      elapsed, steps_taken = now - last_time, done - last_step
      row = {"step": done, "tokens_seen": done * tokens_per_step,
             "tokens_per_s": steps_taken * tokens_per_step / elapsed,
             "step_time_s": elapsed / steps_taken,
             **{k: float(v) for k, v in metrics.items()}}
      rows.append(row)
      if log:
        log.write(row)
      bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.3g}")
      last_time, last_step = now, done
  finally:
    bar.close()
    if log:
      log.close()
  return RunResult(state=state, rows=rows, record=prepared.record)


def train(config, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          progress: bool = True) -> RunResult:
  """Validates, compiles and runs ``config``; the programmatic form of ``isoflop train``."""
  return run(prepare(config, devices), workdir, progress=progress)
