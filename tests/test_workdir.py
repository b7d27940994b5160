"""Workdirs are safe: one process at a time (an OS lock that a kill -9 releases), unusable
paths refused in one line before any work, runs that cannot fit refused before writing, and a
signal during start-up exits at once with status 75 and nothing written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from isoflop.experiments import cli
from isoflop.train import hardware, workdir

TINY = "--config=experiments/configs/tiny.py"


def _one_error_line(capsys) -> str:
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  return lines[0]


def test_second_run_on_a_locked_workdir_is_refused_and_touches_nothing(tmp_path, capsys):
  run_dir = tmp_path / "run"
  with workdir.Lock(str(run_dir)):
    (run_dir / "config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert cli.main(["isoflop", "train", TINY, f"--workdir={run_dir}"]) == 2
    line = _one_error_line(capsys)
    assert f"pid {os.getpid()} on host" in line and "in use by another isoflop process" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    sweep_dir = tmp_path / "sweep"
    with workdir.Lock(str(sweep_dir)):
      assert cli.main(["isoflop", "sweep", "--sweep=experiments/sweeps/shakespeare_isoflop.py",
                       f"--workdir={sweep_dir}"]) == 2
      assert "in use by another isoflop process" in _one_error_line(capsys)
      assert [p.name for p in sweep_dir.iterdir()] == [workdir.LOCK_NAME]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from isoflop.train import workdir; "
       f"workdir.Lock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
       "time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    assert workdir.try_lock(str(tmp_path)) is None
    assert f"pid {holder.pid}" in workdir.holder(str(tmp_path))
  finally:
    holder.kill()  # SIGKILL: no cleanup runs in the holder
    holder.wait()
  lock = workdir.try_lock(str(tmp_path))
  assert lock is not None and workdir.holder(str(tmp_path)) is not None
  lock.release()
  assert workdir.holder(str(tmp_path)) is None


def test_an_inherited_lock_is_taken_over_only_for_its_own_directory(tmp_path, monkeypatch):
  member = str(tmp_path / "member")
  held = workdir.Lock(member).acquire()
  with pytest.raises(workdir.Busy):
    workdir.Lock(member).acquire()
  monkeypatch.setenv(workdir.INHERITED_LOCK_ENV, str(held.fd))
  other = workdir.Lock(str(tmp_path / "other")).acquire()  # not the passed lock's directory
  assert other.fd != held.fd and os.environ[workdir.INHERITED_LOCK_ENV] == str(held.fd)
  taken = workdir.Lock(member).acquire()  # a launcher passed this one: taken over
  assert taken.fd == held.fd and workdir.INHERITED_LOCK_ENV not in os.environ
  other.release()
  held.release()


UNUSABLE = {
    "train": lambda p: ["train", TINY, f"--workdir={p}"],
    "train_dry_run": lambda p: ["train", TINY, f"--workdir={p}", "--dry_run"],
    "sweep": lambda p: ["sweep", "--sweep=experiments/sweeps/shakespeare_isoflop.py",
                        f"--workdir={p}"],
    "bench": lambda p: ["bench", TINY, f"--out={p}/bench.json", "--steps=2"],
    "coordcheck": lambda p: ["coordcheck", "--config=experiments/configs/coordcheck.py",
                             f"--out={p}"],
}


@pytest.mark.parametrize("subcommand", sorted(UNUSABLE))
@pytest.mark.parametrize("problem", ["existing_file", "under_a_file", "read_only"])
def test_unusable_output_paths_are_one_line_before_any_work(subcommand, problem, tmp_path,
                                                            capsys, monkeypatch):
  blocker = tmp_path / "blocker"
  blocker.write_text("keep me")
  if problem == "existing_file":
    path = blocker
  elif problem == "under_a_file":
    path = blocker / "sub"
  else:  # as a read-only filesystem answers (root ignores chmod, so ask os.access)
    path = tmp_path / "ro" / "sub"
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(
        str(tmp_path / "ro")) else real_access(p, mode, **kw))
  start = time.perf_counter()
  assert cli.main(["isoflop", *UNUSABLE[subcommand](path)]) == 2
  line = _one_error_line(capsys)
  assert str(path) in line and ("not a directory" in line or "is a file" in line
                                or "not writable" in line), line
  assert time.perf_counter() - start < 10  # refused before compiling anything
  assert blocker.read_text() == "keep me"
  assert not (tmp_path / "ro" / "sub").exists()


def test_a_run_that_cannot_fit_is_refused_before_writing(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(hardware, "memory_limit_bytes", lambda devices: (4096, "a tiny device"))
  run_dir = tmp_path / "run"
  assert cli.main(["isoflop", "train", TINY, f"--workdir={run_dir}"]) == 2
  line = _one_error_line(capsys)
  assert "GiB per device but a device has 0.00 GiB (a tiny device)" in line
  assert not run_dir.exists()
  assert cli.main(["isoflop", "train", TINY, f"--workdir={run_dir}", "--dry_run"]) == 0
  assert "does not fit" in capsys.readouterr().out
  fit = json.loads((run_dir / "dry_run.json").read_text())["memory_fit"]
  assert fit["fits"] is False and fit["needed_bytes_per_device"] > 4096


def _signal_during_start_up(tmp_path, delay_s, stop_signal):
  run_dir = tmp_path / "run"
  process = subprocess.Popen(
      [sys.executable, "-m", "isoflop.experiments.cli", "train", TINY, f"--workdir={run_dir}",
       "--config.steps=400"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  time.sleep(delay_s)
  started = time.perf_counter()
  process.send_signal(stop_signal)
  _, err = process.communicate(timeout=120)
  return process.returncode, err, time.perf_counter() - started, run_dir


# Moments of start-up on a 2-core machine: importing, building data and the mesh, compiling.
@pytest.mark.parametrize("delay_s, stop_signal", [(0.4, signal.SIGINT), (1.5, signal.SIGTERM),
                                                  (3.0, signal.SIGINT), (5.0, signal.SIGINT)])
def test_a_signal_during_start_up_exits_75_at_once(tmp_path, delay_s, stop_signal):
  code, err, exit_s, run_dir = _signal_during_start_up(tmp_path, delay_s, stop_signal)
  assert code == 75, err
  assert "Traceback" not in err and "Segmentation" not in err
  name = signal.Signals(stop_signal).name
  if "during start-up" in err:  # the common case: nothing was written
    assert f"stopped by {name} during start-up" in err.strip().splitlines()[-1]
    assert exit_s < 5
    assert not run_dir.exists()
  else:  # training had begun on a fast machine: the usual stop with a checkpoint
    assert f"stopped by {name}" in err and "checkpoint" in err


GRID_SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny.py"
  s.grid = {"optimizer": {"lr": (1e-3, 2e-3)}}
  s.overrides = {"batch_size": 8, "seq_len": 32, "steps": 30, "log_every": 10,
                 "eval_every": 0, "optimizer": {"warmup_steps": 2}}
  return s
"""


def test_a_sweep_skips_members_another_process_is_running(tmp_path, capsys):
  path = tmp_path / "grid.py"
  path.write_text(GRID_SWEEP)
  sweep_dir = tmp_path / "sweep"
  held = [workdir.Lock(str(sweep_dir / name)).acquire() for name in ("lr0.001", "lr0.002")]
  try:
    assert cli.main(["isoflop", "sweep", f"--sweep={path}", f"--workdir={sweep_dir}"]) == 1
  finally:
    for lock in held:
      lock.release()
  out = capsys.readouterr().out
  assert "0/2 members done" in out
  assert f"lr0.001: skipped, being run by another process (pid {os.getpid()}" in out
  for name in ("lr0.001", "lr0.002"):  # neither started nor marked failed
    assert sorted(p.name for p in (sweep_dir / name).iterdir()) == [workdir.LOCK_NAME]
