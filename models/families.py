"""Model families by name: what train/ and the sweeps look up instead of importing a model.

A family is a frozen config dataclass, a Linen module built from it, and its accounting
(parameter counts by group, N and analytic FLOPs per unit under each named convention), kept
with the model. ``config.model.family`` names one; its module registers a ``Family`` here.
Families outside the package (a notebook, a test) call ``register`` and need nothing else.

Conventions every family follows, so the trainer can stay generic:
- Parameters and activations carry logical axis names only (``models/logical.py``).
- Mutable collections other than ``TRANSIENT_COLLECTIONS`` are model state (BatchNorm
  statistics, counters): the trainer carries them in the train state, applies the model with
  them mutable when training and immutable (running averages) when evaluating.
- A module may ``sow`` into ``AUX_LOSS`` (terms already multiplied by their coefficient, each
  a mean per unit; summed into the objective) and ``AUX_METRICS`` (logged, averaged over
  layers): how a mixture of experts reports its load-balancing loss and dropped tokens.
- ``param_counts`` returns at least ``embedding``, ``non_embedding``, ``head``, ``total`` and
  ``active`` (the parameters one unit passes through; ``total`` for dense models).
"""

import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn

DEFAULT = "decoder"  # the family of a config without model.family (every run before it existed)
AUX_LOSS = "aux_loss"
AUX_METRICS = "aux_metrics"
TRANSIENT_COLLECTIONS = ("intermediates", AUX_LOSS, AUX_METRICS)

# The package's own families, imported on first use so a notebook pays only for its own.
_BUILTIN = {
    "decoder": "isoflop.models.decoder_family",
    "lstm": "isoflop.models.lstm.family",
    "encoder": "isoflop.models.encoder.family",
    "encdec": "isoflop.models.encdec.family",
    "vit": "isoflop.models.vit.family",
    "resnet": "isoflop.models.resnet.family",
    "vgg": "isoflop.models.resnet.family",
}
_REGISTERED: dict[str, "Family"] = {}


@dataclasses.dataclass(frozen=True)
class Family:
  """What the trainer needs from a model family. ``cfg`` is an instance of ``config_class``."""

  name: str
  config_class: type
  make_model: Callable[[Any], nn.Module]
  objectives: tuple[str, ...]  # the objectives (``models/objectives``) it can serve
  unit: str  # what FLOPs are counted per: "token" or "example"
  # (cfg, padded=False) -> {embedding, non_embedding, head, total, active, ...}
  param_counts: Callable[..., dict[str, int]]
  n_by_convention: Callable[[Any], dict[str, int]]
  # (cfg, seq_len) -> analytic training FLOPs per unit under each convention it defines; an
  # objective with a second stream (span corruption's targets) adds ``target_len=``
  flops_per_unit: Callable[[Any, int], dict[str, float]]
  # (cfg, remat: bool, seq_len) -> cfg with every loop XLA would count once unrolled (and,
  # with remat=False, without rematerialization)
  for_cost_analysis: Callable[[Any, bool, int], Any]
  # (model fields from the run config, run config) -> cfg; fills derived defaults and checks
  from_run_config: Callable[[dict[str, Any], Any], Any]
  # (cfg, roles, optimizer name) -> a tree of learning-rate multipliers, or None (plain)
  lr_multipliers: Callable[[Any, Any, str], Any] = lambda cfg, roles, optimizer: None
  # (base cfg, aspect_ratio=, head_size=) -> configs of growing size for the sweep shape rule
  shape_candidates: Callable[..., Any] | None = None
  # (cfg) -> {config key: value}: the run-config overrides that select this shape in a sweep
  shape_overrides: Callable[[Any], dict[str, Any]] | None = None
  # (cfg, the data source's description, examples per data-parallel device) -> None; raises
  # a one-line ValueError when the data does not fit the model (an image's shape or channels,
  # labels beyond the classes, a BatchNorm over one example)
  check_data: Callable[[Any, dict[str, Any], int], None] | None = None


def register(family: Family) -> Family:
  _REGISTERED[family.name] = family
  return family


def names() -> list[str]:
  return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str) -> Family:
  """The family called ``name``, or a one-line ValueError listing the known ones."""
  if name not in _REGISTERED and name in _BUILTIN:
    importlib.import_module(_BUILTIN[name])  # registers itself
  if name not in _REGISTERED:
    raise ValueError(f"unknown model.family {name!r}; choose one of {names()}")
  return _REGISTERED[name]


def model_fields(config) -> dict[str, Any]:
  """The run config's model keys without ``family`` (the family's config dataclass fields)."""
  fields = config.model.to_dict()
  fields.pop("family", None)
  return fields


def family_of(config) -> Family:
  return get(config.model.get("family", DEFAULT))


def field_default(family_name: str, field: str) -> Any:
  """The default of a field of the family's config dataclass; KeyError if it has none."""
  for f in dataclasses.fields(get(family_name).config_class):
    if f.name == field and f.default is not dataclasses.MISSING:
      return f.default
  raise KeyError(field)


def model_config(config) -> Any:
  """The family's model config of a run config, checked: unknown keys name the family."""
  family = family_of(config)
  fields = model_fields(config)
  known = {f.name for f in dataclasses.fields(family.config_class)}
  unknown = set(fields) - known
  if unknown:
    raise ValueError(f"unknown model keys {sorted(unknown)} for model.family="
                     f"{family.name!r}; its keys are {sorted(known)}")
  return family.from_run_config(fields, config)
