"""``config.init_from``: start a run from another run's checkpoint.

Two forms, told apart by the path:
- ``<workdir>/checkpoints/<step>``: a branch. The whole train state (parameters, optimizer
  state, step, RNG, data position) continues, as a WSD cooldown branch does; the config must
  have the same shapes.
- ``<workdir>`` or ``<workdir>:<step>`` (default: its newest checkpoint): parameters only. Every
  parameter (and model-state array) whose name exists in both runs with the same shape is
  loaded; parameters only this run has keep their fresh initialization (a new head); those only
  the source has are ignored. The optimizer, step and data start afresh: fine-tuning,
  distillation teachers, growing a model. A name with different shapes in the two runs is an
  error naming every such mismatch.
"""

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from isoflop.train import checkpointing

BRANCH, PARAMS = "branch", "params"


@dataclasses.dataclass(frozen=True)
class ParamsPlan:
  """What a params-only initialization will load, checked against the saved shapes."""
  workdir: str
  step: int
  loaded: tuple[str, ...]  # "params/..." and "model_state/..." names read from the source
  fresh: tuple[str, ...]  # this run's names the source lacks: fresh initialization
  ignored: tuple[str, ...]  # the source's names this run lacks

  def describe(self) -> dict[str, Any]:
    return {"workdir": self.workdir, "step": self.step, "loaded": len(self.loaded),
            "fresh": list(self.fresh), "ignored": list(self.ignored)}


def kind(spec: str) -> str:
  """BRANCH for ``<workdir>/checkpoints/<step>``, PARAMS for ``<workdir>[:<step>]``."""
  path = os.path.abspath(spec)
  parent = os.path.basename(os.path.dirname(path))
  return BRANCH if os.path.basename(path).isdigit() and parent == "checkpoints" else PARAMS


def _split(spec: str) -> tuple[str, int | None]:
  workdir, _, step = spec.rpartition(":") if ":" in spec else (spec, "", "")
  if step and not step.isdigit():
    raise ValueError(f"init_from={spec}: the part after ':' must be a step number; use "
                     "<workdir> or <workdir>:<step>")
  return os.path.abspath(workdir), int(step) if step else None


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
  return {f"{prefix}/{jax.tree_util.keystr(path, simple=True, separator='/')}": leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _shape(leaf) -> tuple[int, ...]:
  return tuple(leaf.shape)


def resolve(spec: str, flag: str = "init_from") -> tuple[str, int]:
  """(workdir, step) of ``<workdir>[:<step>]`` (default: its newest checkpoint); a one-line
  ValueError, naming ``flag``, for a run without checkpoints or a step it did not save."""
  workdir, step = _split(spec)
  directory = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []
  if not steps:
    raise ValueError(f"{flag}={spec}: {directory} holds no checkpoint; point it at the "
                     "workdir of a run that saved one")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"{flag}={spec}: no checkpoint at step {step} (saved: "
                     f"{', '.join(map(str, steps))})")
  return workdir, step


def plan(spec: str, abstract_state: Any) -> ParamsPlan:
  """Checks a params-only ``init_from`` against this run's state shapes, reading only the
  source's metadata; a one-line ValueError for a missing run or step, or mismatched shapes."""
  workdir, step = resolve(spec)
  saved = checkpointing.saved_tree(workdir, step)
  source = {**_flat(saved["params"], "params"), **_flat(saved.get("model_state", {}),
                                                        "model_state")}
  target = {**_flat(abstract_state.params, "params"),
            **_flat(abstract_state.model_state, "model_state")}
  mismatched = [f"{name} {_shape(source[name])} in the source, {_shape(target[name])} here"
                for name in target if name in source and _shape(source[name]) !=
                _shape(target[name])]
  if mismatched:
    raise ValueError(f"init_from={spec}: {len(mismatched)} array(s) differ in shape: "
                     f"{'; '.join(mismatched)}; make those shapes equal or rename the new "
                     "parameters")
  loaded = tuple(name for name in target if name in source)
  if not loaded:
    raise ValueError(f"init_from={spec}: the source shares no parameter names with this "
                     "model; check model.family and the model's shape")
  return ParamsPlan(workdir, step, loaded,
                    tuple(name for name in target if name not in source),
                    tuple(name for name in source if name not in target))


def _name(prefix: str, path) -> str:
  return f"{prefix}/{jax.tree_util.keystr(path, simple=True, separator='/')}"


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  """{"a/b/c": leaf} -> {"a": {"b": {"c": leaf}}}: the partial tree Orbax restores."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    *parents, last = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  return tree


def read_arrays(workdir: str, step: int, wanted: dict[str, jax.ShapeDtypeStruct]
                ) -> dict[str, jax.Array]:
  """The arrays named ``"params/..."`` / ``"model_state/..."`` of a saved train state, each
  read straight onto its wanted sharding and dtype (Orbax's partial restore: nothing else of
  the checkpoint is read)."""
  item = nest(wanted)
  restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
      item)
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  restored = _flat(ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)), "")
  return {name[1:]: leaf for name, leaf in restored.items()}  # drop the empty prefix's "/"


def load(params_plan: ParamsPlan, state: Any) -> Any:
  """``state`` (freshly initialized) with the planned parameters and model state read from
  the source, each onto the sharding and dtype of its fresh counterpart."""
  fresh = {**_flat(state.params, "params"), **_flat(state.model_state, "model_state")}
  wanted = {name: jax.ShapeDtypeStruct(fresh[name].shape, fresh[name].dtype,
                                       sharding=fresh[name].sharding)
            for name in params_plan.loaded}
  restored = read_arrays(params_plan.workdir, params_plan.step, wanted)

  def pick(prefix):
    return lambda path, leaf: restored.get(_name(prefix, path), leaf)

  return state.replace(
      params=jax.tree_util.tree_map_with_path(pick("params"), state.params),
      model_state=jax.tree_util.tree_map_with_path(pick("model_state"), state.model_state))
