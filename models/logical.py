"""Logical sharding constraints on activations that fail loudly on an unknown axis name.

Flax replicates a dimension whose logical name has no rule, silently; a new family's axis
(``expert``, say) would then run unsharded. Under a rules table (training) a name the table
does not mention is an error at trace time, i.e. when the step is built; without one (a
notebook) the constraint is a no-op, as Flax's is.
"""

from typing import Sequence

import flax.linen as nn
import jax


def missing_names(names: Sequence[str | None], rules) -> list[str]:
  """The logical names in ``names`` that the rules table does not mention."""
  known = {logical for logical, _ in rules}
  return [name for name in names if isinstance(name, str) and name not in known]


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  rules = nn.get_logical_axis_rules()
  if rules:
    missing = missing_names(names, rules)
    if missing:
      raise ValueError(
          f"logical axis {missing[0]!r} of an activation {names} has no rule in the sharding "
          f"rules table in use (it names {sorted({n for n, _ in rules})}); add a rule for it "
          "to the table chosen by mesh.rules in sharding/rules.py (None replicates it)")
  return nn.with_logical_constraint(x, names)
