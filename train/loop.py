"""The training loop: run a prepared (validated, compiled) run, resuming where it stopped.

Rerunning a command on its workdir resumes from the newest complete checkpoint. The host
waits on the device only at log intervals, evaluations and checkpoints.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from isoflop.train import build, checkpointing, diloco, hardware, init_from, metrics_log
from isoflop.train import preemption
from isoflop.train import privacy, resume_policy, spikes
from isoflop.train import data as data_lib
from isoflop.train import run_record
from isoflop.train import state as state_lib


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN or infinite; nothing from that state was saved."""


@dataclasses.dataclass
class RunResult:
  state: state_lib.TrainState
  rows: list[dict[str, Any]]  # the metric rows this call logged (after any resume point)
  record: dict[str, Any]  # what config.json holds
  resumed_from: int | None = None


def process_rows(sharding, batch_size: int, devices=None) -> np.ndarray:
  """Rows of the global batch that ``devices`` (default: this process's) hold, in order."""
  devices = set(sharding.addressable_devices if devices is None else devices)
  rows = set()
  for device, (rows_slice,) in sharding.devices_indices_map((batch_size,)).items():
    if device in devices:
      rows.update(range(*rows_slice.indices(batch_size)))
  return np.array(sorted(rows), dtype=np.int64)


def _print_counts(record: dict[str, Any]) -> None:
  counts = record["param_counts"]
  shown = ["embedding", "non_embedding", "head", "total"]
  if counts.get("active", counts["total"]) != counts["total"]:
    shown.append("active")  # routed experts: the parameters one token passes through
  trainable = ""
  if "n_params_trainable" in record:  # the frozen ones get no update (finetune.*)
    trainable = (f"; trainable={record['n_params_trainable']:,}, "
                 f"frozen={record['n_params_frozen']:,}")
  print("parameters: " + ", ".join(f"{k}={counts[k]:,}" for k in shown) + trainable)
  if record["param_counts_padded"] != counts:
    print(f"allocated with the vocabulary padded: {record['param_counts_padded']['total']:,}")
  print("N by convention: " + ", ".join(f"{k}={v:,}" for k, v in record["n_params"].items()))
  unit = record["unit"]
  print(f"train FLOPs/{unit}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                           record[f"flops_per_{unit}"].items()))
  if record["data"].get("entropy_nats") is not None:
    print(f"loss floor (source entropy): {record['data']['entropy_nats']:.4f} nats/token")


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _expand(weight, like) -> np.ndarray:
  """A weight (scalar, or one per seed) with trailing axes to multiply a vector metric."""
  weight = np.asarray(weight, np.float64)
  return weight.reshape(weight.shape + (1,) * (np.ndim(like) - weight.ndim))


def eval_means(batches: list[dict[str, tuple[Any, Any]]]) -> dict[str, np.ndarray]:
  """Each metric over all evaluation batches: their means weighted by their weights (exact
  when batches hold different numbers of targets)."""
  out = {}
  for name in batches[0]:
    pairs = [b[name] for b in batches]
    total = sum(np.asarray(m, np.float64) * _expand(w, m) for m, w in pairs)
    weight = sum(_expand(w, m) for m, w in pairs)
    out[name] = total / np.maximum(weight, 1e-12)
  return out


def _summarize(name: str, value, ensemble: bool = False) -> dict[str, Any]:
  """A scalar as is, a vector (loss by position) as a list; an ensemble's per-seed values as
  their mean, and for losses also their standard deviation and the values (the error bar of a
  sweep point)."""
  value = np.asarray(value, np.float64)
  if not ensemble:
    return {name: float(value) if value.ndim == 0 else value.tolist()}
  if value.ndim > 1:
    return {name: value.mean(axis=0).tolist()}
  out = {name: float(value.mean())}
  if name in ("loss", "loss_mean", "eval_loss"):
    out[f"{name}_std"] = float(value.std(ddof=1)) if value.size > 1 else 0.0
    out[f"{name}_per_seed"] = [float(v) for v in value]
  return out


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def _repruned(prepared: build.Prepared, state: state_lib.TrainState) -> state_lib.TrainState:
  """``state`` with its initial masks recomputed from its (loaded) parameters."""
  shardings = jax.tree.map(lambda a: a.sharding, prepared.abstract_state)
  initial = prepared.task.pruner.initial
  if prepared.config.ensemble > 1:
    initial = jax.vmap(initial)
  initial = jax.jit(initial, out_shardings=(shardings.params, shardings.masks))
  params, masks = initial(state.params)
  return state.replace(params=params, masks=masks)


def run(prepared: build.Prepared, workdir: str, *, progress: bool = True) -> RunResult:
  """Trains ``prepared`` up to ``config.steps``, resuming from ``workdir`` if it holds a run."""
  # From here a signal asks for a stop at a safe point; before the first write it stops at once.
  with preemption.StopRequests() as stop:
    event = None
    while True:
      try:
        return _run(prepared, workdir, stop, progress, event)
      except spikes.Rollback as rollback:  # recorded in spikes.json: resume before the spike
        event = rollback.event
        if progress and jax.process_index() == 0:
          print(f"loss spike at step {event['spike_step']} ({event['loss']:.4f}, running mean "
                f"{event['mean']:.4f} ± {event['std']:.4f}): rolled back to step "
                f"{event['restored_step']}, skipping {event['skipped_batches']} batches",
                file=sys.stderr, flush=True)


def _run(prepared: build.Prepared, workdir: str, stop: preemption.StopRequests,
         progress: bool, rollback_event: dict[str, Any] | None = None) -> RunResult:
  config = prepared.config
  spike_settings = spikes.settings_from_config(config)
  events = spikes.read_events(workdir) if spike_settings else []
  is_main = jax.process_index() == 0
  config_path = os.path.join(workdir, "config.json")
  previous = _read_json(config_path)
  has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
  data_digest = prepared.source.digest()
  if has_checkpoints:  # refuse before writing anything
    if previous is None:
      raise ValueError(f"{workdir} holds checkpoints but no config.json, so nothing tells "
                       "what they were trained with; restore config.json or use a new --workdir")
    resume_policy.check_resumable(previous["config"], config.to_dict(), checkpoint_step=0)
    resume_policy.check_same_data(previous.get("data_digest"), data_digest)
  params_plan = None  # a params-only init_from, checked before anything is written
  branch = bool(config.init_from) and init_from.kind(config.init_from) == init_from.BRANCH
  if config.init_from and not has_checkpoints:
    if branch:
      checkpointing.parse_step_dir(config.init_from)
    else:
      params_plan = init_from.plan(config.init_from, prepared.abstract_state)
  build.check_memory_fits(prepared.record)
  if _any_process(stop.received is not None):
    raise preemption.Preempted(None, stop.signal_name)

  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  if is_main:  # the checkpoints of a trajectory a rollback abandoned, once
    spikes.delete_abandoned(workdir, events, checkpoints)
  restored = checkpoints.restore_latest(prepared.abstract_state) if has_checkpoints else None
  record = {**prepared.record, "data_digest": data_digest}
  if restored is None and branch:
    start_step, state, data_state = checkpointing.restore_from(config.init_from,
                                                              prepared.abstract_state)
    if data_state.get("next_index") != start_step * config.batch_size:
      raise ValueError(f"init_from={config.init_from} was saved with another batch size; "
                       "branch only from runs with the same batch_size")
    record["branched_from"] = {"checkpoint": os.path.abspath(config.init_from),
                               "step": start_step}
  elif restored is None:
    start_step, data_state = 0, {}
    with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
      keys = state_lib.seed_keys(config.seed, config.ensemble)  # member i: seed + i
      state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes, keys,
                                     jax.tree.map(lambda a: a.sharding, prepared.abstract_state),
                                     expand=prepared.expand_state)
    if params_plan is not None:
      state = init_from.load(params_plan, state)
      record["initialized_from"] = params_plan.describe()
      if prepared.task.pruner is not None:  # masks from the loaded weights, not the fresh ones
        state = _repruned(prepared, state)
  else:
    start_step, state, data_state = restored
    expected = (start_step + spikes.skipped_before(events, start_step, inclusive=False)
                ) * config.batch_size
    if data_state.get("next_index") != expected:
      raise ValueError(f"checkpoint {start_step} was taken at stream position "
                       f"{data_state.get('next_index')}, not {expected}; batch_size changed?")
    changes = resume_policy.check_resumable(previous["config"], config.to_dict(), start_step)
    record["resumes"] = previous.get("resumes", []) + [{"step": start_step,
                                                         "changed": changes}]
  # Each step's loss since the last training row, for its loss_mean: device arrays until that
  # row is logged (no per-step sync). A checkpoint taken between rows carries them, so a
  # resumed or branched run logs the same loss_mean as one run straight through; checkpoints
  # from before loss_mean lack them, and that first mean covers the steps after it only.
  interval_losses = list(data_state.get("interval_losses", []))
  detector = (spikes.Detector(spike_settings, data_state.get("spike_detector"))
              if spike_settings else None)
  interval_metrics: list[dict[str, Any]] = []  # each step's metrics, for a spike's norms
  if _any_process(stop.received is not None):  # while restoring: nothing written yet
    checkpoints.close()
    raise preemption.Preempted(None, stop.signal_name)
  if is_main:
    data_lib.save_tokenizer(prepared.source, workdir)
    run_record.write_json_atomically(config_path, record)
    if progress:
      _print_counts(record)
      if "branched_from" in record and restored is None:
        # init_from continues another run: say what came from it, which is all of its state.
        print(f"initialized from {record['branched_from']['checkpoint']} (step {start_step}): "
              "parameters, optimizer state, step count (so the learning-rate schedule "
              f"continues at step {start_step}) and data position; training steps "
              f"{start_step + 1}..{config.steps}")
      if params_plan is not None:
        fresh = (f"; fresh: {', '.join(params_plan.fresh)}" if params_plan.fresh else "")
        print(f"parameters from {params_plan.workdir} (step {params_plan.step}): "
              f"{len(params_plan.loaded)} arrays loaded{fresh}; optimizer, step and data "
              "start afresh")
      if restored is not None:
        print(f"resuming from the checkpoint at step {start_step}"
              + (" (the run is already complete)" if start_step >= config.steps else ""))

  unit = prepared.task.unit  # "token" (language models) or "example"
  tokens_per_step = prepared.record[f"{unit}s_per_step"]
  rows_of_process = process_rows(prepared.row_sharding, config.batch_size)
  # record: the config and counts for W&B, when config.wandb.project turns it on.
  log = (metrics_log.MetricsLog(workdir, resume_step=start_step, record=record)
         if is_main else None)
  if log and rollback_event is not None:
    log.write(spikes.event_row(rollback_event))
  rows: list[dict[str, Any]] = []
  # A live bar on a terminal; redirected to a file, one plain line per log interval instead.
  on_terminal = sys.stderr.isatty()
  bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True,
             disable=not (is_main and progress and on_terminal))
  last_time, last_step = time.perf_counter(), start_step
  meter = hardware.EnergyMeter()  # NVIDIA only; elsewhere energy_j is null, not zero
  last_joules = meter.joules()
  saved_step = start_step if (restored is not None or branch) else None
  checkpoint_steps = set(config.checkpoint_steps)
  private = privacy.settings_from_config(config)

  def global_batch(host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(prepared.batch_shardings[k], v,
                                                      prepared.batch_shapes[k].shape)
            for k, v in host_batch.items()}

  def evaluate(step_done: int) -> dict[str, Any]:
    batches = [prepared.compiled_eval(state.params, state.model_state, global_batch(
        prepared.source.eval_batch(k * config.batch_size + rows_of_process)))
        for k in range(config.eval_batches)]
    row = {"step": step_done}
    for name, value in eval_means(jax.device_get(batches)).items():
      row.update(_summarize(f"eval_{name}", value, ensemble=config.ensemble > 1))
    row[f"eval_{unit}s"] = config.eval_batches * tokens_per_step
    return row

  def save(step_done: int) -> None:
    nonlocal saved_step
    bad = int(np.max(state.first_nonfinite_step))  # a host sync, as every save is anyway
    if bad >= 0:
      last = ("no checkpoint yet" if saved_step is None
              else f"last good checkpoint: step {saved_step}")
      raise NonFiniteError(
          f"non-finite loss or gradient at step {bad}; stopped without saving that state "
          f"({last}); lower optimizer.lr or enable clipping")
    # The data position, as grain's own iterator state names it: the next example's index.
    position = {
        "next_index": (step_done + spikes.skipped_before(events, step_done, inclusive=False)
                       ) * config.batch_size,
        "interval_losses": np.asarray(jax.device_get(interval_losses), np.float64).tolist()}
    if detector is not None:
      position["spike_detector"] = detector.state
    checkpoints.save(step_done, state, position)
    saved_step = step_done

  try:
    for step in range(start_step, config.steps):
      position = step + spikes.skipped_before(events, step, inclusive=True)
      indices = position * config.batch_size + rows_of_process
      state, metrics = prepared.compiled_step(
          state, global_batch(prepared.source.batch(indices)))
      interval_losses.append(metrics["loss"])
      if detector is not None:
        interval_metrics.append(metrics)
      bar.update(1)
      done = step + 1
      at_log = done % config.log_every == 0 or done == config.steps
      if at_log:
        # The one host sync per log interval.
        metrics, losses = jax.device_get((metrics, interval_losses))
        interval_losses.clear()
        if detector is not None:
          _watch_for_spikes(detector, losses, interval_metrics, done, events, workdir,
                            checkpoints, log, is_main)
          interval_metrics.clear()
        now = time.perf_counter()
        elapsed, steps_taken = now - last_time, done - last_step
        joules = meter.joules()
        row = {"step": done, f"{unit}s_seen": done * tokens_per_step,
               f"{unit}s_per_s": steps_taken * tokens_per_step / elapsed,
               "step_time_s": elapsed / steps_taken,
               "energy_j": None if joules is None else joules - last_joules}
        last_joules = joules
        for k, v in metrics.items():
          row.update(_summarize(k, v, ensemble=config.ensemble > 1))
        row.update(_summarize("loss_mean", np.mean(np.asarray(losses, np.float64), axis=0),
                              ensemble=config.ensemble > 1))
        row["comm_bytes"] = diloco.comm_bytes(prepared.record["comm"], done)
        if private is not None:  # the privacy spent so far, at privacy.delta
          row["dp_epsilon"] = privacy.epsilon(private, done,
                                              prepared.record["privacy"]["sampling_rate"])
        rows.append(row)
        if log:
          log.write(row)
        if not (np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"])):
          save(done)  # raises NonFiniteError naming the first bad step
        bar.set_postfix(loss=f"{row['loss']:.4f}", per_s=f"{row[f'{unit}s_per_s']:.3g}")
        if is_main and progress and not on_terminal:
          print(f"step {done}/{config.steps}: loss {row['loss']:.4f}, "
                f"{row[f'{unit}s_per_s']:,.0f} {unit}s/s", file=sys.stderr, flush=True)
        last_time, last_step = now, done
      if prepared.compiled_eval and (done % config.eval_every == 0 or done == config.steps):
        row = evaluate(done)
        rows.append(row)
        if log:
          log.write(row)
      if (done % config.checkpoint_every == 0 or done in checkpoint_steps
          or done == config.steps):
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


def _watch_for_spikes(detector, losses, step_metrics, done, events, workdir, checkpoints, log,
                      is_main) -> None:
  """Feeds the interval's per-step losses to the detector; on a spike, records it and raises
  ``spikes.Rollback`` (or, past the rollback limit, logs it and returns)."""
  first = done - len(losses) + 1  # losses carried over a checkpoint come first, without metrics
  for i, loss in enumerate(losses):
    spike = detector.check(float(loss))
    if spike is None:
      continue
    step = first + i
    index = i - (len(losses) - len(step_metrics))
    norms = {}
    if index >= 0:  # the per-layer norms of the spike's own step
      norms = {k: float(v) for k, v in jax.device_get(step_metrics[index]).items() if "/" in k}
    event = {"spike_step": step, **spike, "norms": norms}
    if len(spikes.rollbacks(events)) >= detector.settings.max_rollbacks:
      event.update(restored_step=None, ignored=True)
      if is_main:
        spikes.record(workdir, events, event)
        events.append(event)
        if log:
          log.write({"step": step, "spike_ignored": 1, "spike_loss": spike["loss"],
                     "spike_mean": spike["mean"], "spike_std": spike["std"]})
      continue
    checkpoints.wait()
    restored = max([c for c in checkpoints.steps() if c < step], default=0)
    event.update(restored_step=restored,
                 skipped_batches=step - restored + detector.settings.skip_extra,
                 abandoned_checkpoints=[c for c in checkpoints.steps() if c > restored],
                 checkpoints_deleted=False)
    if is_main:
      spikes.record(workdir, events, event)
    raise spikes.Rollback(event)


def train(config, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          progress: bool = True) -> RunResult:
  """Validates, compiles and runs ``config``; the programmatic form of ``isoflop train``."""
  return run(build.prepare(config, devices, workdir), workdir, progress=progress)
