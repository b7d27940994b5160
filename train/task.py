"""The seam between the trainer and the model families.

A task builds its model from the config, initializes parameters from a batch's shapes, and
turns (params, batch, rng) into a scalar loss and a dict of scalar metrics. ``train/`` only
ever talks to this interface; new families register a task here and need no change elsewhere.
"""

from typing import Any, Protocol

import jax


class Task(Protocol):
  batch_keys: tuple[str, ...]  # what a batch must hold for this task

  def init_params(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Parameters (Flax-boxed with logical axis names) for batches shaped like ``batch``."""

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
           train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar objective to minimize and scalar metrics (``loss`` among them)."""

  def lr_multipliers(self, optimizer: str, roles: Any) -> Any:
    """None, or a tree like the parameters of learning-rate multipliers (muP), from the
    parameters' roles (``models/param_roles.py``)."""

  def tokens(self, batch: dict[str, Any]) -> int:
    """How many tokens (or examples) a batch of this shape trains on; for throughput."""

  def describe(self, batch: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts (``param_counts``, and ``param_counts_padded`` as allocated), N
    (``n_params``) and analytic FLOPs per token (``flops_per_token``) under each convention."""

  def for_cost_analysis(self, *, remat: bool) -> "Task":
    """The same task with any layer loop unrolled, so XLA's cost analysis (which counts a
    while-loop body once) sees every layer; with ``remat=False`` also without
    rematerialization (model FLOPs rather than hardware FLOPs)."""


def make_task(config) -> Task:
  from isoflop.train import causal_lm  # registered families
  tasks = {"causal_lm": causal_lm.CausalLmTask.from_config}
  if config.task not in tasks:
    raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(tasks)}")
  return tasks[config.task](config)
