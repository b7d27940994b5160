"""Validate a run config and build everything a run needs, compiling the step ahead of time.

Nothing here writes to the workdir, so a bad command leaves nothing behind, and
``isoflop train --dry_run`` can report what a step costs before any training.
"""

import dataclasses
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from isoflop.models import param_roles
from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib
from isoflop.train import data as data_lib
from isoflop.train import diloco, finetune, hardware, optimizers, privacy, run_record, spikes
from isoflop.train import step_cost
from isoflop.train import state as state_lib
from isoflop.train import step as step_lib
from isoflop.train import task as task_lib
from isoflop.train.compression import distillation, pruning


@dataclasses.dataclass
class Prepared:
  """A validated, compiled run that has not yet written anything."""
  config: Any
  task: Any
  source: Any
  mesh: Any
  rules: Any
  compiled_step: Any
  compiled_eval: Any  # (params, model_state, batch) -> {name: (mean, weight)}, or None
  abstract_state: Any  # ShapeDtypeStructs with their shardings
  batch_shardings: dict[str, Any]  # each batch key's own sharding, from its logical axes
  row_sharding: Any  # how the batch's rows split over devices (for each process's rows)
  batch_shapes: dict[str, jax.ShapeDtypeStruct]
  tx: Any
  roles: Any  # each parameter's role (models/param_roles.py), a tree like the parameters
  record: dict[str, Any]
  expand_state: Any = None  # fresh state -> the run's layout (DiLoCo's replicas), or None


class _WithTeacher:
  """A compiled distillation step called as ``step(state, batch)``: the teacher's variables
  are its fixed third argument."""

  def __init__(self, compiled, teacher_variables):
    self.compiled, self.teacher_variables = compiled, teacher_variables

  def __call__(self, state, batch):
    return self.compiled(state, batch, self.teacher_variables)

  def memory_analysis(self):
    return self.compiled.memory_analysis()

  def cost_analysis(self):
    return self.compiled.cost_analysis()


class _PhaseTimer:
  """Seconds spent in each named phase of the preparation, for ``config.json``."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._last = time.perf_counter()

  def mark(self, phase: str) -> None:
    now = time.perf_counter()
    self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
    self._last = now


def _check_run_config(config) -> None:
  for name in ("steps", "batch_size", "seq_len", "log_every", "microbatches",
               "checkpoint_every", "keep_checkpoints", "eval_batches", "ensemble"):
    if config[name] <= 0:
      raise ValueError(f"{name}={config[name]} must be a positive integer")
  if config.eval_every < 0:
    raise ValueError(f"eval_every={config.eval_every} must be >= 0 (0 turns evaluation off)")
  for key in ("dtype", "param_dtype"):
    if config.model.get(key) == "float16":
      raise ValueError(f"model.{key}=float16 would train without loss scaling, where small "
                       "gradients underflow to zero; use bfloat16 (float32's range)")


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


class StepDoesNotFit(ValueError):
  """XLA refused to compile the step for the devices' memory (TPU compilers check it).
  ``prepared`` holds everything but the compiled step (``compiled_step`` is None), with the
  memory its record can tell without one."""

  def __init__(self, reason: str, prepared: "Prepared"):
    super().__init__(
        f"the step does not fit in device memory ({reason}); lower batch_size or seq_len, add "
        "microbatches, shard over more devices (mesh.fsdp), or set model.remat=full")
    self.reason, self.prepared = reason, prepared


def step_memory_bytes(memory) -> int:
  """Bytes one device needs for the step: its inputs and outputs (less what donation lets the
  outputs reuse), its temporaries and its code. XLA's own ``peak_memory_in_bytes`` is not used:
  on some backends (CPU) it leaves the temporaries out."""
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes
             + memory.generated_code_size_in_bytes)


def check_memory_fits(record: dict[str, Any]) -> None:
  """Refuses a run whose compiled step needs more memory per device than the device has."""
  fit = record.get("memory_fit")
  if fit and not fit["fits"]:
    raise ValueError(
        f"the step needs {fit['needed_bytes_per_device'] / 2**30:,.2f} GiB per device but "
        f"a device has {fit['limit_bytes_per_device'] / 2**30:,.2f} GiB ({fit['limit']}); "
        "lower batch_size or seq_len, add microbatches, shard over more devices (mesh.fsdp), "
        "or set model.remat=full")


def _quantization_aware(task, block):
  """The task training through Qwix's fake quantization (``quant.mode=qat``); the other modes
  quantize a trained run, after training."""
  from isoflop.train.compression import quantization  # Qwix, only for runs that quantize
  settings = quantization.settings_from_config(block)
  if settings.mode != "qat":
    raise ValueError(f"quant.mode={settings.mode} quantizes after training; train with "
                     "quant.mode=qat, or quantize a trained run with `isoflop compress "
                     "--method=quantize`")
  return dataclasses.replace(task, wrap_model=lambda model: quantization.qat_model(model,
                                                                                  settings))


def prepare(config, devices: Sequence[jax.Device] | None = None,
            workdir: str | None = None, wrap_model=None, device_costs: bool = False
            ) -> Prepared:
  """Checks the config, builds data, mesh, task and optimizer, and compiles the step. Writes
  nothing to ``workdir`` (it is read for a tokenizer saved by an earlier run). ``wrap_model``
  (module -> module) trains another form of the model, e.g. low-rank factors.
  ``device_costs`` also records the FLOPs and HBM bytes one device moves in a step
  (``record["cost_per_device"]``, from the compiled step: ``step_cost.per_device``)."""
  _check_run_config(config)
  phases = _PhaseTimer()
  source = data_lib.make_source(config, workdir=workdir)
  phases.mark("data")
  if source.vocab_size is not None and source.vocab_size != config.model.vocab_size:
    config = config.copy_and_resolve_references()
    config.model.vocab_size = source.vocab_size  # the model's vocabulary follows the tokenizer
  epochs = _data_budget(config, source)
  private = privacy.settings_from_config(config)
  task = task_lib.make_task(config)
  tuning = finetune.settings_from_config(config)  # freezing and LoRA, checked here
  if config.get("quant") and config.quant.bits is not None:
    task = _quantization_aware(task, config.quant)
  if wrap_model is not None:
    if task.wrap_model is not None:
      raise ValueError("quant.mode=qat cannot train another form of the model (low-rank "
                       "recovery); set quant.bits=None")
    task = dataclasses.replace(task, wrap_model=wrap_model)
  rules = rules_lib.get_rules(config.mesh.rules)
  sizes = {axis: size for axis, size in config.mesh.items() if axis != "rules"}
  low_comm = diloco.settings_from_config(
      config, len(devices) if devices is not None else jax.device_count())
  inner_rules = rules  # what each DiLoCo replica shards by (every run's own rules otherwise)
  if low_comm is not None:
    rules = diloco.rules(rules)
    sizes[diloco.AXIS] = low_comm.replicas
  mesh = mesh_lib.build_mesh(sizes, devices, rules_lib.mesh_axes(rules), config.mesh.rules)
  dp = rules_lib.data_parallel_size(mesh, rules)
  if config.batch_size % (dp * config.microbatches):
    raise ValueError(
        f"batch_size={config.batch_size} is not divisible by the data-parallel size {dp} "
        f"x microbatches={config.microbatches}; use a multiple of {dp * config.microbatches}")

  finetune.check_task(config, source.describe())
  if task.family.check_data is not None:
    task.family.check_data(task.model_config, source.describe(),
                           config.batch_size // (dp * config.microbatches))
  example = source.batch(np.arange(config.batch_size))
  missing = set(task.batch_keys) - set(example)
  if missing:
    raise ValueError(f"data.source {config.data.source} gives {sorted(example)}, but the "
                     f"{config.task} task needs {sorted(task.batch_keys)}; pick a matching source")
  batch_axes = {k: task.batch_axes(k, np.ndim(v)) for k, v in example.items()}
  rules_lib.check_names(batch_axes, rules, config.mesh.rules, what="batch key")
  batch_sharding = {k: rules_lib.logical_to_sharding(jax.sharding.PartitionSpec(*axes), mesh,
                                                     rules)
                    for k, axes in batch_axes.items()}
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding[k])
                  for k, v in example.items()}
  phases.mark("data")
  with mesh_lib.mesh_context(mesh), nn.logical_axis_rules(rules):
    # LoRA adapters on the dense model's selected kernels (train/finetune.py), when on.
    task = finetune.wrap_lora(task, tuning, state_lib.abstract_variables(task, batch_shapes)
                              if tuning.lora else None)
    boxed_variables = state_lib.abstract_variables(task, batch_shapes)
    variable_specs = nn.get_partition_spec(boxed_variables)
    rules_lib.check_names(variable_specs, rules, config.mesh.rules)
    roles = param_roles.label(variable_specs["params"])  # weight decay, muP, norms ask this
    pruner = pruning.make(config, variable_specs["params"], roles, jax.tree.map(
        lambda box: box.value, boxed_variables["params"],
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
    teacher = distillation.make(config)
    teacher_abstract = None
    if teacher is not None:  # on the student's mesh, by the same rules
      teacher_abstract = distillation.abstract_variables(teacher, batch_shapes, mesh, rules)
    task = dataclasses.replace(task, pruner=pruner, teacher=teacher)
    trainable = finetune.trainable_mask(variable_specs["params"], roles, tuning)
    tx, schedule = optimizers.make_optimizer(
        config.optimizer, config.steps, roles, task.lr_multipliers(config.optimizer.name, roles),
        trainable=trainable)
    shapes, logical_state, shardings = state_lib.abstract_state(
        task, tx, batch_shapes, mesh, rules, ensemble=config.ensemble,
        boxed_variables=boxed_variables)
    outer_tx = None
    if low_comm is not None:
      if jax.tree.leaves({k: v for k, v in boxed_variables.items() if k != "params"}):
        raise ValueError("diloco: replicas cannot share batch statistics (BatchNorm); use a "
                         "family without model state")
      outer_tx = diloco.outer_optimizer(low_comm)
      shapes, logical_state = diloco.abstract_state(shapes, logical_state, outer_tx, low_comm)
      shardings = rules_lib.logical_to_sharding(logical_state, mesh, rules)
    rules_lib.check_divisible(shapes, shardings)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    # A spike's record holds the per-layer norms of its step (train/spikes.py).
    watch_spikes = spikes.settings_from_config(config) is not None
    stacked = (param_roles.stacked(roles) if config.log_layer_norms or watch_spikes else None)
    sampling_rate = None
    if private is not None:
      sampling_rate = privacy.check_run(private, config,
                                        getattr(source, "num_train_examples", None),
                                        {k: v for k, v in boxed_variables.items()
                                         if k != "params"})
    example_axes = next(iter(batch_sharding.values())).spec[0]

    def jit_step(for_task, unroll_microbatches=False):
      step = step_lib.make_train_step(
          for_task, tx, schedule, microbatches=config.microbatches, l1=config.loss.l1,
          l2=config.loss.l2, decay_mask=param_roles.decay_mask(roles),
          layer_norms_stacked=stacked, unroll_microbatches=unroll_microbatches,
          privacy=private, example_axes=example_axes)
      teacher_sharding = ()
      if teacher is not None:  # the teacher's variables: the step's third argument
        teacher_sharding = (jax.tree.map(lambda a: a.sharding, teacher_abstract),)
      if config.ensemble > 1:  # K seeds in one compiled step, all on the same batch
        step = jax.vmap(step, in_axes=(0, None) + (None,) * len(teacher_sharding))
      if low_comm is not None:  # replicas with their own inner steps, synced every H
        step = diloco.make_step(step, outer_tx, low_comm, inner_rules)
      return jax.jit(step, in_shardings=(shardings, batch_sharding, *teacher_sharding),
                     out_shardings=(shardings, rules_lib.replicated(mesh)), donate_argnums=0)

    step_args = (abstract, batch_shapes) + (() if teacher is None else (teacher_abstract,))
    phases.mark("abstract_state")
    start = time.perf_counter()
    lowered_step = jit_step(task).lower(*step_args)
    too_large = None  # XLA's reason, when it refuses the step for the devices' memory
    try:
      compiled = lowered_step.compile()
    except jax.errors.JaxRuntimeError as e:
      if not step_cost.out_of_memory(e):
        raise
      compiled, too_large = None, " ".join(str(e).split())
    compile_s = time.perf_counter() - start
    phases.mark("compile_step")
    measured, unrolled = step_cost.measured_flops(jit_step, task, step_args, lowered_step,
                                                  config.microbatches)
    if device_costs and compiled is not None:
      device_cost = step_cost.per_device(compiled, lowered_step, unrolled)
    phases.mark("cost_analysis")
    compiled_eval = None
    if config.eval_every and compiled is not None:
      eval_metrics = task.eval_metrics
      if config.ensemble > 1:
        eval_metrics = jax.vmap(eval_metrics, in_axes=(0, 0, None))
      compiled_eval = jax.jit(
          eval_metrics, in_shardings=(shardings.params, shardings.model_state, batch_sharding),
          out_shardings=rules_lib.replicated(mesh)).lower(
              abstract.params, abstract.model_state, batch_shapes).compile()
    phases.mark("compile_eval")
  unit = task.unit
  units_per_step = task.tokens(example)
  described = task.describe(example)
  # Per model: an ensemble step trains ``ensemble`` models on each token.
  for convention, flops in measured.items():
    described[f"flops_per_{unit}"][convention] = flops / units_per_step / config.ensemble
  if pruner is not None:
    described["sparsity"] = pruning.describe(pruner, described["n_params"])
  described.update(finetune.counts(boxed_variables["params"], trainable))
  if tuning.freezes:
    described["finetune"] = tuning.describe()
  if config.get("quant") and config.quant.bits is not None:
    described["quant"] = {k: config.quant[k] for k in ("bits", "mode", "tile_size", "act_bits")}
  if teacher is not None:
    described["distill"] = teacher.describe()
  if private is not None:
    described["privacy"] = private.describe(sampling_rate)
  if low_comm is not None:
    described["diloco"] = low_comm.describe()
  described["comm"] = diloco.communication(
      described, low_comm, dp // (low_comm.replicas if low_comm else 1),
      jax.numpy.dtype(config.model.get("param_dtype", "float32")).itemsize)
  if teacher is not None and compiled is not None:
    # Frozen and outside the train state: read once, handed to every step.
    teacher_variables = distillation.load_variables(teacher, teacher_abstract)
    compiled = _WithTeacher(compiled, teacher_variables)
  if compiled is not None:
    memory = compiled.memory_analysis()
    needed = step_memory_bytes(memory)
    memory_record = {
        "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
        "code": memory.generated_code_size_in_bytes,
        "peak": getattr(memory, "peak_memory_in_bytes", None), "needed": needed}
  else:
    memory_record = step_cost.memory_without_compiling(too_large, step_args)
    needed = memory_record["needed"]
  limit, limit_source = hardware.memory_limit_bytes(list(mesh.devices.flat))
  record = {
      "config": config.to_dict(),
      "versions": run_record.versions(),
      "devices": run_record.devices_summary(mesh),
      **described,
      "flops_per_step": {k: v * units_per_step
                         for k, v in described[f"flops_per_{unit}"].items()},
      f"{unit}s_per_step": units_per_step,
      "data": {**source.describe(), "epochs": epochs},
      "compile_time_s": compile_s,
      "startup_s": phases.seconds,  # where this process's preparation went
      "ensemble": config.ensemble,
      "memory_per_device_bytes": memory_record,
      "memory_fit": {"needed_bytes_per_device": needed, "limit_bytes_per_device": limit,
                     "limit": limit_source,
                     "fits": too_large is None and (limit is None or needed <= limit)},
  }
  if device_costs and compiled is not None:
    record["cost_per_device"] = device_cost
  row_sharding = rules_lib.logical_to_sharding(jax.sharding.PartitionSpec("batch"), mesh, rules)
  expand_state = None
  if low_comm is not None:
    expand_state = lambda state: diloco.expand(state, outer_tx, low_comm)  # noqa: E731
  prepared = Prepared(config, task, source, mesh, rules, compiled, compiled_eval, abstract,
                      batch_sharding, row_sharding, batch_shapes, tx, roles, record,
                      expand_state)
  if too_large is not None:
    raise StepDoesNotFit(too_large, prepared)
  return prepared
