"""Orbax checkpoints under ``<workdir>/checkpoints/<step>/``: the train state and the data
iterator's position, saved asynchronously and atomically (Orbax writes a temporary directory
and renames it when complete, so a killed save never looks like a checkpoint)."""

import dataclasses
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store

# Orbax saves a replicated array in slices, one per replica, each slice a small compiled
# program per array shape. Below this many bytes per slice the compilations cost more than the
# parallel write saves (on CPU, ~50 ms each, ~100 per new model shape); larger arrays still
# save in parallel.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
  absl_logger = logging.getLogger("absl")  # Orbax logs a warning on every override
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


def saved_tree(workdir: str, step: int) -> dict[str, Any]:
  """The saved train state's tree of array metadata (shape, dtype) at ``step``; reads no
  arrays."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  # Orbax warns that an item directory has no step-level metadata file: items never do.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(path)
  finally:
    absl_logger.setLevel(level)
  return metadata.item_metadata.tree


def _without_missing_fields(abstract_state: Any, saved: dict[str, Any]) -> dict[str, Any] | None:
  """The restore target for a checkpoint written before the train state gained fields
  (``model_state``, DiLoCo's ``outer``): those fields left out, when this run has nothing in
  them either; None when nothing is missing or a missing field holds arrays here."""
  names = [f.name for f in dataclasses.fields(abstract_state)]
  missing = [n for n in names if n not in saved]
  if not missing or any(jax.tree.leaves(getattr(abstract_state, n)) for n in missing):
    return None
  return {n: getattr(abstract_state, n) for n in names if n not in missing}


def restore_from(step_dir: str, abstract_state: Any) -> tuple[int, Any, dict[str, Any]]:
  """Another run's checkpoint ``<workdir>/checkpoints/<step>``, resharded onto
  ``abstract_state``; a one-line ValueError when it is not a complete checkpoint."""
  workdir, step = parse_step_dir(step_dir)
  source = Checkpoints(workdir, keep=None, create=False)
  try:
    state, data = source.restore_step(step, abstract_state)
  finally:
    source.close()
  return step, state, data


def parse_step_dir(step_dir: str) -> tuple[str, int]:
  """(workdir, step) of ``<workdir>/checkpoints/<step>``, or a one-line ValueError."""
  step_dir = os.path.abspath(step_dir)
  name = os.path.basename(step_dir)
  if not name.isdigit() or not os.path.isdir(step_dir):
    raise ValueError(f"init_from={step_dir} is not a checkpoint directory "
                     "<workdir>/checkpoints/<step>; point it at one")
  return os.path.dirname(os.path.dirname(step_dir)), int(name)


class Checkpoints:
  """Saves every ``every`` steps and at the last step; keeps the newest ``keep``."""

  def __init__(self, workdir: str, *, keep: int | None, create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._workdir = os.path.abspath(workdir)
    self._keep = keep
    self._create = create
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=self._create,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def delete(self, steps) -> None:
    """Deletes the checkpoints of these steps that exist (a trajectory a rollback abandoned)."""
    self._manager.wait_until_finished()
    for step in set(steps) & set(self.steps()):
      self._manager.delete(step)

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Starts an asynchronous save; device buffers are copied before this returns, so the
    caller may donate ``state`` to the next step at once."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest checkpoint that restores cleanly, resharded onto ``abstract_state``'s
    shardings. A checkpoint that fails to restore is moved to
    ``<workdir>/corrupt_checkpoints/`` (kept for inspection, never loaded) with a message."""
    for step in reversed(self.steps()):
      try:
        state, data = self.restore_step(step, abstract_state)
        return step, state, data
      except Exception as e:  # any unreadable or incomplete checkpoint: fall back
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        print(f"skipping checkpoint at step {step}: it does not restore ({reason})")
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      target = os.path.join(self._workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.close()
    self._manager = self._open()

  def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    target = abstract_state
    legacy = _without_missing_fields(abstract_state, saved_tree(self._workdir, step))
    if legacy is not None:  # saved before the train state had some (here empty) fields
      target = legacy
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    state = restored.state
    if legacy is not None:
      empty = {n: getattr(abstract_state, n) for n in
               {f.name for f in dataclasses.fields(abstract_state)} - set(legacy)}
      state = abstract_state.replace(**state, **empty)
    return state, restored.data

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
