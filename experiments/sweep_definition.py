"""Sweep files: ``experiments/sweeps/<name>.py`` defines ``get_sweep()`` returning a
``ml_collections.ConfigDict``. This module loads one and expands it into members, each a
normal ``isoflop train`` run given by a base config file and ``--config.*`` overrides.

Kinds:
  isoflop  for each compute budget C (FLOPs under ``flop_convention``), ``sizes_per_budget``
           models log-spaced over ``size_span`` (a factor, 10 = a decade) around the expected
           optimum N* = sqrt(C / (6 * tokens_per_param)); tokens D = C / (FLOPs per token).
  ladder   models of the target sizes ``sizes``, each trained on tokens_per_param * N tokens
           (``tokens_per_param`` may list several ratios: one member per size and ratio).
With ``wsd_branching = True`` (and the WSD schedule), members that differ only in their
token budget branch their decays from one shared warmup-stable run.
  grid     the cartesian product of ``grid`` (config keys nested as in the config, each with a
           list of values) on the base config. Keys in ``zipped`` (nested the same way, lists of
           one length) advance together, as one more axis of the product: e.g. d_model with
           n_heads, so the head size stays fixed as the width grows.
  search   trials proposed by Optuna over the ``search.space`` ranges, run as members as the
           search goes (experiments/search.py).
``overrides`` (nested like the config) apply to every member.
``compression`` (isoflop and ladder sweeps; nested like the config, each key a list of values,
e.g. ``{"prune": {"sparsity": [0.0, 0.5, 0.75]}}``) crosses every sized member with the product
of those settings (sparsities, bit widths, ranks, a teacher): one loss-vs-size curve per
setting from one command. Each crossed member's name ends with its settings
(``ladder_r20_N1.2e+05_sparsity0.5``).

Grid members are named from their values, ``<key><value>`` joined by ``_`` with the key's last
part (``d_model64_n_heads4_lr0.001``): only ``[A-Za-z0-9._-]``, safe in shells and CSVs (other
characters become ``-``, and such a name gets a short hash of the value's repr).
``adopt_legacy_member_dirs`` renames directories of the old names (``d_model=64,lr=0.001``).

Checks (``check_members``, run by ``members``, so a sweep and its ``--dry_run`` both refuse):
every member must train at least ``min_steps`` steps (default 20) and more than its warmup
steps; its realized compute (isoflop) or tokens (ladder) must be within ``budget_tolerance``
(default 1.5) times its budget; its model within ``size_tolerance`` (default 3) times its
target size; and no two members may share a name or their overrides.
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import math
import os
import re
from typing import Any

import ml_collections

from isoflop.experiments import shapes
from isoflop.models import families, objectives
from isoflop.train import resume_policy

KINDS = ("isoflop", "ladder", "grid", "search")

# The checks' limits: sweep-file keys of these names, filled in by ``load``. Whole steps make
# a member miss its budget by at most half a step, so 1.5x is only exceeded by runs of a step
# or two; fewer than 20 steps leave no loss curve to speak of.
CHECK_DEFAULTS = {"budget_tolerance": 1.5, "size_tolerance": 3.0, "min_steps": 20}


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  overrides: dict[str, Any]  # dotted config key -> value
  budget: float | None  # the target compute of an isoflop member, FLOPs
  target_params: float | None
  branch_of: str | None = None  # the shared warmup-stable run this member decays from
  branch_step: int | None = None  # ... starting at this step of it
  is_stable_run: bool = False  # a WSD trunk: run first, not a point of the fits
  target_tokens: float | None = None  # the tokens a ladder member is meant to train on


def wsd_branches(members: list[Member], config) -> list[Member]:
  """Members that differ only in ``steps`` share one warmup-stable run (constant learning
  rate after the warmup) and branch their decays from its checkpoints (Hägele et al. 2024).

  A branch restored at step s = steps - decay_steps has seen exactly what its own WSD run
  would have (same warmup, the same constant rate until s, same data and RNG), so the result
  is the same as training it alone; only the trunk's compute is shared.
  """
  if config.optimizer.schedule != "wsd":
    raise ValueError("wsd_branching needs optimizer.schedule='wsd' in the base config or the "
                     "sweep's overrides")
  groups: dict[tuple, list[Member]] = {}
  for m in members:
    key = tuple(sorted((k, v) for k, v in m.overrides.items() if k != "steps"))
    groups.setdefault(key, []).append(m)
  out: list[Member] = []
  fraction = config.optimizer.decay_fraction
  for key, group in groups.items():
    if len(group) < 2:
      out.extend(group)
      continue
    overrides = dict(key)
    warmup = overrides.get("optimizer.warmup_steps", config.optimizer.warmup_steps)
    starts = {m.name: m.overrides["steps"] - max(int(round(fraction * m.overrides["steps"])), 1)
              for m in group}
    if min(starts.values()) < warmup:
      out.extend(group)  # a decay would start inside the warmup: train these alone
      continue
    trunk = (f"stable_d{overrides.get('model.d_model', 'x')}"
             f"_L{overrides.get('model.n_layers', 'x')}")
    out.append(Member(trunk, {**overrides, "steps": max(starts.values()),
                              "optimizer.schedule": "constant",
                              "checkpoint_steps": tuple(sorted(set(starts.values()))),
                              "checkpoint_every": 10 ** 9, "keep_checkpoints": len(group) + 1,
                              "eval_every": 0}, None, None, is_stable_run=True))
    out.extend(dataclasses.replace(m, branch_of=trunk, branch_step=starts[m.name])
               for m in group)
  return out


def load(path: str) -> ml_collections.ConfigDict:
  if not os.path.exists(path):
    raise ValueError(f"sweep file {path!r} not found; pass e.g. "
                     "--sweep=experiments/sweeps/shakespeare_isoflop.py")
  spec = importlib.util.spec_from_file_location("_isoflop_sweep_file", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the user's file failed to run: say where, not a traceback
    raise ValueError(f"sweep file {path} failed to load ({type(e).__name__}: {e})") from None
  if not callable(getattr(module, "get_sweep", None)):
    raise ValueError(f"sweep file {path} does not define get_sweep(); it must return an "
                     "ml_collections.ConfigDict (see experiments/sweeps/)")
  sweep = module.get_sweep()
  if not isinstance(sweep, ml_collections.ConfigDict) or sweep.get("kind") not in KINDS:
    raise ValueError(f"get_sweep() in {path} must return a ConfigDict whose 'kind' is one of "
                     f"{KINDS}")
  for key in ("n_convention", "flop_convention"):  # a grid sweep need not name them
    if key not in sweep:
      sweep[key] = "chinchilla"
  for key, value in CHECK_DEFAULTS.items():  # recorded in sweep.json as used
    if key not in sweep:
      sweep[key] = value
  return sweep


def base_config(sweep, sweep_path: str) -> ml_collections.ConfigDict:
  """The base config file (relative to the repository or the sweep file) with the sweep's
  shared overrides applied."""
  from isoflop.experiments import cli
  path = cli.resolve_config_path(sweep.config, relative_to=os.path.dirname(sweep_path))
  spec = importlib.util.spec_from_file_location("_isoflop_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in shared_overrides(sweep).items():
    set_key(config, key, value)
  return config


def shared_overrides(sweep) -> dict[str, Any]:
  """The sweep's ``overrides`` (nested like the config) as dotted keys."""
  overrides = sweep.get("overrides")
  return resume_policy.flatten(overrides.to_dict()) if overrides else {}


def set_key(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise ValueError(f"sweep override {dotted} is not a config key")
  node[leaf] = value


def resolved_config(config, member: Member) -> ml_collections.ConfigDict:
  """The config the member's run will use (the base config with its overrides)."""
  resolved = config.copy_and_resolve_references()
  for key, value in member.overrides.items():
    set_key(resolved, key, value)
  return resolved


def _stream_accounting(config, family, model) -> tuple[dict[str, float], int]:
  """(FLOPs per unit by convention, units per example) of a run config: ``seq_len`` tokens, an
  encoder-decoder objective's target tokens besides them, or one image."""
  if family.unit == "example":
    return family.flops_per_unit(model, config.seq_len), 1
  target_len = getattr(objectives.get(config.task)(config), "target_len", None)
  if target_len is None:
    return family.flops_per_unit(model, config.seq_len), config.seq_len
  return (family.flops_per_unit(model, config.seq_len, target_len=int(target_len)),
          config.seq_len + int(target_len))


def member_counts(sweep, config, member: Member) -> dict:
  """The member's steps, tokens D, N (under ``n_convention``) and compute C (FLOPs under
  ``flop_convention``), from the counters."""
  resolved = resolved_config(config, member)
  family = families.family_of(resolved)
  model = families.model_config(resolved)
  per_token, tokens_per_example = _stream_accounting(resolved, family, model)
  tokens = resolved.steps * resolved.batch_size * tokens_per_example
  return {"name": member.name, "steps": resolved.steps, "D": tokens,
          "N": family.n_by_convention(model)[sweep.n_convention],
          "C": per_token[sweep.flop_convention] * tokens,
          "warmup_steps": resolved.optimizer.warmup_steps}


def _check_limits(sweep) -> dict:
  limits = {key: sweep.get(key, default) for key, default in CHECK_DEFAULTS.items()}
  for key in ("budget_tolerance", "size_tolerance"):
    value = limits[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
      raise ValueError(f"the sweep's {key} must be a number >= 1 (a factor), got {value!r}")
  value = limits["min_steps"]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"the sweep's min_steps must be a whole number >= 1, got {value!r}")
  return limits


def _factor(realized: float, target: float) -> float:
  """How far apart two positive amounts are, as a factor >= 1."""
  return max(realized / target, target / realized)


# What to change, by kind of problem.
_ADVICE = {
    "short": "give members more steps (raise the budgets, sizes, tokens_per_param or steps, "
             "or lower batch_size or seq_len)",
    "warmup": "lower optimizer.warmup_steps or raise steps",
    "size": "aim at sizes the shape rule can build (raise the budgets or sizes, or change "
            "shape)",
    "repeated": "drop the budgets, sizes or grid values that repeat or give the same model",
}


def _steps(count: int) -> str:
  return f"{count} step{'' if count == 1 else 's'}"


def member_problems(sweep, config, members: list[Member]) -> dict[str, list[tuple[str, str]]]:
  """Why each member would not be a usable point: {name: [(kind, reason)]}, kind a key of
  ``_ADVICE``; members without a problem are left out. The limits are the sweep's
  ``CHECK_DEFAULTS`` keys."""
  limits = _check_limits(sweep)
  problems: dict[str, list[tuple[str, str]]] = {}
  names: set[str] = set()
  by_overrides: dict[tuple, str] = {}
  for m in members:
    reasons = []
    counts = member_counts(sweep, config, m)
    steps, warmup = counts["steps"], counts["warmup_steps"]
    if not m.is_stable_run:  # a WSD trunk is only the shared prefix of its branches
      if steps < limits["min_steps"]:
        reasons.append(("short", f"{_steps(steps)}, fewer than min_steps={limits['min_steps']}"))
      if warmup and steps <= warmup:
        reasons.append(("warmup", f"{_steps(steps)}, none after the {warmup} warmup steps"))
      if m.budget and _factor(counts["C"], m.budget) > limits["budget_tolerance"]:
        reasons.append(("short", f"{counts['C']:.3g} FLOPs for a budget of {m.budget:.3g} "
                                 f"({counts['C'] / m.budget:.3g}x)"))
      if m.target_tokens and _factor(counts["D"], m.target_tokens) > limits["budget_tolerance"]:
        reasons.append(("short", f"{counts['D']:,} tokens for a target of "
                                 f"{m.target_tokens:.3g} ({counts['D'] / m.target_tokens:.3g}x)"))
      if m.target_params and _factor(counts["N"], m.target_params) > limits["size_tolerance"]:
        reasons.append(("size", f"N={counts['N']:,} for a target of {m.target_params:.3g} "
                                f"({counts['N'] / m.target_params:.3g}x)"))
    # repr: grid values may be lists, which cannot be dictionary keys
    key = tuple(sorted((k, repr(v)) for k, v in m.overrides.items()))
    if key in by_overrides:
      reasons.append(("repeated", f"the same run as {by_overrides[key]}"))
    elif m.name in names:  # two runs would share one directory
      reasons.append(("repeated", "the same name, so the same directory, as another member"))
    by_overrides.setdefault(key, m.name)
    names.add(m.name)
    if reasons:
      problems.setdefault(m.name, []).extend(reasons)
  return problems


def check_members(sweep, config, members: list[Member]) -> None:
  """Refuses (one-line ValueError) a sweep with members too short to fit, far from their
  budget or target size, or repeated, naming the first few and what to change."""
  problems = member_problems(sweep, config, members)
  if not problems:
    return
  shown = [f"{name} ({', '.join(text for _, text in reasons)})"
           for name, reasons in list(problems.items())[:3]]
  more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
  kinds = {kind for reasons in problems.values() for kind, _ in reasons}
  advice = "; ".join(text for kind, text in _ADVICE.items() if kind in kinds)
  if kinds - {"repeated"}:
    advice += "; or loosen min_steps, budget_tolerance or size_tolerance in the sweep file"
  raise ValueError(f"{len(problems)} of {len(members)} sweep members would not be usable: "
                   f"{'; '.join(shown)}{more}. To fix: {advice}")


def _sized_member(sweep, config, target: float, tokens: float | None, budget: float | None,
                  name: str, exclude: frozenset = frozenset()) -> Member:
  rule = sweep.shape
  family = families.family_of(config)
  base = families.model_config(config)
  model, n = shapes.shape_for(target, base, aspect_ratio=rule.aspect_ratio,
                              head_size=rule.head_size, convention=sweep.n_convention,
                              exclude=exclude, family=family)
  per_token, tokens_per_example = _stream_accounting(config, family, model)
  per_token = per_token[sweep.flop_convention]
  if budget is not None:
    tokens = budget / per_token
  tokens_per_step = config.batch_size * tokens_per_example
  steps = max(int(round(tokens / tokens_per_step)), 1)
  overrides = {**family.shape_overrides(model), "steps": steps}
  if config.optimizer.warmup_steps > steps:
    overrides["optimizer.warmup_steps"] = steps // 10
  return Member(f"{name}_N{n:.3g}".replace("+", ""), overrides, budget, target,
                target_tokens=tokens if budget is None else None)


def _zipped_axis(sweep) -> list[dict[str, Any]]:
  """The ``zipped`` keys as one axis: a list of {key: value} with one entry per position."""
  zipped = resume_policy.flatten(sweep.zipped.to_dict()) if sweep.get("zipped") else {}
  if not zipped:
    return [{}]
  lengths = {k: len(v) for k, v in zipped.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"the lists in the sweep's zipped must have one length, got {lengths}; "
                     "give every zipped key one value per position")
  return [dict(zip(zipped, values)) for values in zip(*zipped.values())]


def _grid_members(sweep) -> list[Member]:
  grid = resume_policy.flatten(sweep.grid.to_dict())  # {"optimizer": {"lr": [...]}}
  keys = sorted(grid)
  out = []
  for together in _zipped_axis(sweep):
    for values in itertools.product(*(list(grid[k]) for k in keys)):
      overrides = {**together, **dict(zip(keys, values))}
      out.append(Member(grid_member_name(overrides), overrides, None, None))
  return out


_UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9._-]+")


def grid_member_name(overrides: dict[str, Any]) -> str:
  """``d_model64_n_heads4_lr0.001``: each key's last part and its value, in order, with only
  characters safe in shells, file names and CSVs. A key whose last part another key shares
  keeps its full dotted name; a value with other characters (a tuple, say) has them replaced
  by ``-`` and gets a short hash of its repr, so distinct values keep distinct names."""
  leaves = [key.split(".")[-1] for key in overrides]
  parts = []
  for key, leaf, value in zip(overrides, leaves, overrides.values()):
    text = f"{leaf if leaves.count(leaf) == 1 else key}{value}"
    safe = _UNSAFE_IN_NAMES.sub("-", text)
    if safe != text:
      safe = f"{safe.strip('-')}-{hashlib.sha1(repr(value).encode()).hexdigest()[:6]}"
    parts.append(safe)
  return "_".join(parts) or "base"  # an empty grid: one member, never the sweep dir itself


def legacy_grid_name(overrides: dict[str, Any]) -> str:
  """The name grid members had before ``grid_member_name`` (``d_model=64,lr=0.001``)."""
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())


def adopt_legacy_member_dirs(sweep_dir: str, sweep, members: list[Member]
                             ) -> list[tuple[str, str]]:
  """Renames grid members' directories under their old names (``legacy_grid_name``) to their
  current ones, so a sweep begun before the rename resumes instead of running every member
  again; returns the (old, new) names it renamed. Refuses when both directories exist."""
  if sweep.kind != "grid" or not os.path.isdir(sweep_dir):
    return []
  renamed = []
  for m in members:
    old, new = legacy_grid_name(m.overrides), m.name
    old_dir, new_dir = os.path.join(sweep_dir, old), os.path.join(sweep_dir, new)
    if old == new or not old or not os.path.isdir(old_dir):
      continue
    if os.path.exists(new_dir):
      raise ValueError(f"{sweep_dir} holds member {new} under both its old name {old!r} and "
                       f"its new one; move one of the two out of the sweep directory and rerun")
    os.rename(old_dir, new_dir)
    renamed.append((old, new))
  return renamed


def members(sweep, config) -> list[Member]:
  """Expands the sweep into its members, in a stable order; a ValueError if any of them
  fails ``check_members``."""
  out = _expanded_members(sweep, config)
  check_members(sweep, config, out)
  return out


def _crossed_with_compression(sweep, sized: list[Member]) -> list[Member]:
  """Every sized member once per combination of the sweep's ``compression`` settings."""
  grid = resume_policy.flatten(sweep.compression.to_dict()) if sweep.get("compression") else {}
  if not grid:
    return sized
  keys = sorted(grid)
  out = []
  for member in sized:
    for values in itertools.product(*(list(grid[k]) for k in keys)):
      settings = dict(zip(keys, values))
      out.append(dataclasses.replace(
          member, name=f"{member.name}_{grid_member_name(settings)}",
          overrides={**member.overrides, **settings}))
  return out


def _expanded_members(sweep, config) -> list[Member]:
  if sweep.kind == "grid":
    return _grid_members(sweep)
  if sweep.kind == "ladder":  # tokens_per_param may be one ratio or several
    ratios = sweep.tokens_per_param
    ratios = tuple(ratios) if isinstance(ratios, (tuple, list)) else (ratios,)
    out = [_sized_member(sweep, config, n, r * n, None, f"ladder_r{r:g}")
           for n in sweep.sizes for r in ratios]
    out = _crossed_with_compression(sweep, out)
    return wsd_branches(out, config) if sweep.get("wsd_branching") else out
  out = []
  for budget in sweep.budgets:
    optimum = math.sqrt(budget / (6 * sweep.tokens_per_param))
    half_span = math.log(sweep.size_span) / 2
    count = sweep.sizes_per_budget
    taken: set[tuple] = set()
    for i in range(count):
      target = optimum * math.exp(-half_span + 2 * half_span * i / max(count - 1, 1))
      member = _sized_member(sweep, config, target, None, budget, f"C{budget:.2g}",
                             exclude=frozenset(taken))
      taken.add(shapes.shape_key(member.overrides))
      out.append(member)
  out = sorted(_crossed_with_compression(sweep, out),
               key=lambda m: (m.budget, m.target_params, m.name))
  return wsd_branches(out, config) if sweep.get("wsd_branching") else out
