"""Which config changes a resumed run accepts: those that leave the trained function, the data
order and the optimizer's trajectory up to the checkpoint unchanged; and the data itself, which
must be what the checkpointed run read."""

import json
from typing import Any

from isoflop.models import families, objectives

# More steps, another mesh or rule table, other logging / checkpoint / eval frequencies.
SAFE_TO_CHANGE = ("steps", "log_every", "log_layer_norms", "checkpoint_every",
                  "keep_checkpoints", "checkpoint_steps", "init_from", "eval_every",
                  "eval_batches", "eval_by_position", "mesh.*",
                  # where metrics are mirrored, not what is trained
                  "wandb.project", "wandb.entity", "wandb.mode", "wandb.group", "wandb.name")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
  """{dotted key: [old value, new value]} for every key that differs or exists on one side.
  Both sides go through JSON first, as config.json did (a tuple and a list are the same)."""
  old_flat = flatten(json.loads(json.dumps(old)))
  new_flat = flatten(json.loads(json.dumps(new)))
  missing = object()
  changes = {}
  for key in sorted(set(old_flat) | set(new_flat)):
    a, b = old_flat.get(key, missing), new_flat.get(key, missing)
    if a != b:
      changes[key] = [None if a is missing else a, None if b is missing else b]
  return changes


# Keys added to the base config since runs were first recorded, at the values that behave as
# those runs did.
ADDED_AT_OLD_BEHAVIOUR = {"data.normalize": False, "data.augment.crop_padding": 0,
                          "data.augment.flip": False, "data.augment.mixup_alpha": 0.0,
                          "data.stream_images": False, "model.qk_norm": False,
                          "model.attn_logit_softcap": 0.0, "model.final_logit_softcap": 0.0,
                          "optimizer.independent_weight_decay": False}


# Compression blocks added since runs were first recorded, and the keys that turn each on: a
# block absent from the checkpointed config is accepted while those are all None (off).
ADDED_SWITCHED_BLOCKS = {"prune": ("method",), "quant": ("bits",),
                         "lowrank": ("rank_fraction", "energy", "rank"),
                         "distill": ("teacher",),
                         "finetune": ("trainable", "trainable_roles", "lora.rank"),
                         "privacy": ("noise_multiplier",), "stability": ("spike_sigmas",),
                         "diloco": ("replicas",)}


def _switch(new: dict[str, Any], block: str, switch: str) -> Any:
  """The value of a block's switch, ``lora.rank`` naming a nested key."""
  node = new.get(block, {})
  for part in switch.split("."):
    node = (node or {}).get(part)
  return node


def _added_key_behaves_as_before(key: str, value: Any, new: dict[str, Any]) -> bool:
  """A key the checkpointed config lacks (added to the config since) is accepted at the value
  that behaves as runs did before it existed: ``model.family`` at the default family, and a
  model key at its family's config default (new model fields default to the old behaviour)."""
  if key == "model.family":
    return value == families.DEFAULT
  if key in ADDED_AT_OLD_BEHAVIOUR:
    return value == ADDED_AT_OLD_BEHAVIOUR[key]
  block = key.split(".", 1)[0]
  if block in ADDED_SWITCHED_BLOCKS and "." in key:
    return all(_switch(new, block, switch) is None for switch in ADDED_SWITCHED_BLOCKS[block])
  if not key.startswith("model.") or key.count(".") != 1:
    return False
  try:
    return value == families.field_default(new["model"].get("family", families.DEFAULT),
                                           key.split(".", 1)[1])
  except (KeyError, ValueError):
    return False


def _other_objectives_block(key: str, new: dict[str, Any]) -> bool:
  """A key of another objective's block (``masked_lm.*`` in a causal-LM run): never read."""
  block = key.split(".", 1)[0]
  return "." in key and block in objectives.names() and block != new.get("task")


def is_safe(key: str) -> bool:
  """Whether a dotted config key may change on resume (``mesh.*``: any mesh axis the rules
  table names, and the table)."""
  return any(key == safe or (safe.endswith(".*") and key.startswith(safe[:-1]))
             for safe in SAFE_TO_CHANGE)


def check_resumable(old: dict[str, Any], new: dict[str, Any], checkpoint_step: int
                    ) -> dict[str, list[Any]]:
  """The accepted changes, or a one-line ValueError naming the refused ones."""
  changes = config_changes(old, new)
  refused = {k: (a, b) for k, (a, b) in changes.items()
             if not is_safe(k) and not _other_objectives_block(k, new)
             and not (a is None and _added_key_behaves_as_before(k, b, new))}
  if refused:
    listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in refused.items())
    raise ValueError(f"the config differs from the checkpointed run at {listed}; only "
                     f"{', '.join(SAFE_TO_CHANGE)} may change on resume: restore those values "
                     "or use a new --workdir")
  if new["steps"] < checkpoint_step:
    raise ValueError(f"steps={new['steps']} is below the checkpoint's step {checkpoint_step}; "
                     "ask for at least that many steps or use a new --workdir")
  return changes


def check_same_data(old: dict[str, str] | None, new: dict[str, str]) -> None:
  """A one-line ValueError naming what differs between the data digests recorded in
  config.json (``old``) and computed now (``new``): a resumed run must read the same stream."""
  if old is None:
    return  # a workdir from before data digests were recorded: nothing to compare with
  differing = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
  if differing:
    listed = "; ".join(f"{key} ({old.get(key)} -> {new.get(key)})" for key in differing)
    raise ValueError(f"the data changed since the checkpointed run: {listed}; use the "
                     "original data or a new --workdir")
