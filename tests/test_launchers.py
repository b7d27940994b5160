"""Sweep launchers for real on this machine: a local Ray cluster and submitit's local executor
(the Slurm code path without Slurm) run the same 4-member sweep as the local launcher; one
member is preempted mid-run (SIGTERM to its process), requeued and resumed, and every member's
losses equal the local launcher's bit for bit."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import submitit  # noqa: F401 - imported here: its log handler then binds the real stderr


from conftest import REPO
from isoflop.experiments import cli
from isoflop.train.data import token_cache

SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny.py"
  s.grid = {"steps": [20, 160], "optimizer": {"lr": [3e-3, 1e-2]}}
  s.overrides = {"batch_size": 8, "seq_len": 16, "log_every": 4, "eval_every": 0,
                 "checkpoint_every": 8, "model": {"d_model": 32},
                 "optimizer": {"warmup_steps": 2}}
  s.launcher = {"devices_per_member": 4, "ray": {"num_cpus": 1}}
  return s
"""
KILLED = "lr0.01_steps160"
TIMING_KEYS = {"tokens_per_s", "step_time_s", "wall_time_s", "examples_per_s", "energy_j",
               "mfu", "time_s", "data_wait_s"}


def _sweep(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "isoflop.experiments.cli", "sweep", *args],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def _losses(member_dir):
  """Each logged step's values but the timings (a resumed member logs the steps after its
  checkpoint again: the last row of a step is the one kept)."""
  rows = {}
  with open(os.path.join(member_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      rows[(row["step"], "loss" in row)] = {k: v for k, v in row.items()
                                            if k not in TIMING_KEYS and not k.endswith("_s")}
  return rows


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("sweepfile") / "four.py"
  path.write_text(SWEEP)
  return str(path)


@pytest.fixture(scope="module")
def local_reference(sweep_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local") / "sweep"
  out, err = _sweep(f"--sweep={sweep_file}", f"--workdir={workdir}", "--workers=2").communicate(
      timeout=600)
  assert "4/4 members done" in out, err
  return workdir


def _preempt_when_running(member_dir, deadline_s=400):
  """SIGTERMs the process that holds the member's lock once it has logged a step past its
  first checkpoint; returns the pid."""
  deadline = time.monotonic() + deadline_s
  metrics, lock = os.path.join(member_dir, "metrics.jsonl"), os.path.join(member_dir, ".lock")
  while time.monotonic() < deadline:
    try:
      with open(metrics, encoding="utf-8") as f:
        steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
      holder = open(lock, encoding="utf-8").read()
    except (OSError, ValueError):
      steps, holder = [], ""
    match = re.match(r"pid (\d+)", holder)
    if steps and max(steps) >= 12 and match:
      os.kill(int(match.group(1)), signal.SIGTERM)
      return int(match.group(1))
    time.sleep(0.02)
  raise AssertionError(f"{member_dir} never got past step 12")


@pytest.mark.xdist_group("launchers")  # one worker builds the local reference, once
@pytest.mark.parametrize("launcher", [["--launcher=ray"],
                                      ["--launcher=slurm", "--slurm.cluster=local"]],
                         ids=["ray", "slurm"])
def test_cluster_launcher_requeues_a_preempted_member_and_matches_local(
    launcher, sweep_file, local_reference, tmp_path):
  workdir = tmp_path / "sweep"
  process = _sweep(f"--sweep={sweep_file}", f"--workdir={workdir}", *launcher)
  _preempt_when_running(str(workdir / KILLED))
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  assert "4/4 members done" in out and f"{KILLED}: requeued 1 time" in out, out
  status = json.loads((workdir / KILLED / "status.json").read_text())
  assert status["status"] == "done" and status["requeues"] == 1
  assert "stopped by SIGTERM" in (workdir / KILLED / "train.log").read_text()
  for member in ("lr0.003_steps20", "lr0.003_steps160", "lr0.01_steps20", KILLED):
    assert _losses(workdir / member) == _losses(local_reference / member), member
  assert json.loads((workdir / "sweep.json").read_text())["launcher"] == launcher[0][11:]
  assert "running" in err and "queued" in err  # the progress lines, on a pipe


@pytest.mark.parametrize("args, message", [
    (["--launcher=kubernetes"], "unknown launcher 'kubernetes'; known launchers: local, ray, "
                                "slurm"),
    (["--launcher=ray", "--ray_address=127.0.0.1:9"], "no Ray cluster answers at 127.0.0.1:9"),
    (["--launcher=slurm"], "sbatch is not on the PATH"),
    (["--launcher=slurm", "--slurm.cluster=local", "--slurm.gpus_per_node=2"],
     "slurm.gpus_per_node=2 but this machine has 0 GPU"),
    (["--launcher=slurm", "--slurm.cluster=nowhere"], "unknown slurm.cluster 'nowhere'"),
    (["--launcher=ray", "--workers=2"], "--workers is for --launcher=local"),
    (["--launcher=ray", "--max_retries=-1"], "max_retries=-1 must be an integer >= 0"),
])
def test_bad_launcher_input_is_one_line_and_writes_nothing(args, message, sweep_file, tmp_path,
                                                           capsys):
  workdir = tmp_path / "sweep"
  code = cli.main(["isoflop", "sweep", f"--sweep={sweep_file}", f"--workdir={workdir}", *args])
  err = capsys.readouterr().err.strip()
  assert code == 2 and message in err and "\n" not in err, err
  assert not workdir.exists()


def test_ray_refuses_resources_the_cluster_lacks(sweep_file, tmp_path):
  workdir = tmp_path / "sweep"
  out, err = _sweep(f"--sweep={sweep_file}", f"--workdir={workdir}", "--launcher=ray",
                    "--ray.num_gpus=1").communicate(timeout=300)
  line = err.strip().splitlines()[-1]
  assert "the Ray cluster cannot run a member" in line and "GPU=1" in line, err
  assert not workdir.exists()


def test_token_cache_entries_built_at_once_by_several_members(tmp_path):
  entry = token_cache.entry_dir(str(tmp_path), "tokens", "same-key")
  arrays = {"train": np.arange(100_000, dtype=np.uint16)}
  errors = []

  def build():
    try:
      token_cache.store(entry, arrays, {"vocab_size": 7})
    except BaseException as e:  # noqa: BLE001 - collected for the assertion below
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert np.array_equal(token_cache.load(entry)["train"], arrays["train"])
  assert os.listdir(os.path.dirname(entry)) == ["same-key"]  # no temporaries left behind


def test_a_multi_host_member_runs_as_processes_joined_by_jax_distributed(tmp_path):
  """slurm.nodes=2 on submitit's local executor: two tasks of 2 CPU devices each, one run of
  4 devices (process 0 writes the workdir; process 1 only its log)."""
  path = tmp_path / "two_hosts.py"
  path.write_text(SWEEP.replace('"steps": [20, 160], ', "").replace(
      '"log_every": 4', '"log_every": 4, "steps": 20').replace(
      '"lr": [3e-3, 1e-2]', '"lr": [3e-3]').replace(
      '{"devices_per_member": 4, ', '{"devices_per_member": 2, "slurm": {"nodes": 2}, '))
  out, err = _sweep(f"--sweep={path}", f"--workdir={tmp_path}/s", "--launcher=slurm",
                    "--slurm.cluster=local").communicate(timeout=300)
  assert "1/1 members done" in out, err[-2000:]
  member = tmp_path / "s" / "lr0.003"
  devices = json.loads((member / "config.json").read_text())["devices"]
  assert devices["process_count"] == 2 and devices["count"] == 4
  assert (member / "train.1.log").exists()
