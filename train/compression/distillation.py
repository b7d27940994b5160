"""Knowledge distillation: ``config.distill.teacher=<workdir>[:<step>]``.

The student trains on alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
(Hinton et al. 2015: both distributions softened by temperature T; T^2 keeps the soft term's
gradients on the scale of the hard one's). The teacher is any trained run whose task and
output space (vocabulary, or classes) equal the student's, of any family: a large decoder can
teach a small decoder or an LSTM. Its forward pass runs inside the student's jitted step, its
parameters sharded on the student's mesh by the same logical-axis rules, frozen (no gradient)
and passed to the step as an argument: they are not part of the train state, so the student's
checkpoints never hold them.
"""

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from isoflop.sharding import rules as rules_lib
from isoflop.train import init_from
from isoflop.train import state as state_lib
from isoflop.train import task as task_lib


@dataclasses.dataclass(frozen=True)
class Teacher:
  task: Any  # the teacher run's Task (its family, model config and objective)
  workdir: str
  step: int
  alpha: float  # weight of the hard-label cross-entropy
  temperature: float
  outputs: int  # the shared output space: vocabulary size, or classes

  def describe(self) -> dict[str, Any]:
    return {"teacher": self.workdir, "step": self.step, "alpha": self.alpha,
            "temperature": self.temperature, "teacher_family": self.task.family.name,
            "teacher_param_counts": self.task.family.param_counts(self.task.model_config)}


  def logits(self, variables: Any, batch) -> jax.Array:
    """The teacher's logits on a prepared batch, in eval mode, without gradient."""
    args, kwargs = self.task.objective.model_inputs(batch, train=False)
    outputs = self.task.model.apply(variables, *args, **kwargs)
    return jax.lax.stop_gradient(outputs)

  def objective(self, hard_objective, student_logits, teacher_logits, weights
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(alpha * hard + (1 - alpha) * T^2 * KL, the KL, its weight)."""
    kl, weight = soft_kl(student_logits, teacher_logits, weights, self.outputs,
                         self.temperature)
    t = self.temperature
    return self.alpha * hard_objective + (1.0 - self.alpha) * t * t * kl, kl, weight


def _outputs(config) -> int:
  model = config.model
  return int(model.get("num_classes") or model.vocab_size)


def make(config) -> Teacher | None:
  """The run's teacher from ``config.distill``, checked against the student's config (its
  vocabulary already resolved from the data); None without ``distill.teacher``."""
  block = config.get("distill")
  if block is None or block.get("teacher") is None:
    return None
  spec = block.teacher
  alpha, temperature = float(block.alpha), float(block.temperature)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"distill.alpha={alpha} must be in [0, 1]: the weight of the labels' "
                     "cross-entropy (1 - alpha goes to the teacher's)")
  if temperature <= 0:
    raise ValueError(f"distill.temperature={temperature} must be positive")
  workdir, _ = init_from._split(spec)
  record_path = os.path.join(workdir, "config.json")
  if not os.path.exists(record_path):
    raise ValueError(f"distill.teacher={spec}: {record_path} does not exist; point it at the "
                     "workdir of a trained run")
  workdir, step = init_from.resolve(spec, flag="distill.teacher")
  with open(record_path, encoding="utf-8") as f:
    teacher_config = ml_collections.ConfigDict(json.load(f)["config"])
  if teacher_config.task != config.task:
    raise ValueError(f"distill.teacher={spec} was trained on task={teacher_config.task!r}, this "
                     f"run on task={config.task!r}; the teacher must solve the same task")
  if _outputs(teacher_config) != _outputs(config):
    raise ValueError(f"distill.teacher={spec}: its output space ({_outputs(teacher_config)}) "
                     f"differs from this run's ({_outputs(config)}); distil between models "
                     "with the same vocabulary (or classes)")
  # The teacher reads the student's batches: its context is the student's, its position table
  # (when the family has one) stays the one it trained with.
  with teacher_config.unlocked():
    if "max_len" in teacher_config.model and teacher_config.model.max_len is None:
      teacher_config.model.max_len = teacher_config.seq_len
    teacher_config.seq_len = config.seq_len
  return Teacher(task_lib.make_task(teacher_config), workdir, step, alpha, temperature,
                 _outputs(config))


def abstract_variables(teacher: Teacher, batch_shapes, mesh, rules) -> Any:
  """The teacher's variables (``{"params": ..., <collection>: ...}``) as ShapeDtypeStructs on
  their shardings under the student's mesh and rules. Call under those rules."""
  boxed = state_lib.abstract_variables(teacher.task, batch_shapes)
  specs = nn.get_partition_spec(boxed)
  shardings = rules_lib.logical_to_sharding(specs, mesh, rules)
  shapes = jax.tree.map(lambda box: box.value, boxed,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def load_variables(teacher: Teacher, abstract: Any) -> Any:
  """The teacher's saved parameters and model state, read onto ``abstract``'s shardings."""
  wanted = {}
  for collection, tree in abstract.items():
    prefix = "params" if collection == "params" else f"model_state/{collection}"
    wanted.update(init_from._flat(tree, prefix))
  arrays = init_from.read_arrays(teacher.workdir, teacher.step, wanted)
  out = {}
  for collection, tree in abstract.items():
    prefix = "params" if collection == "params" else f"model_state/{collection}"
    out[collection] = jax.tree_util.tree_map_with_path(
        lambda path, _: arrays[init_from._name(prefix, path)], tree)
  return out


def soft_kl(student_logits, teacher_logits, weights, outputs: int, temperature: float
            ) -> tuple[jax.Array, jax.Array]:
  """(mean KL(teacher_T || student_T) over the weighted positions, their weight). Logits are
  cut to the shared ``outputs`` first: padded vocabulary entries belong to neither."""
  s = student_logits[..., :outputs].astype(jnp.float32) / temperature
  t = teacher_logits[..., :outputs].astype(jnp.float32) / temperature
  log_p_t, log_p_s = jax.nn.log_softmax(t), jax.nn.log_softmax(s)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  weights = weights.astype(jnp.float32)
  weight = weights.sum()
  return jnp.sum(kl * weights) / jnp.maximum(weight, 1e-12), weight
