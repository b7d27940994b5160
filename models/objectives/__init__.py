"""Objectives by name (``config.task``): what turns a model's outputs and a batch into a loss.

An objective declares the batch keys it reads and their logical axes, how to call the model on
a batch, and returns a ``Terms``: the mean objective to minimize over the ``weight`` units it
covers (target tokens, examples) and metrics as (mean, weight) pairs. The trainer multiplies
means by weights, adds them across microbatches and evaluation batches, and divides once, so a
batch whose microbatches hold different numbers of targets (masked LM, padding) averages
exactly. Objectives stay free of training mechanics and of any one family.

An objective that builds its examples from raw token windows (masked LM, span corruption) also
has ``make_examples``: the data pipeline (``train/data/examples.py``) cuts windows of
``window_length(seq_len)`` tokens from any token source and hands them over with one NumPy
generator per example, seeded by (run seed, example index), so the examples of a step are fixed
by the seed and the step whatever the batch layout, device count or resume point. Its
``special_tokens`` (names such as ``<mask>``) get ids after the tokenizer's own.
"""

import importlib
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import optax

_BUILTIN = {
    "causal_lm": "isoflop.models.objectives.causal_lm",
    "masked_lm": "isoflop.models.objectives.masked_lm",
    "span_corruption": "isoflop.models.objectives.span_corruption",
    "classification": "isoflop.models.objectives.classification",
}
_REGISTERED: dict[str, Any] = {}


@flax.struct.dataclass
class Terms:
  objective: jax.Array  # scalar mean to minimize (loss plus weighted regularizers)
  weight: jax.Array  # how many units the means cover
  metrics: dict[str, tuple[jax.Array, jax.Array]]  # name -> (mean, weight); "loss" among them


class Objective(Protocol):
  name: str
  unit: str  # "token" | "example": what ``weight`` and throughput count
  batch_axes: dict[str, tuple[str | None, ...]]  # logical axes of every key it may read
  required_keys: tuple[str, ...]

  def prepare(self, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    """The batch the model sees (e.g. masked tokens), deterministic given ``rng``."""

  def model_inputs(self, batch, train: bool) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) of the model's ``__call__`` for this batch."""

  def terms(self, outputs, batch) -> Terms:
    """The training objective and metrics of a batch."""

  def eval_metrics(self, outputs, batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Held-out metrics (logged as ``eval_<name>``): name -> (mean, weight); may be vectors."""

  def units(self, batch) -> int:
    """Units (tokens or examples) a batch of this shape trains on, for throughput."""

  def target_weights(self, outputs, batch) -> jax.Array:
    """1 where ``outputs`` (logits) predict a target the loss counts, 0 elsewhere, shaped like
    the logits without their last axis: what distillation's soft term averages over."""


class ExampleObjective(Objective, Protocol):
  """An objective that makes its own examples from raw token windows (see the module doc)."""
  special_tokens: tuple[str, ...]  # names; ids are assigned after the tokenizer's vocabulary

  def window_length(self, seq_len: int) -> int:
    """Raw tokens each example is made from."""

  def make_examples(self, windows_BR, rngs, special_ids: dict[str, int], vocab_size: int
                    ) -> dict[str, Any]:
    """NumPy batch from int32 windows_BR (R = window_length), one ``np.random.Generator`` per
    row; ``vocab_size`` is the tokenizer's own (ids below it are ordinary tokens)."""


def register(name: str, from_run_config) -> None:
  """Registers ``from_run_config(run_config) -> Objective`` under ``name``."""
  _REGISTERED[name] = from_run_config


def names() -> list[str]:
  return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str):
  """``from_run_config`` of the objective called ``name``, or a one-line ValueError."""
  if name not in _REGISTERED and name in _BUILTIN:
    importlib.import_module(_BUILTIN[name])  # registers itself
  if name not in _REGISTERED:
    raise ValueError(f"unknown task {name!r}; choose one of {names()}")
  return _REGISTERED[name]


def safe_mean(total: jax.Array, weight: jax.Array) -> jax.Array:
  """total / weight, 0 where nothing is weighted (a microbatch without targets)."""
  return total / jax.numpy.maximum(weight, 1e-12)


def weighted_token_terms(logits_BLV, targets_BL, weights_BL) -> Terms:
  """Mean cross-entropy over the tokens with weight 1 (selected, or real targets), weighted by
  their count: what masked LM and span corruption train on."""
  weights_BL = weights_BL.astype(jnp.float32)
  weight = weights_BL.sum()
  ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
  loss = safe_mean((ce_BL * weights_BL).sum(), weight)
  return Terms(objective=loss, weight=weight, metrics={"loss": (loss, weight)})


def weighted_token_metrics(logits_BLV, targets_BL, weights_BL):
  """Held-out ``loss`` and top-1 ``accuracy`` over the weighted tokens."""
  terms = weighted_token_terms(logits_BLV, targets_BL, weights_BL)
  correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
  accuracy = safe_mean((correct_BL * weights_BL.astype(jnp.float32)).sum(), terms.weight)
  return {"loss": terms.metrics["loss"], "accuracy": (accuracy, terms.weight)}
