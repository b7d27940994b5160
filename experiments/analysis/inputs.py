"""Points for the scaling fits, from a CSV of final points or from a sweep's workdir.

Units throughout: N in parameters, D in tokens, C in training FLOPs, loss in nats per token.
A sweep gives each run's D (tokens trained on) and C (under the chosen FLOP convention), so
C/D is its own FLOPs per token. A CSV with only one of D and C gets the other from C = 6 N D,
the only relation it allows.
"""

import dataclasses
import json
import os

import numpy as np
import pandas as pd

from isoflop.models import conventions

N_CONVENTIONS = conventions.N_CONVENTIONS
FLOP_CONVENTIONS = conventions.FLOP_CONVENTIONS
# Epoch AI's extraction of Hoffmann et al.'s Figure 4 names its columns this way.
REFERENCE_COLUMNS = {"Model Size": "N", "Training FLOP": "C"}
NO_CURVES = "needs training curves (a sweep workdir), not final points"
# How the points' C was obtained, as the figures' compute axes name it.
CSV_COMPUTE = "training compute C (FLOPs, the CSV's C column)"
CSV_SIX_N_D = "training compute C = 6 N D (FLOPs; the CSV gives D, not C)"
SWEEP_COMPUTE = "training compute C (FLOPs under the {} convention: runs.csv's C_{})"
GRID_SWEEP = ("{} is a grid sweep (sweep.json kind \"grid\"): its runs have no compute budgets "
              "to fit scaling laws to; for a learning rate x width grid run `isoflop transfer "
              "--workdir={} --out=DIR`")


def plural(count: int, noun: str) -> str:
  """`1 point`, `2 points`: the count with its noun in the right number."""
  return f"{count} {noun}{'' if count == 1 else 's'}"


class AnalysisInputError(ValueError):
  """Input the analysis cannot use; the message is the one line the user sees."""


class NotEnoughData(AnalysisInputError):
  """Too few points for one approach; the other approaches may still run."""


@dataclasses.dataclass(frozen=True)
class Curve:
  """One run's training curve: tokens seen and training loss per logged step."""
  name: str
  n: float  # parameters, under the analysis's N convention
  flops_per_token: float  # training FLOPs per token, under the analysis's FLOP convention
  tokens: np.ndarray
  loss: np.ndarray
  schedule: str | None = None  # learning-rate schedule, when config.json names it

  @property
  def flops(self) -> np.ndarray:
    return self.flops_per_token * self.tokens


@dataclasses.dataclass(frozen=True)
class Points:
  """Final points, one row per run: columns N, D, C, loss (and budget, name when known)."""
  table: pd.DataFrame
  source: str
  loss_column: str
  curves: tuple[Curve, ...] | None = None
  no_curves_reason: str = NO_CURVES
  compute_label: str = "training compute C (FLOPs)"  # what C is, for the figures' axes


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
  return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _check_positive(table: pd.DataFrame, raw: dict[str, pd.Series], labels: pd.Series,
                    source: str) -> None:
  """Raises naming the first row whose N, D, C, loss or budget is not a positive number."""
  for column in [c for c in ("N", "D", "C", "loss", "budget") if c in table]:
    bad = ~(np.isfinite(table[column]) & (table[column] > 0))
    if bad.any():
      first = bad.to_numpy().nonzero()[0][0]
      shown = raw[column].iloc[first] if column in raw else table[column].iloc[first]
      raise AnalysisInputError(
          f"{column} must be a positive finite number, but {labels.iloc[first]} of {source} "
          f"has {column} = {shown}; fix or remove that row")


def _complete(table: pd.DataFrame) -> pd.DataFrame:
  """Fills D or C from the other through C = 6 N D."""
  if "C" not in table:
    table["C"] = 6.0 * table["N"] * table["D"]
  if "D" not in table:
    table["D"] = table["C"] / (6.0 * table["N"])
  return table


def _read_csv(path: str, what: str) -> pd.DataFrame:
  try:
    frame = pd.read_csv(path)
  except FileNotFoundError:
    raise AnalysisInputError(f"{what} {path} not found") from None
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise AnalysisInputError(f"{what} {path} is not a readable CSV file: {reason}") from None
  frame.columns = [str(c).strip() for c in frame.columns]
  return frame


def from_csv(path: str) -> Points:
  """Reads columns N, loss, and D or C (or Epoch's `Model Size`, `Training FLOP`, `loss`)."""
  frame = _read_csv(path, "CSV file")
  frame = frame.rename(columns={k: v for k, v in REFERENCE_COLUMNS.items()
                                if k in frame and v not in frame})
  missing = [c for c in ("N", "loss") if c not in frame]
  if "D" not in frame and "C" not in frame:
    missing.append("D or C")
  if missing:
    raise AnalysisInputError(
        f"CSV file {path} lacks column(s) {', '.join(missing)}; it needs N (parameters), loss "
        f"(nats/token) and D (tokens) or C (FLOPs); found {', '.join(frame.columns) or 'none'}")
  columns = [c for c in ("N", "D", "C", "loss", "budget") if c in frame]
  table = pd.DataFrame({c: _numeric(frame, c) for c in columns})
  labels = pd.Series([f"line {i + 2}" for i in range(len(table))])
  _check_positive(table, {c: frame[c] for c in columns}, labels, path)
  compute_label = CSV_COMPUTE if "C" in table else CSV_SIX_N_D
  return Points(table=_complete(table), source=path, loss_column="loss",
                compute_label=compute_label)


def sweep_kind(workdir: str) -> str | None:
  """The `kind` that the sweep's sweep.json records (isoflop, ladder, grid), or None."""
  try:
    with open(os.path.join(workdir, "sweep.json"), encoding="utf-8") as f:
      kind = json.load(f)["sweep"]["kind"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return kind if isinstance(kind, str) else None


def _schedule(record: dict) -> str | None:
  """config.json's optimizer.schedule, or None where it names none (it only labels the fit)."""
  schedule = record
  for key in ("config", "optimizer", "schedule"):
    schedule = schedule.get(key) if isinstance(schedule, dict) else None
  return schedule if isinstance(schedule, str) else None


def _read_curve(run_dir: str, name: str, n: float, flop_convention: str) -> Curve:
  """One run's training rows from metrics.jsonl; raises NotEnoughData naming what is missing."""
  try:
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
      record = json.load(f)
    unit = record.get("unit", "token")  # per image for the vision families
    flops_per_token = float(record[f"flops_per_{unit}"][flop_convention])
    schedule = _schedule(record)
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        if line.strip():
          rows.append(json.loads(line))
    # Eval rows carry eval_loss and no loss.
    seen = f"{unit}s_seen"
    train = [(r[seen], r["loss"]) for r in rows if "loss" in r and seen in r]
    tokens, loss = np.asarray(train, dtype=float).reshape(-1, 2).T
  except (OSError, ValueError, KeyError, TypeError) as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise NotEnoughData(f"cannot read the training curve of run {name} in {run_dir} "
                        f"({type(e).__name__}: {reason})") from None
  keep = np.isfinite(tokens) & (tokens > 0) & np.isfinite(loss)
  if keep.sum() < 2 or not np.isfinite(flops_per_token) or flops_per_token <= 0:
    raise NotEnoughData(f"run {name} has fewer than 2 usable training rows in {run_dir}")
  order = np.argsort(tokens[keep])
  return Curve(name, n, flops_per_token, tokens[keep][order], loss[keep][order], schedule)


def from_sweep(workdir: str, n_convention: str = "chinchilla",
               flop_convention: str = "chinchilla") -> Points:
  """Reads `runs.csv` of a sweep: the rows with status done, under the given conventions."""
  if n_convention not in N_CONVENTIONS or flop_convention not in FLOP_CONVENTIONS:
    raise AnalysisInputError(f"unknown convention pair ({n_convention}, {flop_convention}); "
                             f"N: {N_CONVENTIONS}, FLOPs: {FLOP_CONVENTIONS}")
  path = os.path.join(workdir, "runs.csv")
  frame = _read_csv(path, "sweep table")
  if sweep_kind(workdir) == "grid":
    raise AnalysisInputError(GRID_SWEEP.format(workdir, workdir))
  n_column, c_column = f"N_{n_convention}", f"C_{flop_convention}"
  needed = ["name", "workdir", "status", n_column, "D", c_column, "final_train_loss"]
  missing = [c for c in needed if c not in frame]
  if missing:
    raise AnalysisInputError(f"sweep table {path} lacks column(s) {', '.join(missing)}")
  done = frame[frame["status"].astype(str).str.strip() == "done"].reset_index(drop=True)
  if done.empty:
    counts = frame["status"].astype(str).value_counts()
    found = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no rows"
    raise AnalysisInputError(f"no run in {path} has status done ({found})")
  eval_loss = _numeric(done, "final_eval_loss") if "final_eval_loss" in done else None
  use_eval = eval_loss is not None and bool(np.isfinite(eval_loss).all())
  loss_column = "final_eval_loss" if use_eval else "final_train_loss"
  table = pd.DataFrame({"N": _numeric(done, n_column), "D": _numeric(done, "D"),
                        "C": _numeric(done, c_column), "loss": _numeric(done, loss_column)})
  # Only isoflop members have a budget; a ladder's column is empty, and Approach 2 then
  # groups the runs by their C.
  if "budget" in done and _numeric(done, "budget").notna().any():
    table["budget"] = _numeric(done, "budget")
  labels = "run " + done["name"].astype(str)
  raw = {"N": done[n_column], "D": done["D"], "C": done[c_column], "loss": done[loss_column]}
  _check_positive(table, raw, labels, path)
  table["name"] = done["name"].astype(str)
  try:
    curves = tuple(_read_curve(os.path.join(workdir, str(run_dir)), name, float(n),
                               flop_convention)
                   for name, run_dir, n in zip(table["name"], done["workdir"], table["N"],
                                               strict=True))
  except NotEnoughData as e:
    curves, no_curves_reason = None, str(e)
  else:
    no_curves_reason = NO_CURVES
  return Points(table, workdir, loss_column, curves, no_curves_reason,
                SWEEP_COMPUTE.format(flop_convention, flop_convention))


def drop_highest_loss(points: Points, count: int) -> Points:
  """Drops the `count` rows with the highest loss (and their curves)."""
  if count <= 0:
    return points
  if count >= len(points.table):
    raise AnalysisInputError(f"--drop_highest_loss={count} would leave no point of "
                             f"{points.source}, which has {plural(len(points.table), 'point')}; "
                             "pass a smaller number")
  # A stable sort keeps the first of tied rows, so the choice does not depend on the platform.
  order = np.argsort(points.table["loss"].to_numpy(), kind="stable")
  table = points.table.iloc[np.sort(order[:-count])].reset_index(drop=True)
  curves = points.curves
  if curves is not None and "name" in table:
    kept = set(table["name"])
    curves = tuple(c for c in curves if c.name in kept)
  return dataclasses.replace(points, table=table, curves=curves)
