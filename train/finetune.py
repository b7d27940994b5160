"""Fine-tuning: which parameters train (``finetune.trainable``, ``finetune.trainable_roles``)
and low-rank adapters (``finetune.lora``).

Freezing. A parameter's path is its name in the params tree joined by ``/``, e.g.
``layers/attention/query_kernel`` or ``classifier/kernel``. ``finetune.trainable`` is a
regular expression searched in each path (``re.search``: anchor it with ``^``/``$`` for an
exact name); ``finetune.trainable_roles`` a comma-separated list of roles of
``models/param_roles.py`` (embedding, readout, hidden, vector). A parameter trains when it
passes every filter that is set; with neither set, every parameter trains and the optimizer is
the plain one. Frozen parameters get no update at all: the optimizer is ``optax.multi_transform``
with ``set_to_zero`` for them (no weight decay, no state), and the clipping norm counts the
trainable gradients only.

LoRA (Hu et al. 2021). ``finetune.lora.rank`` r > 0 puts adapters on every hidden matrix whose
path ``finetune.lora.targets`` (a regex; default: the attention and MLP kernels) matches: the
kernel W (copies..., inputs..., outputs..., e.g. ``(layers, embed, heads, kv)``) is used as
W + (alpha / r) A B with A (copies..., inputs..., r), initialized normal with std
1/sqrt(d_in), and B (copies..., r, outputs...), initialized to zero, so a LoRA model starts
computing exactly what its base computes. The adapters live in the params tree under
``lora/<kernel path>/{a,b}`` (names no other run has: ``init_from`` a dense run loads every
base weight and leaves the adapters fresh), with logical axes so the sharding rules place them
(``rank`` unsharded). Under LoRA the base weights are frozen; the adapters, a classification
head (``classifier/...``) and any base parameter the freezing filters select train.
``merge_lora`` folds the adapters into their kernels: the plain dense params tree, exactly what
the LoRA model computes; ``isoflop.experiments.merge_lora`` writes a run of it.
"""

import dataclasses
import re
import string
from typing import Any, Mapping

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from isoflop.models import classifier, param_roles

LORA = "lora"  # the adapters' top-level scope in the params tree
DEFAULT_LORA_TARGETS = r"(attention|mlp)/|moe/w[io]$"
TRAINABLE, FROZEN = "trainable", "frozen"


@dataclasses.dataclass(frozen=True)
class Settings:
  trainable: str | None = None  # regex over parameter paths; None: no filter
  trainable_roles: tuple[str, ...] | None = None  # None: no filter
  lora_rank: int | None = None  # None: no adapters
  lora_alpha: float = 16.0
  lora_targets: str = DEFAULT_LORA_TARGETS

  @property
  def lora(self) -> bool:
    return self.lora_rank is not None

  @property
  def freezes(self) -> bool:
    return self.lora or self.trainable is not None or self.trainable_roles is not None

  @property
  def scale(self) -> float:
    return float(self.lora_alpha) / float(self.lora_rank)

  def describe(self) -> dict[str, Any]:
    out: dict[str, Any] = {"trainable": self.trainable,
                           "trainable_roles": list(self.trainable_roles or []) or None}
    if self.lora:
      out["lora"] = {"rank": self.lora_rank, "alpha": self.lora_alpha,
                     "targets": self.lora_targets}
    return out


def _compiled(pattern: str, key: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{key}={pattern!r} is not a valid regular expression ({e}); fix it, "
                     "e.g. 'attention/' or '^classifier/'") from None


def settings_from_config(config) -> Settings:
  """The ``finetune`` block, checked at the boundary: one-line ValueErrors."""
  block = config.get("finetune") or {}
  lora = block.get("lora") or {}
  trainable = block.get("trainable")
  if trainable is not None:
    _compiled(trainable, "finetune.trainable")
  roles = block.get("trainable_roles")
  if roles is not None:
    names = roles.split(",") if isinstance(roles, str) else list(roles)
    roles = tuple(name.strip() for name in names if name.strip())
    unknown = [r for r in roles if r not in param_roles.KINDS]
    if unknown or not roles:
      raise ValueError(f"finetune.trainable_roles={block.get('trainable_roles')!r} names "
                       f"unknown roles {unknown}; use a comma-separated list of "
                       f"{', '.join(param_roles.KINDS)}")
  rank = lora.get("rank")
  if rank is not None and (isinstance(rank, bool) or int(rank) != rank or rank <= 0):
    raise ValueError(f"finetune.lora.rank={rank} must be a whole number >= 1 (None: no LoRA)")
  alpha = float(lora.get("alpha", 16.0))
  if rank is not None and alpha <= 0:
    raise ValueError(f"finetune.lora.alpha={alpha} must be positive (the scale is alpha / rank)")
  targets = lora.get("targets") or DEFAULT_LORA_TARGETS
  if rank is not None:
    _compiled(targets, "finetune.lora.targets")
  return Settings(trainable, roles, None if rank is None else int(rank), alpha, targets)


def path_name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _flat_specs(param_specs) -> dict[str, tuple]:
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  return {path_name(path): tuple(spec) for path, spec in
          jax.tree_util.tree_leaves_with_path(param_specs, is_leaf=is_spec)}


# ---------------------------------------------------------------------------------------------
# LoRA adapters


def _is_target(names: tuple, path: str, pattern: re.Pattern) -> bool:
  role = param_roles.role_of(names)
  convolution = set(names) & {"height", "width"}  # a window's matmul is not a plain product
  return role.kind == param_roles.HIDDEN and not convolution and bool(pattern.search(path))


def lora_targets(param_specs, settings: Settings, family: str) -> tuple[str, ...]:
  """Paths of the kernels the adapters go on; a one-line ValueError when none matches."""
  pattern = _compiled(settings.lora_targets, "finetune.lora.targets")
  specs = _flat_specs(param_specs)
  targets = tuple(path for path, names in specs.items() if _is_target(names, path, pattern))
  if not targets:
    hidden = [p for p, n in specs.items() if param_roles.role_of(n).kind == param_roles.HIDDEN]
    raise ValueError(f"finetune.lora.targets={settings.lora_targets!r} matches no hidden "
                     f"matrix of model.family={family!r} (its hidden matrices: "
                     f"{', '.join(hidden[:8]) or 'none'}); set finetune.lora.targets to one "
                     "of them, or fine-tune without LoRA")
  return targets


def _lora_names(names: tuple) -> tuple[tuple, tuple]:
  copies, inputs, outputs = param_roles.matrix_axes(names)
  pick = lambda group: tuple(names[i] for i in group)  # noqa: E731
  return (pick(copies) + pick(inputs) + ("rank",), pick(copies) + ("rank",) + pick(outputs))


def _lora_shapes(shape: tuple, names: tuple, rank: int) -> tuple[tuple, tuple]:
  copies, inputs, outputs = param_roles.matrix_axes(names)
  pick = lambda group: tuple(shape[i] for i in group)  # noqa: E731
  return (pick(copies) + pick(inputs) + (rank,), pick(copies) + (rank,) + pick(outputs))


def lora_delta(a, b, kernel_ndim: int) -> jax.Array:
  """A B contracted over the rank, in float32: a delta shaped like the kernel. The copies are
  the leading axes both share (A: copies + inputs + 1 axes, B: copies + 1 + outputs)."""
  n_copies = a.ndim + b.ndim - 2 - kernel_ndim
  letters = iter(string.ascii_letters)
  take = lambda n: "".join(next(letters) for _ in range(n))  # noqa: E731
  copies, inputs, outputs, rank = (take(n_copies), take(a.ndim - n_copies - 1),
                                   take(b.ndim - n_copies - 1), take(1))
  return jnp.einsum(f"{copies}{inputs}{rank},{copies}{rank}{outputs}->{copies}{inputs}{outputs}",
                    a.astype(jnp.float32), b.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def merge_lora(params: Mapping[str, Any], scale: float) -> dict[str, Any]:
  """The dense params of a LoRA params tree: each target kernel W replaced by
  W + scale A B (in W's dtype) and the ``lora`` scope dropped. Pure jnp (usable under jit);
  a tree without adapters comes back unchanged."""
  if LORA not in params:
    return dict(params)
  flat = flax.traverse_util.flatten_dict({k: v for k, v in params.items() if k != LORA})
  adapters = flax.traverse_util.flatten_dict(params[LORA])
  for path in sorted({p[:-1] for p in adapters}):  # a fixed order: the same program each run
    kernel = flat[path]
    delta = lora_delta(adapters[path + ("a",)], adapters[path + ("b",)], kernel.ndim)
    flat[path] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True, eq=False)
class LoraModel:
  """A model with adapters (a ``Task.wrap_model`` result: the task calls ``init`` and
  ``apply``). ``init`` adds ``lora/<path>/{a,b}`` beside the base's own (boxed) parameters;
  ``apply`` merges them into the kernels and runs the unchanged model code, so gradients
  reach A and B through W + scale A B."""
  model: Any
  targets: tuple[str, ...]
  rank: int
  scale: float

  def init(self, rngs, *args, **kwargs):
    variables = dict(self.model.init(rngs, *args, **kwargs))
    params = dict(variables["params"])
    flat = flax.traverse_util.flatten_dict(params)
    key = rngs["params"] if isinstance(rngs, Mapping) else rngs
    adapters = {}
    for k, name in enumerate(self.targets):
      path = tuple(name.split("/"))
      box = flat[path]
      names = tuple(box.names)
      a_shape, b_shape = _lora_shapes(tuple(box.value.shape), names, self.rank)
      a_names, b_names = _lora_names(names)
      d_in = int(np.prod([box.value.shape[i] for i in param_roles.matrix_axes(names)[1]]))
      a = jax.random.normal(jax.random.fold_in(key, 0x10A + k), a_shape, jnp.float32)
      adapters[path + ("a",)] = box.replace(value=(a / np.sqrt(d_in)).astype(box.value.dtype),
                                            names=a_names)
      adapters[path + ("b",)] = box.replace(value=jnp.zeros(b_shape, box.value.dtype),
                                            names=b_names)
    params[LORA] = flax.traverse_util.unflatten_dict(adapters)
    variables["params"] = params
    return variables

  def apply(self, variables, *args, **kwargs):
    merged = merge_lora(variables["params"], self.scale)
    return self.model.apply({**variables, "params": merged}, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Which parameters train


def trainable_mask(param_specs, roles, settings: Settings) -> Any:
  """A tree like the parameters of bools (True: trains), or None when everything trains.
  One-line ValueErrors for a filter that matches no parameter, or filters leaving nothing."""
  if not settings.freezes:
    return None
  specs = _flat_specs(param_specs)
  flat_roles = {path_name(p): r for p, r in jax.tree_util.tree_leaves_with_path(
      roles, is_leaf=lambda x: isinstance(x, param_roles.Role))}
  base = [p for p in specs if not p.startswith(f"{LORA}/")]
  by_regex = by_role = set(base)
  if settings.trainable is not None:
    pattern = _compiled(settings.trainable, "finetune.trainable")
    by_regex = {p for p in base if pattern.search(p)}
    if not by_regex:
      raise ValueError(f"finetune.trainable={settings.trainable!r} matches no parameter; "
                       f"paths look like {', '.join(base[:6])}")
  if settings.trainable_roles is not None:
    by_role = {p for p in base if flat_roles[p].kind in settings.trainable_roles}
    if not by_role:
      raise ValueError(f"finetune.trainable_roles={','.join(settings.trainable_roles)} "
                       "matches no parameter of this model; its roles are "
                       f"{', '.join(sorted({flat_roles[p].kind for p in base}))}")
  selected = by_regex & by_role
  filtered = settings.trainable is not None or settings.trainable_roles is not None
  if filtered and not selected:
    raise ValueError(f"no parameter is both matched by finetune.trainable="
                     f"{settings.trainable!r} and of a role in finetune.trainable_roles="
                     f"{','.join(settings.trainable_roles)}; loosen one of them")
  if settings.lora:  # the base frozen but for the head and what the filters pick
    head = {p for p in base if p.startswith(f"{classifier.NAME}/")}
    selected = (selected if filtered else set()) | head
    selected |= {p for p in specs if p.startswith(f"{LORA}/")}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path_name(path) in selected, param_specs,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def counts(param_shapes, mask) -> dict[str, int]:
  """``n_params_trainable`` and ``n_params_frozen`` of one model (the arrays as allocated)."""
  sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(param_shapes)]
  trains = [True] * len(sizes) if mask is None else jax.tree.leaves(mask)
  trainable = sum(s for s, t in zip(sizes, trains) if t)
  return {"n_params_trainable": trainable, "n_params_frozen": sum(sizes) - trainable}


def wrap_lora(task, settings: Settings, boxed_variables) -> Any:
  """``task`` training through adapters on the selected kernels of ``boxed_variables`` (the
  dense model's abstract, Flax-boxed variables), or ``task`` as it is without LoRA."""
  if not settings.lora:
    return task
  if task.wrap_model is not None:
    raise ValueError("finetune.lora cannot train another form of the model (quant.mode=qat, "
                     "low-rank recovery); set finetune.lora.rank=None or quant.bits=None")
  specs = nn.get_partition_spec(boxed_variables)["params"]
  targets = lora_targets(specs, settings, task.family.name)
  return dataclasses.replace(task, wrap_model=lambda model: LoraModel(
      model, targets, settings.lora_rank, settings.scale))


def check_task(config, source_description: dict[str, Any]) -> None:
  """Classification on a language-model family needs ``model.num_classes`` covering the
  source's labels; a head without ``task=classification`` is a mistake."""
  num_classes = config.model.get("num_classes")
  if "vocab_size" not in config.model:
    return  # an image family: its own checks apply
  if config.task == "classification" and num_classes is None:
    raise ValueError("task=classification over text needs model.num_classes (the number of "
                     "labels, e.g. 38 for data.source=shakespeare_plays)")
  if config.task != "classification" and num_classes is not None:
    raise ValueError(f"model.num_classes={num_classes} puts a classification head on the "
                     f"model, but task={config.task}; use task=classification or leave "
                     "model.num_classes unset")
  if config.task == "classification":
    low, high = source_description.get("label_range") or (None, None)
    if low is None:
      raise ValueError(f"data.source={config.data.source} gives no labels; text "
                       "classification needs a labelled source (shakespeare_plays)")
    if low < 0 or high >= num_classes:
      raise ValueError(f"the labels run from {low} to {high}, outside the model's classes "
                       f"0..{num_classes - 1}; set model.num_classes={high + 1}")
