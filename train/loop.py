"""The training loop: validate and build everything, compile once, then run the steps.

Everything that can be wrong with the input is checked before the workdir is touched, so a
bad command leaves nothing behind. Rerunning a command on its workdir resumes from the newest
complete checkpoint. The host waits on the device only at log intervals and checkpoints.
"""

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib
from isoflop.train import checkpointing, metrics_log, optimizers, preemption, resume_policy
from isoflop.train import data as data_lib
from isoflop.train import run_record
from isoflop.train import state as state_lib
from isoflop.train import step as step_lib
from isoflop.train import task as task_lib


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN or infinite; nothing from that state was saved."""


@dataclasses.dataclass
class RunResult:
  state: state_lib.TrainState
  rows: list[dict[str, Any]]  # the metric rows this call logged (after any resume point)
  record: dict[str, Any]  # what config.json holds
  resumed_from: int | None = None


@dataclasses.dataclass
class Prepared:
  """A validated, compiled run that has not yet written anything."""
  config: Any
  task: Any
  source: Any
  mesh: Any
  rules: Any
  compiled_step: Any
  compiled_eval: Any  # (params, batch) -> mean loss, or None when eval_every == 0
  abstract_state: Any  # ShapeDtypeStructs with their shardings
  batch_sharding: Any
  batch_shapes: dict[str, jax.ShapeDtypeStruct]
  tx: Any
  record: dict[str, Any]


def _check_run_config(config) -> None:
  for name in ("steps", "batch_size", "seq_len", "log_every", "microbatches",
               "checkpoint_every", "keep_checkpoints", "eval_batches"):
    if config[name] <= 0:
      raise ValueError(f"{name}={config[name]} must be a positive integer")
  if config.eval_every < 0:
    raise ValueError(f"eval_every={config.eval_every} must be >= 0 (0 turns evaluation off)")


def _data_budget(config, source) -> float | None:
  """Epochs of the unique training examples the run will read; refuses more than allowed."""
  unique = getattr(source, "num_train_examples", None)
  if unique is None:
    return None  # an unlimited stream
  epochs = config.steps * config.batch_size / unique
  if config.data.max_epochs is not None and epochs > config.data.max_epochs:
    raise ValueError(
        f"the run reads {epochs:.2f} epochs of the {unique:,} unique training sequences but "
        f"data.max_epochs={config.data.max_epochs}; lower steps or batch_size, add data, or "
        "raise data.max_epochs")
  return epochs


def process_rows(sharding, batch_size: int, devices=None) -> np.ndarray:
  """Rows of the global batch that ``devices`` (default: this process's) hold, in order."""
  devices = set(sharding.addressable_devices if devices is None else devices)
  rows = set()
  for device, (rows_slice,) in sharding.devices_indices_map((batch_size,)).items():
    if device in devices:
      rows.update(range(*rows_slice.indices(batch_size)))
  return np.array(sorted(rows), dtype=np.int64)


def prepare(config, devices: Sequence[jax.Device] | None = None,
            workdir: str | None = None) -> Prepared:
  """Checks the config, builds data, mesh, task and optimizer, and compiles the step. Writes
  nothing to ``workdir`` (it is read for a tokenizer saved by an earlier run)."""
  _check_run_config(config)
  source = data_lib.make_source(config, workdir=workdir)
  if source.vocab_size is not None and source.vocab_size != config.model.vocab_size:
    config = config.copy_and_resolve_references()
    config.model.vocab_size = source.vocab_size  # the model's vocabulary follows the tokenizer
  epochs = _data_budget(config, source)
  task = task_lib.make_task(config)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.steps)
  mesh = mesh_lib.build_mesh({a: config.mesh[a] for a in mesh_lib.MESH_AXES}, devices)
  rules = rules_lib.get_rules(config.mesh.rules)
  dp = rules_lib.data_parallel_size(mesh, rules)
  if config.batch_size % (dp * config.microbatches):
    raise ValueError(
        f"batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
        f"x microbatches={config.microbatches}; use a multiple of {dp * config.microbatches}")

  example = source.batch(np.arange(config.batch_size))
  missing = set(task.batch_keys) - set(example)
  if missing:
    raise ValueError(f"data.source {config.data.source} gives {sorted(example)}, but the "
                     f"{config.task} task needs {sorted(task.batch_keys)}; pick a matching source")
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
    compiled_eval = None
    if config.eval_every:
      def eval_loss(params, batch):
        return task.loss(params, batch, jax.random.key(0), train=False)[1]["loss"]
      compiled_eval = jax.jit(
          eval_loss, in_shardings=(shardings.params, batch_sharding),
          out_shardings=rules_lib.replicated(mesh)).lower(abstract.params, batch_shapes).compile()
  tokens_per_step = task.tokens(example)
  described = task.describe(example)
  described["flops_per_token"]["measured"] = float(cost["flops"]) / tokens_per_step
  memory = compiled.memory_analysis()
  record = {
      "config": config.to_dict(),
      "versions": run_record.versions(),
      "devices": run_record.devices_summary(mesh),
      **described,
      "flops_per_step": {k: v * tokens_per_step for k, v in described["flops_per_token"].items()},
      "tokens_per_step": tokens_per_step,
      "data": {**source.describe(), "epochs": epochs},
      "compile_time_s": compile_s,
      "memory_per_device_bytes": {
          "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
          "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
          "code": memory.generated_code_size_in_bytes,
          "peak": getattr(memory, "peak_memory_in_bytes", None)},
  }
  return Prepared(config, task, source, mesh, rules, compiled, compiled_eval, abstract,
                  batch_sharding, batch_shapes, tx, record)


def _print_counts(record: dict[str, Any]) -> None:
  counts = record["param_counts"]
  print("parameters: " + ", ".join(f"{k}={counts[k]:,}" for k in
                                   ("embedding", "non_embedding", "head", "total")))
  print("N by convention: " + ", ".join(f"{k}={v:,}" for k, v in record["n_params"].items()))
  print("train FLOPs/token: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                          record["flops_per_token"].items()))
  if record["data"].get("entropy_nats") is not None:
    print(f"loss floor (source entropy): {record['data']['entropy_nats']:.4f} nats/token")


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _truncate_metrics(path: str, last_step: int) -> None:
  """Drops rows logged after ``last_step`` (they are about to be logged again), atomically."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError):
      pass  # a row cut short by a kill
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def run(prepared: Prepared, workdir: str, *, progress: bool = True) -> RunResult:
  """Trains ``prepared`` up to ``config.steps``, resuming from ``workdir`` if it holds a run."""
  config = prepared.config
  is_main = jax.process_index() == 0
  config_path = os.path.join(workdir, "config.json")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  previous = _read_json(config_path)
  has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
  if previous is not None and has_checkpoints:  # refuse before writing anything
    resume_policy.check_resumable(previous["config"], config.to_dict(), checkpoint_step=0)

  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(prepared.abstract_state) if has_checkpoints else None
  record = dict(prepared.record)
  if restored is None:
    start_step = 0
    with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
      state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes,
                                     jax.random.key(config.seed),
                                     jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
  else:
    start_step, state, data_state = restored
    expected = start_step * config.batch_size
    if data_state.get("next_index") != expected:
      raise ValueError(f"checkpoint {start_step} was taken at stream position "
                       f"{data_state.get('next_index')}, not {expected}; batch_size changed?")
    changes = resume_policy.check_resumable(previous["config"], config.to_dict(), start_step)
    record["resumes"] = previous.get("resumes", []) + [{"step": start_step,
                                                         "changed": changes}]
  if is_main:
    data_lib.save_tokenizer(prepared.source, workdir)
    _truncate_metrics(metrics_path, start_step)
    run_record.write_json_atomically(config_path, record)
    if progress:
      _print_counts(record)
      if restored is not None:
        print(f"resuming from the checkpoint at step {start_step}"
              + (" (the run is already complete)" if start_step >= config.steps else ""))

  tokens_per_step = prepared.record["tokens_per_step"]
  rows_of_process = process_rows(prepared.batch_sharding, config.batch_size)
  log = metrics_log.MetricsLog(workdir) if is_main else None
  rows: list[dict[str, Any]] = []
  bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True,
             disable=not (is_main and progress))
  last_time, last_step = time.perf_counter(), start_step
  saved_step = start_step if restored is not None else None

  def global_batch(host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(prepared.batch_sharding, v,
                                                      prepared.batch_shapes[k].shape)
            for k, v in host_batch.items()}

  def evaluate(step_done: int) -> dict[str, Any]:
    losses = [prepared.compiled_eval(state.params, global_batch(prepared.source.eval_batch(
        k * config.batch_size + rows_of_process))) for k in range(config.eval_batches)]
    return {"step": step_done, "eval_loss": float(np.mean(jax.device_get(losses))),
            "eval_tokens": config.eval_batches * tokens_per_step}

  def save(step_done: int) -> None:
    nonlocal saved_step
    bad = int(state.first_nonfinite_step)  # a host sync; checkpoints are sync points anyway
    if bad >= 0:
      last = "no checkpoint yet" if saved_step is None else f"last good checkpoint: step {saved_step}"
      raise NonFiniteError(
          f"non-finite loss or gradient at step {bad}; stopped without saving that state "
          f"({last}); lower optimizer.lr or enable clipping")
    # The data position, as grain's own iterator state names it: the next example's index.
    checkpoints.save(step_done, state, {"next_index": step_done * config.batch_size})
    saved_step = step_done

  try:
    with preemption.StopRequests() as stop:
      for step in range(start_step, config.steps):
        indices = step * config.batch_size + rows_of_process
        state, metrics = prepared.compiled_step(
            state, global_batch(prepared.source.batch(indices)))
        bar.update(1)
        done = step + 1
        at_log = done % config.log_every == 0 or done == config.steps
        if at_log:
          metrics = jax.device_get(metrics)  # the one host sync per log interval
          now = time.perf_counter()
          elapsed, steps_taken = now - last_time, done - last_step
          row = {"step": done, "tokens_seen": done * tokens_per_step,
                 "tokens_per_s": steps_taken * tokens_per_step / elapsed,
                 "step_time_s": elapsed / steps_taken,
                 **{k: float(v) for k, v in metrics.items()}}
          rows.append(row)
          if log:
            log.write(row)
          if not (np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"])):
            save(done)  # raises NonFiniteError naming the first bad step
          bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.3g}")
          last_time, last_step = now, done
        if prepared.compiled_eval and (done % config.eval_every == 0 or done == config.steps):
          row = evaluate(done)
          rows.append(row)
          if log:
            log.write(row)
        if done % config.checkpoint_every == 0 or done == config.steps:
          save(done)
        # Several processes agree at log intervals; a single one stops at the next step.
        if (jax.process_count() == 1 or at_log) and _any_process(stop.received is not None):
          if saved_step != done:
            save(done)
          checkpoints.wait()
          raise preemption.Preempted(done, stop.signal_name or "a signal on another process")
  finally:
    bar.close()
    if log:
      log.close()
    checkpoints.close()
  return RunResult(state=state, rows=rows, record=record,
                   resumed_from=start_step if restored is not None else None)


def train(config, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          progress: bool = True) -> RunResult:
  """Validates, compiles and runs ``config``; the programmatic form of ``isoflop train``."""
  return run(prepare(config, devices, workdir), workdir, progress=progress)
