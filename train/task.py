"""The seam between the trainer and the models: a family (``config.model.family``) paired with
an objective (``config.task``), both looked up by name. Nothing here knows a family.

The task initializes a model's variables (parameters, Flax-boxed with logical axis names, and
any model state: mutable collections such as BatchNorm statistics), applies the model to a
batch with that state and returns the objective's ``Terms`` with the family's auxiliary losses
(``families.AUX_LOSS``) added and its auxiliary metrics (``families.AUX_METRICS``) logged.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from isoflop.models import families, objectives


def _leaf_sum(tree) -> jax.Array:
  return sum((jnp.sum(leaf) for leaf in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32))


def _aux_metrics(collection) -> dict[str, jax.Array]:
  """Sown metrics by their name, averaged over every layer and sow that reported one."""
  values: dict[str, list[jax.Array]] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(collection):
    names = [str(getattr(k, "key", "")) for k in path if getattr(k, "key", None) is not None]
    values.setdefault(names[-1], []).append(jnp.asarray(leaf, jnp.float32).reshape(-1))
  return {name: jnp.mean(jnp.concatenate(parts)) for name, parts in values.items()}


@dataclasses.dataclass(frozen=True)
class Task:
  family: families.Family
  model_config: Any
  objective: Any
  seq_len: int  # the run's context, for the family's per-token accounting
  # Compression applied to the model (train/compression/): pruning masks kept in the state;
  # a distillation teacher, whose variables the step passes to ``losses``.
  pruner: Any = None
  teacher: Any = None
  # module -> module: the model as trained or evaluated, e.g. Qwix's quantized wrapper
  wrap_model: Any = None

  @property
  def model(self):
    model = self.family.make_model(self.model_config)
    return model if self.wrap_model is None else self.wrap_model(model)

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return self.objective.required_keys

  @property
  def unit(self) -> str:
    return self.family.unit

  def batch_axes(self, key: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a batch key: the objective's, else a leading ``batch`` axis."""
    axes = self.objective.batch_axes.get(key)
    if axes is None or len(axes) != ndim:
      return ("batch",) + (None,) * (ndim - 1)
    return tuple(axes)

  def init_variables(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """Flax-boxed parameters and model state for batches shaped like ``batch``:
    ``{"params": ..., <state collection>: ...}``."""
    args, kwargs = self.objective.model_inputs(batch, train=False)
    variables = self.model.init({"params": rng}, *args, **kwargs)
    return {k: v for k, v in variables.items() if k not in families.TRANSIENT_COLLECTIONS}

  def losses(self, params, model_state, batch, rng, train: bool, teacher_variables=None
             ) -> tuple[objectives.Terms, dict[str, Any]]:
    """(Terms, updated model state) of one batch. Model state changes only when training;
    evaluation uses it as it is (a BatchNorm's running averages). With a teacher and its
    variables, the objective is the distillation loss; ``loss`` stays the labels' CE."""
    batch = self.objective.prepare(batch, jax.random.fold_in(rng, 1))
    args, kwargs = self.objective.model_inputs(batch, train=train)
    aux = [families.AUX_LOSS, families.AUX_METRICS]
    mutable = (list(model_state) if train else []) + aux
    outputs, updates = self.model.apply({"params": params, **model_state}, *args,
                                        rngs={"dropout": rng}, mutable=mutable, **kwargs)
    terms = self.objective.terms(outputs, batch)
    metrics = dict(terms.metrics)
    objective = terms.objective
    if self.teacher is not None and teacher_variables is not None:
      objective, kl, weight = self.teacher.objective(
          objective, outputs, self.teacher.logits(teacher_variables, batch),
          self.objective.target_weights(outputs, batch))
      metrics["distill_kl"] = (kl, weight)
    if updates.get(families.AUX_LOSS):
      objective = objective + _leaf_sum(updates[families.AUX_LOSS])
    for name, value in _aux_metrics(updates.get(families.AUX_METRICS, {})).items():
      metrics[name] = (value, terms.weight)
    new_state = {k: updates[k] for k in model_state} if train else model_state
    return terms.replace(objective=objective, metrics=metrics), new_state

  def eval_metrics(self, params, model_state, batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The objective's held-out metrics (name -> (mean, weight)), the model in eval mode."""
    rng = jax.random.key(0)
    batch = self.objective.prepare(batch, jax.random.fold_in(rng, 1))
    args, kwargs = self.objective.model_inputs(batch, train=False)
    outputs = self.model.apply({"params": params, **model_state}, *args, **kwargs)
    return self.objective.eval_metrics(outputs, batch)

  def lr_multipliers(self, optimizer: str, roles: Any) -> Any:
    return self.family.lr_multipliers(self.model_config, roles, optimizer)

  def tokens(self, batch: dict[str, Any]) -> int:
    """Units (tokens or examples) one batch of this shape trains on."""
    return self.objective.units(batch)

  def describe(self, batch: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts (``param_counts``, ``param_counts_padded`` as allocated), N under each
    convention (``n_params``) and analytic training FLOPs per unit (``flops_per_<unit>``)."""
    cfg = self.model_config
    counts = self.family.param_counts(cfg)
    return {
        "model_family": self.family.name,
        "unit": self.unit,
        "param_counts": counts,
        "param_counts_padded": self.family.param_counts(cfg, padded=True),
        "n_params": self.family.n_by_convention(cfg),
        f"flops_per_{self.unit}": self.family.flops_per_unit(cfg, self.seq_len,
                                                            **self._second_stream()),
    }

  def _second_stream(self) -> dict[str, int]:
    """An encoder-decoder's target length, which its accounting needs besides seq_len."""
    target_len = getattr(self.objective, "target_len", None)
    return {} if target_len is None else {"target_len": int(target_len)}

  def for_cost_analysis(self, *, remat: bool) -> "Task":
    """The same task with every loop XLA would count once unrolled (layers, timesteps); with
    ``remat=False`` also without rematerialization (model rather than hardware FLOPs)."""
    cfg = self.family.for_cost_analysis(self.model_config, remat, self.seq_len)
    return dataclasses.replace(self, model_config=cfg)


def make_task(config) -> Task:
  """The task of a run config; one-line ValueErrors for an unknown family or objective, or a
  family that cannot serve the objective."""
  family = families.family_of(config)
  objective = objectives.get(config.task)(config)
  if config.task not in family.objectives:
    raise ValueError(f"model.family={family.name!r} cannot serve task={config.task!r}; it "
                     f"serves {', '.join(family.objectives)}")
  return Task(family, families.model_config(config), objective, int(config.seq_len))
