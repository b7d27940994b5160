"""A LoRA run exported as a plain dense run: the adapters merged into their kernels.

``export_merged(config, source, step, out)`` reads the LoRA run's parameters at ``step``,
folds each adapter into its kernel (``finetune.merge_lora``: W + (alpha / rank) A B) and writes
``out`` as a run of the same config without LoRA (``finetune.lora.rank=None``, every parameter
trainable): ``config.json`` (with ``merged_from``), the tokenizer and
``checkpoints/<step>/`` holding the merged parameters and a fresh optimizer state. ``out`` is
then what any dense run is: ``init_from=<out>``, a distillation teacher, ``isoflop compress``,
or resumed as a dense fine-tuning run. The run is written under a temporary name beside
``out`` and renamed when complete.
"""

import os
import shutil
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np

from isoflop.train import build, checkpointing, finetune, init_from, run_record
from isoflop.train import data as data_lib
from isoflop.train import state as state_lib

DENSE = {"finetune.lora.rank": None, "finetune.trainable": None,
         "finetune.trainable_roles": None, "init_from": None}


def dense_config(config):
  """``config`` without LoRA or freezing: the exported run's config."""
  config = config.copy_and_resolve_references()
  for dotted, value in DENSE.items():
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
      node = node[part]
    with node.ignore_type():
      node[last] = value
  return config


def _saved_params(source: str, step: int) -> dict[str, Any]:
  """The source run's parameters at ``step`` (adapters included), on one device."""
  saved = checkpointing.saved_tree(source, step)["params"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  wanted = {f"params/{finetune.path_name(path)}": jax.ShapeDtypeStruct(
      tuple(leaf.shape), leaf.dtype, sharding=device)
      for path, leaf in jax.tree_util.tree_leaves_with_path(saved)}
  arrays = init_from.read_arrays(source, step, wanted)
  return flax.traverse_util.unflatten_dict(
      {tuple(name.split("/")[1:]): value for name, value in arrays.items()})


def export_merged(config, source: str, step: int, out: str) -> dict[str, Any]:
  """Writes ``out`` (see the module doc); returns what ``merged_from`` records."""
  settings = finetune.settings_from_config(config)
  if not settings.lora:
    raise ValueError(f"{source} was trained without LoRA (finetune.lora.rank is None): its "
                     "parameters are dense already; use the run as it is")
  source = os.path.abspath(source)
  params = _saved_params(source, step)
  if finetune.LORA not in params:
    raise ValueError(f"{source} step {step} holds no adapters (params/{finetune.LORA}/...); "
                     "point it at the LoRA run's workdir")
  merged = finetune.merge_lora(params, settings.scale)
  prepared = build.prepare(dense_config(config), workdir=source)
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(
        prepared.task, prepared.tx, prepared.batch_shapes, state_lib.seed_keys(
            prepared.config.seed), jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
  if jax.tree.structure(merged) != jax.tree.structure(state.params):
    raise ValueError(f"the merged parameters of {source} do not form the dense model of its "
                     "config; was the run's config.json changed?")
  placed = jax.tree.map(lambda a, like: jax.device_put(np.asarray(a, like.dtype), like.sharding),
                        merged, state.params)
  state = state.replace(params=placed, step=jax.numpy.asarray(step, jax.numpy.int32))
  merged_from = {"workdir": source, "step": step, "lora": settings.describe()["lora"],
                 "adapters": _adapter_paths(params[finetune.LORA])}
  staging = f"{os.path.abspath(out).rstrip('/')}.tmp-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  try:
    checkpoints = checkpointing.Checkpoints(staging, keep=None)
    checkpoints.save(step, state, {"next_index": step * prepared.config.batch_size,
                                   "interval_losses": []})
    checkpoints.close()
    data_lib.save_tokenizer(prepared.source, staging)
    run_record.write_json_atomically(os.path.join(staging, "config.json"),
                                     {**prepared.record, "merged_from": merged_from})
    if os.path.isdir(out):
      os.rmdir(out)  # empty (the caller checks): replaced by the complete run
    os.rename(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return merged_from


def _adapter_paths(adapters) -> list[str]:
  return sorted({"/".join(path[:-1]) for path in flax.traverse_util.flatten_dict(adapters)})
