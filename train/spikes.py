"""Loss-spike handling: detect a spike in the training loss, roll back to the last checkpoint
before it and skip the batches that led to it (as PaLM did: Chowdhery et al. 2022, Sec. 5.1).

The detector reads the per-step losses at each log interval (no extra host sync) and keeps an
exponential moving estimate (``stability.spike_ema``) of the loss's step-to-step noise. After
``spike_warmup_steps`` steps, a step whose loss exceeds the last good step's by more than
``spike_sigmas`` noise standard deviations and by more than ``spike_min_relative`` of it is a
spike (the spike itself does not enter the estimates). On a spike at step k the loop records
the event, with the per-layer norms of parameters, gradients and updates at step k, in
``<workdir>/spikes.json`` (written first: the durable record), deletes the checkpoints saved
after the newest one before k (step s; none: s = 0, a fresh start from the same
initialization),
resumes from s and skips the batches of steps s+1..k plus ``spike_skip_extra`` more: from step
s on, the data stream is read that many batches further on. The event is also a row of
``metrics.jsonl`` at step s (``spike_step``, ``spike_loss``, ``spike_mean`` (the last good
loss), ``spike_std``,
``skipped_batches``, ``spike_<norm name>``). After ``spike_max_rollbacks`` rollbacks a spike is
recorded (``spike_ignored``) and training goes on.

The skips are a function of ``spikes.json`` and the step, and the detector's estimates are
saved in every checkpoint, so a run resumed anywhere reads exactly the batches and detects
exactly the spikes the uninterrupted run would.
"""

import dataclasses
import json
import math
import os
from typing import Any

from isoflop.train import run_record

FILE = "spikes.json"


class Rollback(Exception):
  """Raised by the loop after recording a spike: resume from ``event["restored_step"]``."""

  def __init__(self, event: dict[str, Any]):
    super().__init__(f"loss spike at step {event['spike_step']}")
    self.event = event


@dataclasses.dataclass(frozen=True)
class SpikeSettings:
  sigmas: float
  min_relative: float
  ema: float
  warmup_steps: int
  max_rollbacks: int
  skip_extra: int


def settings_from_config(config) -> SpikeSettings | None:
  """None when ``stability.spike_sigmas`` is None (off); one-line ValueErrors otherwise."""
  block = config.get("stability")
  if block is None or block.get("spike_sigmas") is None:
    return None
  if not block.spike_sigmas > 0:
    raise ValueError(f"stability.spike_sigmas={block.spike_sigmas} must be > 0")
  if block.spike_min_relative < 0:
    raise ValueError(f"stability.spike_min_relative={block.spike_min_relative} must be >= 0")
  if not 0 < block.spike_ema < 1:
    raise ValueError(f"stability.spike_ema={block.spike_ema} must be in (0, 1)")
  for name in ("spike_warmup_steps", "spike_max_rollbacks", "spike_skip_extra"):
    if block[name] < 0:
      raise ValueError(f"stability.{name}={block[name]} must be >= 0")
  if config.ensemble > 1:
    raise ValueError("stability.spike_sigmas watches one model's loss; it cannot roll back "
                     f"one seed of ensemble={config.ensemble}; train the seeds separately")
  return SpikeSettings(float(block.spike_sigmas), float(block.spike_min_relative),
                       float(block.spike_ema), int(block.spike_warmup_steps),
                       int(block.spike_max_rollbacks), int(block.spike_skip_extra))


class Detector:
  """The loss's step-to-step noise and its last value; ``state`` is JSON (saved in
  checkpoints). The spread is estimated from successive differences (an exponential mean of
  (loss_t - loss_{t-1})^2 / 2), which a falling trend hardly inflates, unlike the spread about
  a running mean that lags it."""

  def __init__(self, settings: SpikeSettings, state: dict[str, float] | None = None):
    self.settings = settings
    self.state = dict(state or {"count": 0, "last": 0.0, "mean": 0.0, "var": 0.0})

  def check(self, loss: float) -> dict[str, float] | None:
    """Adds one step's loss; returns the spike's figures (``loss``, the last good loss as
    ``mean``, the noise's ``std``) when it is one (left out of the estimates), else None."""
    s, st = self.settings, self.state
    if not math.isfinite(loss):
      return None  # the loop's non-finite check stops such a run
    std = math.sqrt(st["var"])
    if (st["count"] >= max(s.warmup_steps, 2) and loss - st["last"] > s.sigmas * std
        and loss > (1 + s.min_relative) * st["last"]):
      return {"loss": loss, "mean": st["last"], "std": std}
    if st["count"]:
      st["var"] = s.ema * st["var"] + (1 - s.ema) * (loss - st["last"]) ** 2 / 2
      st["mean"] = s.ema * st["mean"] + (1 - s.ema) * loss
    else:
      st["mean"] = loss
    st["last"] = loss
    st["count"] += 1
    return None


def read_events(workdir: str) -> list[dict[str, Any]]:
  try:
    with open(os.path.join(workdir, FILE), encoding="utf-8") as f:
      return json.load(f)["events"]
  except FileNotFoundError:
    return []


def record(workdir: str, events: list[dict[str, Any]], event: dict[str, Any]) -> None:
  run_record.write_json_atomically(os.path.join(workdir, FILE), {"events": events + [event]})


def delete_abandoned(workdir: str, events: list[dict[str, Any]], checkpoints) -> None:
  """Deletes the checkpoints each rollback left behind it (saved after its restored step,
  before the rollback), once: marked done in spikes.json afterwards. A kill in between only
  repeats the deletion, of checkpoints that are gone."""
  pending = [e for e in rollbacks(events) if not e.get("checkpoints_deleted", True)]
  for event in pending:
    checkpoints.delete(event["abandoned_checkpoints"])
    event["checkpoints_deleted"] = True
  if pending:
    run_record.write_json_atomically(os.path.join(workdir, FILE), {"events": events})


def rollbacks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [e for e in events if e.get("restored_step") is not None]


def skipped_before(events: list[dict[str, Any]], step: int, *, inclusive: bool) -> int:
  """Batches skipped by rollbacks: training step t (0 based) reads stream position
  t + skipped_before(events, t, inclusive=True), counting the rollbacks that resumed at or
  before t. A checkpoint at step c records its position before any skip that starts at c
  (``inclusive=False``): the rollback to c had not happened when it was saved."""
  return sum(e["skipped_batches"] for e in rollbacks(events)
             if e["restored_step"] < step or (inclusive and e["restored_step"] == step))


def event_row(event: dict[str, Any]) -> dict[str, Any]:
  """The metrics.jsonl row of a rollback, at the step training resumed from."""
  row = {"step": event["restored_step"], "spike_step": event["spike_step"],
         "spike_loss": event["loss"], "spike_mean": event["mean"], "spike_std": event["std"],
         "skipped_batches": event["skipped_batches"]}
  row.update({f"spike_{name}": value for name, value in (event.get("norms") or {}).items()})
  return row
