"""Every parameter's role, derived from its logical axis names alone.

Weight decay, the µP learning-rate table, per-layer norms (and later pruning and quantization)
all ask this one labeller, so a new family gets them right by naming its axes.

Roles:
  embedding  a lookup table: its first axis is indexed by a token (``vocab``), a position
             (``length``), a relative-position bucket or a token type; a tied table is also
             the readout, and keeps this role
  readout    a matrix whose output axis (the last) is ``vocab``: the untied output layer
  hidden     any other matrix: two or more feature dimensions
  vector     one feature dimension: a bias or a norm scale

Axes in STACK_AXES (the scanned layer axis) hold independent copies and are not feature
dimensions: a ``(layers, embed)`` norm scale is a stacked vector. Axes in COPY_AXES (experts)
are copies too, except as the last axis: an expert kernel ``(expert, embed, mlp)`` is a
hidden matrix, an expert bias ``(expert, mlp)`` a vector, a router ``(embed, expert)`` a matrix. Axes in JOINED_AXES continue
the dimension before them: an attention bias ``(heads, kv)`` is one feature dimension of
heads x head_dim, i.e. a vector, while a query kernel ``(embed, heads, kv)`` is a matrix.
"""

import dataclasses
from typing import Any, Sequence

import jax
from jax.sharding import PartitionSpec

EMBEDDING, READOUT, HIDDEN, VECTOR = "embedding", "readout", "hidden", "vector"
KINDS = (EMBEDDING, READOUT, HIDDEN, VECTOR)
STACK_AXES = ("layers",)
COPY_AXES = ("expert",)  # independent copies (experts), unless last (a router's output)
JOINED_AXES = ("kv", "gate")  # a head's own axis, an LSTM's gates: joined to the axis before
# A table indexed by tokens, positions, relative-position buckets (T5) or token types (BERT).
LOOKUP_AXES = ("vocab", "length", "position_buckets", "token_types")


@dataclasses.dataclass(frozen=True)
class Role:
  kind: str  # one of KINDS
  stacked: bool  # the leading axis is a scanned layer axis (one slice per layer)

  @property
  def decays(self) -> bool:
    """Weight decay and L1/L2 penalties apply to matrices, not to biases and norm scales."""
    return self.kind != VECTOR


def role_of(names: Sequence[str | None]) -> Role:
  """The role of a parameter whose dimensions carry these logical axis names."""
  names = tuple(names)
  if not names or any(name is None for name in names):
    raise ValueError(f"a parameter with logical axes {names} has an unnamed dimension; give "
                     "every dimension a logical axis name (nn.with_logical_partitioning)")
  stacked = names[0] in STACK_AXES
  features = [name for i, name in enumerate(names) if name not in STACK_AXES
              and not (name in COPY_AXES and i < len(names) - 1)]
  if len(features) >= 2 and features[0] in LOOKUP_AXES:  # a (vocab,) output bias is a vector
    return Role(EMBEDDING, stacked)
  if len(features) >= 2 and features[-1] == "vocab":
    return Role(READOUT, stacked)
  dimensions = sum(1 for i, name in enumerate(features)
                   if not (name in JOINED_AXES and i > 0))
  return Role(HIDDEN if dimensions >= 2 else VECTOR, stacked)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def label(param_specs: Any) -> Any:
  """A tree like the parameters of Roles, from their tree of logical PartitionSpecs (what
  ``nn.get_partition_spec`` gives for Flax-boxed parameters)."""

  def one(path, spec):
    try:
      return role_of(tuple(spec))
    except ValueError as e:
      name = jax.tree_util.keystr(path, simple=True, separator="/")
      raise ValueError(f"{name}: {e}") from None

  return jax.tree_util.tree_map_with_path(one, param_specs, is_leaf=_is_spec)


def _is_role(x) -> bool:
  return isinstance(x, Role)


def decay_mask(roles: Any) -> Any:
  """True where weight decay (and L1/L2 penalties) apply."""
  return jax.tree.map(lambda r: r.decays, roles, is_leaf=_is_role)


def stacked(roles: Any) -> Any:
  """True where the leading axis is a scanned layer axis."""
  return jax.tree.map(lambda r: r.stacked, roles, is_leaf=_is_role)


def kinds(roles: Any) -> Any:
  return jax.tree.map(lambda r: r.kind, roles, is_leaf=_is_role)


def matrix_axes(names: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """A matrix parameter's dimensions split into (copies, inputs, outputs), by index.

  Copies are the leading STACK_AXES and non-final COPY_AXES (one matrix per layer, per
  expert). Outputs are the trailing axes up to and including the first, from the right, not in
  JOINED_AXES: ``(embed, heads, kv)`` is embed | heads·kv, ``(heads, kv, embed)`` heads·kv |
  embed, a conv kernel ``(height, width, channels_in, channels)`` h·w·c_in | channels. The
  inputs, flattened in order, are the matmul's contraction (what N:M groups run along)."""
  names = tuple(names)
  copies = 0
  while copies < len(names) - 1 and (names[copies] in STACK_AXES or names[copies] in COPY_AXES):
    copies += 1
  first_output = len(names) - 1
  while first_output > copies and names[first_output] in JOINED_AXES:
    first_output -= 1
  return (tuple(range(copies)), tuple(range(copies, first_output)),
          tuple(range(first_output, len(names))))
