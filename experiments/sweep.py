"""``isoflop sweep``: run every member of a sweep, each a normal ``isoflop train`` run in its
own sub-workdir, and keep ``<workdir>/runs.csv`` up to date.

Members run on a launcher (experiments/launchers.py): local processes (``--workers=K`` runs K
at once, each bound to its own share of the devices), Ray tasks or Slurm jobs. Members come
from one queue, so no two slots run the same member. Rerunning the command skips finished
members and resumes interrupted ones (their own checkpoints); a member that exits with the
preemption status (75) is requeued at once, up to ``launcher.max_retries`` times. A failing
member is recorded (status ``failed``, its log in ``<member>/train.log``) and the sweep goes on.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from isoflop.experiments import cli, launchers, search, sweep_definition
from isoflop.models import conventions, families
from isoflop.train import preemption, run_record, wandb_log
from isoflop.train import workdir as workdir_lib

RUNS_COLUMNS = (["name", "workdir", "status", "budget", "target_params"]
                + [f"N_{c}" for c in conventions.N_CONVENTIONS] + ["D"]
                + [f"C_{c}" for c in conventions.ANALYTIC_FLOP_CONVENTIONS + ("measured",)]
                + ["final_train_loss", "final_eval_loss", "wall_time_s", "steps", "d_model",
                   "n_layers", "branched", "final_train_loss_std", "final_eval_loss_std",
                   "energy_j", "lr", "parametrization", "C_measured_model", "model_family",
                   "N_active", "N_active_non_embedding", "sparsity"]
                + [f"N_nonzero_{c}" for c in conventions.N_CONVENTIONS])


def _flag_value(value: Any) -> str:
  return repr(value) if isinstance(value, (float, tuple, list)) else str(value)


def member_args(config_path: str, member_dir: str, overrides: dict[str, Any]) -> list[str]:
  """The ``isoflop train`` arguments of one member. A None override (e.g. no teacher, next to a
  teacher, in a sweep's compression axis) keeps the config's own value, which for the optional
  keys is None: the command line has no spelling for None."""
  return [f"--config={config_path}", f"--workdir={member_dir}",
          *[f"--config.{k}={_flag_value(v)}" for k, v in overrides.items() if v is not None]]


def member_command(config_path: str, member_dir: str, overrides: dict[str, Any]) -> list[str]:
  return [sys.executable, "-m", "isoflop.experiments.cli", "train",
          *member_args(config_path, member_dir, overrides)]


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _metric_rows(member_dir: str) -> list[dict]:
  rows = []
  try:
    with open(os.path.join(member_dir, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass  # a row cut short by a kill
  except OSError:
    pass
  return rows


def member_status(member_dir: str) -> str:
  status = _read_json(os.path.join(member_dir, "status.json"))
  if status:
    return status["status"]
  return "interrupted" if os.path.isdir(os.path.join(member_dir, "checkpoints")) else "pending"


def runs_row(sweep_dir: str, member: sweep_definition.Member) -> dict[str, Any]:
  """One row of runs.csv, from what the member's run wrote."""
  member_dir = os.path.join(sweep_dir, member.name)
  row = dict.fromkeys(RUNS_COLUMNS)
  row.update(name=member.name, workdir=member.name, status=member_status(member_dir),
             budget=member.budget, target_params=member.target_params,
             branched=member.branch_of is not None)
  record = _read_json(os.path.join(member_dir, "config.json"))
  if record:
    steps = record["config"]["steps"]
    model = record["config"]["model"]
    # D counts the family's unit (tokens; examples for classifiers); C is per that unit.
    unit = record.get("unit", "token")
    tokens = steps * record[f"{unit}s_per_step"]
    counts = record["param_counts"]
    row.update(D=tokens, steps=steps, d_model=model.get("d_model"),
               n_layers=model.get("n_layers"), lr=record["config"]["optimizer"]["lr"],
               parametrization=model.get("parametrization"),
               model_family=record.get("model_family", families.DEFAULT),
               N_active=counts.get("active", counts["total"]),
               N_active_non_embedding=counts.get("active_non_embedding",
                                                 counts["non_embedding"]))
    # A pruned run's non-zero counts (its N for sparsity fits); a dense run's are its N.
    sparsity = record.get("sparsity") or {}
    row["sparsity"] = sparsity.get("sparsity", 0.0)
    for c in conventions.N_CONVENTIONS:
      row[f"N_{c}"] = record["n_params"][c]
      row[f"N_nonzero_{c}"] = sparsity.get("n_params_nonzero", record["n_params"])[c]
    for c, per_unit in record[f"flops_per_{unit}"].items():
      row[f"C_{c}"] = per_unit * tokens
  rows = _metric_rows(member_dir)
  train = [r for r in rows if "loss" in r]
  evals = [r for r in rows if "eval_loss" in r]
  # The mean training loss over the last log interval (one batch's loss in workdirs from
  # before loss_mean was logged); the held-out loss, where there is one, is final_eval_loss.
  train_key = "loss_mean" if train and "loss_mean" in train[-1] else "loss"
  row["final_train_loss"] = train[-1][train_key] if train else None
  row["final_eval_loss"] = evals[-1]["eval_loss"] if evals else None
  row["final_train_loss_std"] = train[-1].get(f"{train_key}_std") if train else None  # ensembles
  energies = [r.get("energy_j") for r in train]
  row["energy_j"] = sum(energies) if energies and None not in energies else None  # NVML only
  row["final_eval_loss_std"] = evals[-1].get("eval_loss_std") if evals else None
  status = _read_json(os.path.join(member_dir, "status.json")) or {}
  row["wall_time_s"] = status.get("wall_time_s")
  return row


def write_runs_csv(sweep_dir: str, members) -> pd.DataFrame:
  """One row per member (shared WSD trunks are not points of the fits and are left out)."""
  table = pd.DataFrame([runs_row(sweep_dir, m) for m in members if not m.is_stable_run],
                       columns=list(RUNS_COLUMNS))
  path = os.path.join(sweep_dir, "runs.csv")
  table.to_csv(f"{path}.tmp", index=False)
  os.replace(f"{path}.tmp", path)
  return table


def device_shares(workers: int) -> list[dict[str, str]]:
  """Environment for each worker: its own share of the devices, found without initializing
  an accelerator in this process (which would claim its memory)."""
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; d = jax.devices(); print(len(d), d[0].platform)"],
      capture_output=True, text=True, timeout=300)
  if probe.returncode:
    raise cli.UsageError(f"could not list the devices: {probe.stderr.strip()[-200:]}")
  count, platform = probe.stdout.split()[-2:]
  count = int(count)
  if platform == "cpu" and workers > count:
    count = workers  # CPU devices are threads on the host: one per worker
  if workers < 1 or workers > count or count % workers:
    devices = f"{count} {platform} device" + ("s" if count != 1 else "")
    raise cli.UsageError(f"--workers={workers} must divide the {devices}")
  per = count // workers
  shares = []
  for i in range(workers):
    env = dict(os.environ)
    if platform == "gpu":
      visible = env.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(count)))).split(",")
      env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i * per:(i + 1) * per])
    elif platform == "cpu":
      launchers.with_cpu_devices(env, per)
    elif workers > 1:
      raise cli.UsageError(f"--workers > 1 is not supported on {platform}; run one worker")
    shares.append(env)
  return shares


class _Progress:
  """One bar over the whole sweep, in training steps (its ETA), fed by the members' metrics
  files, with the members queued / running / done / failed on whichever launcher runs them."""

  def __init__(self, sweep_dir: str, members, steps: dict[str, int], enabled: bool):
    self._dir, self._members, self._steps = sweep_dir, members, steps
    total = sum(steps[m.name] - (m.branch_step or 0) for m in members)
    # A live bar on a terminal; redirected to a file, a line each time the counts change.
    self._lines = enabled and not sys.stderr.isatty()
    self._counts = None
    self._bar = tqdm(total=total, unit="step", disable=not enabled or self._lines,
                     dynamic_ncols=True, desc="sweep")

  def refresh(self, *, queued: int, running: int, done: int, failed: int) -> None:
    counts = dict(queued=queued, running=running, done=done, failed=failed)
    if self._lines:
      if counts != self._counts:
        self._counts = counts
        print(f"sweep: {done}/{len(self._members)} members done, {failed} failed, "
              f"{running} running, {queued} queued", file=sys.stderr, flush=True)
      return
    done_steps = 0
    for m in self._members:  # a branch only runs the steps after its branch point
      rows = [r for r in _metric_rows(os.path.join(self._dir, m.name)) if "loss" in r]
      last = min(rows[-1]["step"] if rows else 0, self._steps[m.name])
      done_steps += max(last - (m.branch_step or 0), 0)
    self._bar.n = done_steps
    self._bar.set_postfix(counts)
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


def run(sweep_path: str, sweep_dir: str, *, workers: int = 1, dry_run: bool = False,
        progress: bool = True, launcher: str = "local",
        launcher_flags: dict[str, Any] | None = None, topology: str | None = None) -> int:
  """Runs (or resumes) the sweep on ``launcher`` (local, ray or slurm; ``launcher_flags``
  are dotted launcher keys from the command line, over the sweep file's ``launcher`` block);
  returns the exit status (0 when every member is done)."""
  sweep = sweep_definition.load(sweep_path)
  block = sweep.get("launcher")
  spec = launchers.spec_from(launcher, block.to_dict() if block else None,
                             launcher_flags or {})
  if spec.name != "local" and workers != 1:
    raise cli.UsageError("--workers is for --launcher=local; on a cluster the engine runs "
                         "members side by side (limit them with --max_parallel)")
  config = sweep_definition.base_config(sweep, sweep_path)
  config_path = cli.resolve_config_path(sweep.config, os.path.dirname(sweep_path))
  searching = sweep.kind == "search"  # members proposed as it runs (experiments/search.py)
  if searching:
    search.check(sweep, config)
    if dry_run:
      print(search.describe(sweep, config))
      return 0
    members = []
  else:
    members = sweep_definition.members(sweep, config)
  shared = sweep_definition.shared_overrides(sweep)
  if dry_run and topology:  # each member compiled for a TPU slice: <sweep_dir or .>/plan.csv
    from isoflop.experiments import sweep_plan
    return sweep_plan.report(sweep, config, members, topology, sweep_dir or os.getcwd())
  if dry_run:
    from isoflop.experiments import sweep_estimate
    sweep_estimate.report(sweep, config, members, workers=workers)
    return 0
  sweep_lock = workdir_lib.Lock(sweep_dir)  # one driver per sweep directory
  try:
    sweep_lock.acquire()
  except workdir_lib.WorkdirError as e:
    raise cli.UsageError(str(e)) from None
  preemption.on_startup_exit(sweep_lock.remove_if_unused)
  try:
    for old, new in sweep_definition.adopt_legacy_member_dirs(sweep_dir, sweep, members):
      print(f"renamed member directory {old!r} to {new!r} (names safe in shells and CSVs)")
    engine = launchers.make(spec, sweep_dir, lambda: device_shares(workers))
    if searching:
      try:
        return search.run(
            sweep, sweep_dir, config,
            lambda trials, listed: _run_members(
                sweep, sweep_path, sweep_dir, config, config_path, trials, shared, engine,
                spec, progress, close_launcher=False, listed=listed),
            lambda member: runs_row(sweep_dir, member),
            slots=workers if spec.name == "local" else (spec.max_parallel or 4))
      finally:
        engine.close()
    return _run_members(sweep, sweep_path, sweep_dir, config, config_path, members, shared,
                        engine, spec, progress)
  except BaseException:
    sweep_lock.remove_if_unused()
    raise
  finally:
    sweep_lock.release()


def _run_members(sweep, sweep_path, sweep_dir, config, config_path, members, shared, launcher,
                 spec, progress, close_launcher: bool = True, listed=None) -> int:
  """Runs the members not done yet; ``listed`` (default: ``members``) are the members
  sweep.json and runs.csv list (a search's every trial, of which a round runs some)."""
  listed = members if listed is None else listed
  run_record.write_json_atomically(os.path.join(sweep_dir, "sweep.json"), {
      "sweep_file": os.path.abspath(sweep_path), "sweep": sweep.to_dict(),
      "config_file": os.path.abspath(config_path), "launcher": spec.name,
      "members": [{"name": m.name, "overrides": m.overrides} for m in listed]})
  steps = {m.name: int(m.overrides.get("steps", config.steps)) for m in members}
  todo = [m for m in members if member_status(os.path.join(sweep_dir, m.name)) != "done"]
  # Shared WSD trunks first: their checkpoints are where the branches start.
  phases = [[m for m in todo if m.is_stable_run], [m for m in todo if not m.is_stable_run]]
  tasks: queue.Queue = queue.Queue()
  lock = threading.Lock()
  running: dict[str, Any] = {}  # member -> the slot running it
  busy: dict[str, str] = {}  # members another launcher was running, and who
  requeues: dict[str, int] = {}
  stopping = threading.Event()
  absolute_config = os.path.abspath(config_path)

  def request_for(member) -> dict:
    member_dir = os.path.join(os.path.abspath(sweep_dir), member.name)
    overrides = {**shared, **member.overrides}
    if member.branch_of:
      overrides["init_from"] = os.path.join(os.path.abspath(sweep_dir), member.branch_of,
                                            "checkpoints", str(member.branch_step))
    return {"argv": member_args(absolute_config, member_dir, overrides), "workdir": member_dir,
            "log": os.path.join(member_dir, "train.log")}

  def work(slot) -> None:
    while not stopping.is_set():
      try:
        member = tasks.get_nowait()
      except queue.Empty:
        return
      request = request_for(member)
      member_dir = request["workdir"]
      os.makedirs(member_dir, exist_ok=True)
      previous = _read_json(os.path.join(member_dir, "status.json")) or {}
      start = time.perf_counter()
      with lock:
        running[member.name] = slot
      reply = slot.run(request)
      with lock:
        running.pop(member.name, None)
      if "busy" in reply:  # another launcher runs it: leave it (and its status) alone
        with lock:
          busy[member.name] = reply["busy"]
        continue
      code = reply["returncode"]
      requeue = False
      if code == 0:
        status = "done"
      elif code == preemption.EXIT_PREEMPTED or stopping.is_set():
        status = "interrupted"  # stopped by us or the scheduler: resumed from its checkpoint
        requeue = not stopping.is_set() and requeues.get(member.name, 0) < spec.max_retries
      else:
        status = "failed"
      run_record.write_json_atomically(os.path.join(member_dir, "status.json"), {
          "status": status, "returncode": code,
          "wall_time_s": previous.get("wall_time_s", 0.0) + reply.get(
              "run_s", time.perf_counter() - start),
          "requeues": previous.get("requeues", 0) + requeue, "log": request["log"],
          "engine_log": reply.get("engine_log"),
          "error": _last_error(member_dir) if status == "failed" else None})
      with lock:
        write_runs_csv(sweep_dir, listed)
        if requeue:
          requeues[member.name] = requeues.get(member.name, 0) + 1
          tasks.put(member)

  slots = launcher.slots(len(todo))
  bar = _Progress(sweep_dir, members, steps, progress)

  def refresh() -> None:
    statuses = {m.name: member_status(os.path.join(sweep_dir, m.name)) for m in members}
    with lock:
      in_flight = list(running)
    started = sum(workdir_lib.holder(os.path.join(sweep_dir, n)) is not None for n in in_flight)
    finished = [s for s in statuses.values() if s in ("done", "failed")]
    bar.refresh(queued=len(members) - len(finished) - started, running=started,
                done=finished.count("done"), failed=finished.count("failed"))

  try:
    with preemption.StopRequests() as stop:
      for phase in phases:
        for m in phase:
          tasks.put(m)
        if stop.received is None:
          launcher.submit_phase([request_for(m) for m in phase])
        threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in slots]
        for t in threads:
          t.start()
        while any(t.is_alive() for t in threads):
          if stop.received is not None and not stopping.is_set():
            stopping.set()  # members save a checkpoint and exit 75; rerun to resume
            with lock:
              for slot in running.values():
                slot.send_signal(stop.received)
          refresh()
          time.sleep(0.5)
  finally:
    for slot in slots:
      slot.close()
    if close_launcher:  # a search runs several rounds on one launcher
      launcher.close()
  table = write_runs_csv(sweep_dir, listed)
  _write_summary(sweep_dir, sweep, listed, table)
  refresh()
  bar.close()
  counts = table.status.value_counts().to_dict()
  done = counts.get("done", 0)
  trunks_done = all(member_status(os.path.join(sweep_dir, m.name)) == "done"
                    for m in members if m.is_stable_run)
  summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
  print(f"sweep {sweep_dir}: {done}/{len(table)} members done ({summary}); "
        f"{os.path.join(sweep_dir, 'runs.csv')}")
  for name in table[table.status == "failed"].name:
    status = _read_json(os.path.join(sweep_dir, name, "status.json")) or {}
    print(f"  {name}: failed (exit {status.get('returncode')}), log "
          f"{status.get('engine_log') or status.get('log')}")
  for name, count in requeues.items():
    print(f"  {name}: requeued {count} time(s) after a preemption")
  for name, holder in busy.items():
    print(f"  {name}: skipped, being run by another process ({holder})")
  if stopping.is_set():
    return preemption.EXIT_PREEMPTED
  return 0 if done == len(table) and trunks_done else 1


def _write_summary(sweep_dir: str, sweep, members, table: pd.DataFrame) -> dict:
  """``sweep_summary.json``: member counts and, with WSD branching, the compute it saved
  (the branches' shared prefixes, less the trunks that computed them once)."""
  conv = sweep.flop_convention
  saved = 0.0
  for m in members:
    record = _read_json(os.path.join(sweep_dir, m.name, "config.json"))
    if record is None:
      continue
    unit = record.get("unit", "token")
    per_step = record[f"flops_per_{unit}"][conv] * record[f"{unit}s_per_step"]
    if m.branch_of:
      saved += per_step * m.branch_step
    elif m.is_stable_run:
      saved -= per_step * record["config"]["steps"]
  total = pd.to_numeric(table[f"C_{conv}"], errors="coerce").sum()
  summary = {"members": len(table), "done": int((table.status == "done").sum()),
             "failed": int((table.status == "failed").sum()),
             "flop_convention": conv, "member_flops": float(total),
             "wsd_branching": {"branched_members": int(table.branched.sum()),
                               "saved_flops": saved,
                               "saved_fraction": saved / total if total else 0.0}}
  run_record.write_json_atomically(os.path.join(sweep_dir, "sweep_summary.json"), summary)
  if summary["wsd_branching"]["branched_members"]:
    print(f"WSD branching: {summary['wsd_branching']['branched_members']} members branched; "
          f"saved {saved:.3g} FLOPs ({summary['wsd_branching']['saved_fraction']:.0%} of the "
          "members' compute)")
  return summary


def _last_error(member_dir: str) -> str | None:
  try:
    with open(os.path.join(member_dir, "train.log"), encoding="utf-8") as f:
      lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines()]
  except OSError:
    return None
  errors = [line for line in lines if "error" in line.lower()]
  return (errors or [line for line in lines if line] or [None])[-1]
