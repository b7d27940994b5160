"""Optional Weights & Biases mirror of ``metrics.jsonl`` (``config.wandb.project`` turns it on).

One W&B run per workdir: its id is kept in ``<workdir>/wandb_run.json`` with the last step
sent, so a resumed run logs into the same W&B run and sends only rows after that step (W&B
cannot take back steps it already has; the replayed rows are the same computation). ``wandb``
is imported only when a project is set, so runs without it do not pay the import.
"""

import importlib.util
import json
import os
import secrets
from typing import Any

import numpy as np

MODES = ("online", "offline", "disabled")
RUN_FILE = "wandb_run.json"
SWEEP_ENV = "ISOFLOP_SWEEP_NAME"  # set by the sweep runner: the W&B group of its members
# What config.json says about the model's size and cost, shown in the W&B run's summary.
SUMMARY_KEYS = ("param_counts", "param_counts_padded", "n_params", "flops_per_token",
                "tokens_per_step", "flops_per_example", "examples_per_step", "ensemble")


def _settings(config) -> dict[str, Any]:
  """The ``wandb`` block of a config (a ConfigDict or the dict config.json holds); {} if absent."""
  block = config.get("wandb") if hasattr(config, "get") else None
  if block is None:
    return {}
  return dict(block.to_dict() if hasattr(block, "to_dict") else block)


def enabled(config) -> bool:
  settings = _settings(config)
  return bool(settings.get("project")) and settings.get("mode", "online") != "disabled"


def check_available(config) -> None:
  """A one-line ValueError for an unknown mode, or a project set without wandb installed.
  Cheap (nothing is imported): meant for the checks run before compilation."""
  settings = _settings(config)
  mode = settings.get("mode", "online")
  if mode not in MODES:
    raise ValueError(f"config.wandb.mode={mode!r} must be one of {', '.join(MODES)}")
  if enabled(config) and importlib.util.find_spec("wandb") is None:
    raise ValueError("config.wandb.project is set but the wandb package is not installed; "
                     "pip install 'isoflop[wandb]' or unset it")


def _number(value: Any) -> float | int | None:
  """A row's value as W&B takes it; None for what is not a number. metrics.jsonl spells
  non-finite floats as strings, which W&B can hold as floats again."""
  if isinstance(value, str):
    return float(value) if value in ("nan", "inf", "-inf") else None
  if value is None or isinstance(value, bool):
    return None
  value = np.asarray(value)
  if value.ndim != 0 or value.dtype.kind not in "iuf":
    return None
  return value.item()


def wandb_values(row: dict[str, Any]) -> dict[str, float | int]:
  """The numbers of a metrics row, without its step; a per-seed list becomes ``key/<seed>``."""
  values = {}
  for key, value in row.items():
    if key == "step":
      continue
    if isinstance(value, (list, tuple, np.ndarray)) and np.ndim(value) == 1:
      for seed, member in enumerate(value):
        number = _number(member)
        if number is not None:
          values[f"{key}/{seed}"] = number
    else:
      number = _number(value)
      if number is not None:
        values[key] = number
  return values


def _read_run_file(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class WandbRun:
  """The W&B run of one workdir. Process 0 only (MetricsLog is built on process 0 only)."""

  def __init__(self, workdir: str, record: dict[str, Any]):
    config = record["config"]
    check_available(config)
    import wandb  # here, not at module level: only runs that log to W&B pay for it
    settings = _settings(config)
    self._path = os.path.join(workdir, RUN_FILE)
    saved = _read_run_file(workdir)
    self._state = {"id": saved.get("id") or secrets.token_hex(6),
                   "last_step": int(saved.get("last_step", 0))}
    try:
      self._run = wandb.init(
          project=settings["project"], entity=settings.get("entity"),
          mode=settings.get("mode", "online"),
          group=settings.get("group") or os.environ.get(SWEEP_ENV) or None,
          name=settings.get("name") or os.path.basename(os.path.abspath(workdir)),
          id=self._state["id"], resume="allow", config=config,
          # The workdir keeps the W&B files with the run unless WANDB_DIR says otherwise.
          dir=os.environ.get("WANDB_DIR") or workdir)
    except wandb.errors.Error as error:  # no API key, no network: one line, not a traceback
      message = " ".join(str(error).split())
      raise ValueError(f"W&B could not start ({message}); run `wandb login`, or set "
                       "config.wandb.mode=offline and `wandb sync` later") from error
    # An online run resumed by W&B knows its own last step; trust whichever is further.
    if self._run.resumed:
      self._state["last_step"] = max(self._state["last_step"], self._run.starting_step - 1)
    self._resume_floor = self._state["last_step"]  # rows up to here are already in W&B
    self._run.summary.update({key: record[key] for key in SUMMARY_KEYS if key in record})
    self._run.summary["workdir"] = os.path.abspath(workdir)
    self._save_state()

  @property
  def run_id(self) -> str:
    return self._state["id"]

  def _save_state(self) -> None:
    tmp = f"{self._path}.tmp"  # then a rename: a kill leaves the old file or the new one
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self._state, f)
    os.replace(tmp, self._path)

  def log(self, row: dict[str, Any]) -> None:
    """Sends ``row`` unless W&B had its step before this session (a row replayed after a
    resume). Rows of one step (a training row and an eval row) are merged into one."""
    step = row["step"]
    if step <= self._resume_floor:
      return
    self._run.log(wandb_values(row), step=step)
    if step > self._state["last_step"]:
      self._state["last_step"] = step
      self._save_state()

  def close(self) -> None:
    self._run.finish()
