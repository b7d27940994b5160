"""The ``search`` sweep kind: hyperparameter search with Optuna, each trial an ordinary sweep
member (an ``isoflop train`` run in ``<sweep dir>/trialNNNN``) on any launcher.

A sweep file of kind ``search`` holds a ``search`` block:

  s.search.space = {"optimizer": {"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                  "warmup_steps": {"low": 0, "high": 40, "int": True}},
                    "model": {"activation": {"choices": ["gelu", "swiglu"]}}}
  s.search.trials = 16          # the budget in trials, and/or
  s.search.compute = None       # ... in FLOPs (members' C under ``flop_convention``)
  s.search.metric = "final_eval_loss"  # or final_train_loss; minimized
  s.search.sampler = "tpe"      # tpe (Optuna's TPESampler) | random
  s.search.seed = 0
  s.search.parallel = None      # trials run side by side (None: the launcher's slots)

The space is nested like the config; a leaf is a range (``low``, ``high``, optional ``log``
and ``int``) or a list of ``choices``. Trials are proposed in rounds of ``parallel`` (TPE
with the constant liar, so a round's trials differ), run, and told their metric; a member that
fails (a diverged run) is told as failed, which TPE leaves out. The study lives in
``<sweep dir>/study.journal`` (Optuna's journal storage), so rerunning the command resumes it:
finished trials are kept, trials a stopped driver left running are rerun (their members
resume from their checkpoints) and told, and a raised budget proposes more. A compute budget
stops proposing once the finished trials' compute reaches it (the last round may pass it).
Writes ``trials.csv`` (one row per trial: its parameters, value and state) and
``search.json`` (the best trial, its value and parameters, and the best value after each
trial).
"""

import math
import os
from typing import Any, Callable

from isoflop.experiments import sweep_definition
from isoflop.train import run_record

SAMPLERS = ("tpe", "random")
METRICS = ("final_eval_loss", "final_train_loss")
STUDY_FILE = "study.journal"


def _is_leaf(node: Any) -> bool:
  return isinstance(node, dict) and ("choices" in node or "low" in node or "high" in node)


def _leaves(node: Any, prefix: str = "") -> dict[str, dict]:
  """{dotted config key: range or choices} of the nested space."""
  if _is_leaf(node):
    return {prefix[:-1]: node}
  if not isinstance(node, dict):
    raise ValueError(f"search.space.{prefix[:-1]} must be a range ({{'low': ..., 'high': ...}})"
                     " or {'choices': [...]}, got " + repr(node))
  out = {}
  for key, child in node.items():
    out.update(_leaves(child, f"{prefix}{key}."))
  return out


def space(sweep, config) -> dict[str, Any]:
  """The search space as Optuna distributions by dotted config key; one-line ValueErrors for
  an empty space, a range with low > high, a log range not above 0, or a key not in the
  config."""
  import optuna

  block = sweep.get("search")
  raw = block.get("space") if block is not None else None
  leaves = _leaves(raw.to_dict() if hasattr(raw, "to_dict") else (raw or {}))
  if not leaves:
    raise ValueError("search.space is empty; give at least one config key with a range "
                     "({'low': ..., 'high': ...}) or {'choices': [...]}")
  out = {}
  for key, leaf in sorted(leaves.items()):
    sweep_definition.set_key(config.copy_and_resolve_references(), key, None)  # a config key?
    if "choices" in leaf:
      if not list(leaf["choices"]):
        raise ValueError(f"search.space.{key}.choices is empty; list at least one value")
      out[key] = optuna.distributions.CategoricalDistribution(list(leaf["choices"]))
      continue
    if "low" not in leaf or "high" not in leaf:
      raise ValueError(f"search.space.{key} needs both low and high")
    low, high, log = leaf["low"], leaf["high"], bool(leaf.get("log", False))
    if low > high:
      raise ValueError(f"search.space.{key} has low={low} > high={high}; swap them")
    if log and low <= 0:
      raise ValueError(f"search.space.{key} is a log range from low={low}; it must start "
                       "above 0")
    if leaf.get("int", False):
      out[key] = optuna.distributions.IntDistribution(int(low), int(high), log=log)
    else:
      out[key] = optuna.distributions.FloatDistribution(float(low), float(high), log=log)
  return out


def settings(sweep) -> dict[str, Any]:
  """The search block's budget and options, checked (one-line ValueErrors)."""
  block = sweep.get("search")
  if block is None:
    raise ValueError("a search sweep needs a search block (search.space, search.trials)")
  trials, compute = block.get("trials"), block.get("compute")
  if trials is None and compute is None:
    raise ValueError("search needs a budget: search.trials (a count) or search.compute (FLOPs)")
  if trials is not None and trials < 1:
    raise ValueError(f"search.trials={trials} must be at least 1")
  if compute is not None and not compute > 0:
    raise ValueError(f"search.compute={compute} must be > 0 FLOPs")
  metric = block.get("metric", "final_eval_loss")
  if metric not in METRICS:
    raise ValueError(f"search.metric={metric!r} is not one of {METRICS}")
  sampler = block.get("sampler", "tpe")
  if sampler not in SAMPLERS:
    raise ValueError(f"search.sampler={sampler!r} is not one of {SAMPLERS}")
  parallel = block.get("parallel")
  if parallel is not None and parallel < 1:
    raise ValueError(f"search.parallel={parallel} must be at least 1")
  return {"trials": trials, "compute": compute, "metric": metric, "sampler": sampler,
          "seed": int(block.get("seed", 0)), "parallel": parallel}


def check(sweep, config) -> None:
  settings(sweep)
  space(sweep, config)


def trial_name(number: int) -> str:
  return f"trial{number:04d}"


def _open_study(sweep_dir: str, options: dict[str, Any]):
  import optuna

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  backend = optuna.storages.journal.JournalFileBackend(os.path.join(sweep_dir, STUDY_FILE))
  if options["sampler"] == "tpe":
    sampler = optuna.samplers.TPESampler(seed=options["seed"], constant_liar=True)
  else:
    sampler = optuna.samplers.RandomSampler(seed=options["seed"])
  return optuna.create_study(study_name="search", direction="minimize", sampler=sampler,
                             storage=optuna.storages.JournalStorage(backend),
                             load_if_exists=True)


def _member(number: int, params: dict[str, Any]) -> sweep_definition.Member:
  return sweep_definition.Member(trial_name(number), dict(params), None, None)


def run(sweep, sweep_dir: str, config, run_members: Callable[[list, list], int],
        member_row: Callable[[Any], dict], slots: int) -> int:
  """Runs (or resumes) the search. ``run_members(round, listed)`` runs a round's members
  (resuming unfinished ones; ``listed``: every trial, for runs.csv) and returns the sweep's
  exit status; ``member_row(member)`` is its runs.csv
  row. Returns 0, or the stopped status (75) when a round was stopped."""
  import optuna

  options = settings(sweep)
  distributions = space(sweep, config)
  os.makedirs(sweep_dir, exist_ok=True)
  study = _open_study(sweep_dir, options)
  parallel = options["parallel"] or slots
  states = optuna.trial.TrialState
  members = {t.number: _member(t.number, t.params) for t in study.trials}
  conv = sweep.flop_convention

  def spent() -> float:
    total = 0.0
    for t in study.trials:
      if t.state in (states.COMPLETE, states.FAIL):
        value = member_row(members[t.number]).get(f"C_{conv}")
        total += 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)
    return total

  def budget_left() -> bool:
    if options["trials"] is not None and len(study.trials) >= options["trials"]:
      return False
    return options["compute"] is None or spent() < options["compute"]

  code = 0
  while True:
    # Trials a stopped driver left running come first; then new ones while the budget lasts.
    round_trials = [t.number for t in study.trials if t.state == states.RUNNING]
    while len(round_trials) < parallel and budget_left():
      trial = study.ask(distributions)
      members[trial.number] = _member(trial.number, trial.params)
      round_trials.append(trial.number)
    if not round_trials:
      break
    code = run_members([members[n] for n in round_trials], [members[n] for n in sorted(members)])
    if code == 75:  # stopped: the unfinished trials stay running, resumed by the next call
      break
    for number in round_trials:
      row = member_row(members[number])
      value = row.get(options["metric"])
      if row["status"] == "done" and value is not None and math.isfinite(value):
        study.tell(number, float(value))
      else:
        study.tell(number, state=states.FAIL)
  _write_results(sweep_dir, study, options, distributions)
  return code


def _write_results(sweep_dir: str, study, options: dict[str, Any], distributions) -> None:
  import optuna

  states = optuna.trial.TrialState
  rows, best_so_far, best = [], [], None
  for t in study.trials:
    rows.append({"trial": t.number, "name": trial_name(t.number), "state": t.state.name,
                 "value": t.value, **{k: t.params.get(k) for k in distributions}})
    if t.state == states.COMPLETE and (best is None or t.value < best.value):
      best = t
    best_so_far.append(None if best is None else best.value)
  import pandas as pd
  table = pd.DataFrame(rows, columns=["trial", "name", "state", "value", *distributions])
  path = os.path.join(sweep_dir, "trials.csv")
  table.to_csv(f"{path}.tmp", index=False)
  os.replace(f"{path}.tmp", path)
  summary = {"metric": options["metric"], "sampler": options["sampler"],
             "trials": len(rows), "complete": sum(r["state"] == "COMPLETE" for r in rows),
             "failed": sum(r["state"] == "FAIL" for r in rows),
             "best_trial": None if best is None else trial_name(best.number),
             "best_value": None if best is None else best.value,
             "best_params": None if best is None else best.params,
             "best_value_after_each_trial": best_so_far,
             "space": {k: repr(d) for k, d in distributions.items()}}
  run_record.write_json_atomically(os.path.join(sweep_dir, "search.json"), summary)
  if best is not None:
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best.params.items())
    print(f"search: best {options['metric']} {best.value:.4f} at {trial_name(best.number)} "
          f"({shown}) of {len(rows)} trials; {path}")


def describe(sweep, config) -> str:
  """What ``--dry_run`` says of a search: its space and budget (its members are proposed as it
  runs, so they cannot be listed ahead)."""
  options = settings(sweep)
  distributions = space(sweep, config)
  budget = " and ".join(part for part in (
      f"{options['trials']} trials" if options["trials"] is not None else "",
      f"{options['compute']:.3g} FLOPs" if options["compute"] is not None else "") if part)
  lines = [f"search ({options['sampler']}, minimizing {options['metric']}), budget {budget}:"]
  lines += [f"  {key}: {dist!r}" for key, dist in distributions.items()]
  return "\n".join(lines)

