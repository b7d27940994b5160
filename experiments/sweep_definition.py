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
``overrides`` (nested like the config) apply to every member.
"""

import dataclasses
import importlib.util
import itertools
import math
import os
from typing import Any

import ml_collections

from isoflop.experiments import shapes
from isoflop.models import counting
from isoflop.train import causal_lm, resume_policy

KINDS = ("isoflop", "ladder", "grid")


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  overrides: dict[str, Any]  # dotted config key -> value
  budget: float | None  # the target compute of an isoflop member, FLOPs
  target_params: float | None
  branch_of: str | None = None  # the shared warmup-stable run this member decays from
  branch_step: int | None = None  # ... starting at this step of it
  is_stable_run: bool = False  # a WSD trunk: run first, not a point of the fits


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


def _sized_member(sweep, config, target: float, tokens: float | None, budget: float | None,
                  name: str, exclude: frozenset = frozenset()) -> Member:
  rule = sweep.shape
  base = causal_lm.decoder_config(config)
  model, n = shapes.shape_for(target, base, aspect_ratio=rule.aspect_ratio,
                              head_size=rule.head_size, convention=sweep.n_convention,
                              exclude=exclude)
  per_token = counting.flops_per_token(model, config.seq_len)[sweep.flop_convention]
  if budget is not None:
    tokens = budget / per_token
  tokens_per_step = config.batch_size * config.seq_len
  steps = max(int(round(tokens / tokens_per_step)), 1)
  overrides = {"model.d_model": model.d_model, "model.n_layers": model.n_layers,
               "model.n_heads": model.n_heads, "steps": steps}
  if model.n_kv_heads is not None:
    overrides["model.n_kv_heads"] = model.n_kv_heads
  if model.d_ff is not None:
    overrides["model.d_ff"] = model.d_ff
  if config.optimizer.warmup_steps > steps:
    overrides["optimizer.warmup_steps"] = steps // 10
  return Member(f"{name}_N{n:.3g}".replace("+", ""), overrides, budget, target)


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
      name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
      out.append(Member(name, overrides, None, None))
  return out


def members(sweep, config) -> list[Member]:
  """Expands the sweep into its members, in a stable order."""
  if sweep.kind == "grid":
    return _grid_members(sweep)
  if sweep.kind == "ladder":  # tokens_per_param may be one ratio or several
    ratios = sweep.tokens_per_param
    ratios = tuple(ratios) if isinstance(ratios, (tuple, list)) else (ratios,)
    out = [_sized_member(sweep, config, n, r * n, None, f"ladder_r{r:g}")
           for n in sweep.sizes for r in ratios]
    return wsd_branches(out, config) if sweep.get("wsd_branching") else out
  out = []
  for budget in sweep.budgets:
    optimum = math.sqrt(budget / (6 * sweep.tokens_per_param))
    half_span = math.log(sweep.size_span) / 2
    count = sweep.sizes_per_budget
    widths: set[int] = set()
    for i in range(count):
      target = optimum * math.exp(-half_span + 2 * half_span * i / max(count - 1, 1))
      member = _sized_member(sweep, config, target, None, budget, f"C{budget:.2g}",
                             exclude=frozenset(widths))
      widths.add(member.overrides["model.d_model"])
      out.append(member)
  out = sorted(out, key=lambda m: (m.budget, m.target_params, m.name))
  return wsd_branches(out, config) if sweep.get("wsd_branching") else out
