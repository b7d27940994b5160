"""Runs that survive: kill -9 anywhere, SIGTERM, corrupt checkpoints, changed configs, a lost
config.json, another mesh, and non-finite losses; TensorBoard agreeing with metrics.jsonl."""

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from isoflop.experiments import cli
from isoflop.train import loop

# 120 steps of tiny on the Shakespeare text stream (mid-epoch), a checkpoint every 10: long
# enough to land kills in every phase.
RUN_FLAGS = ["--config=experiments/configs/tiny_shakespeare.py", "--config.steps=120",
             "--config.eval_every=0",
             "--config.checkpoint_every=10", "--config.log_every=5",
             "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def _start(workdir) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "isoflop.experiments.cli", "train",
                           f"--workdir={workdir}", *RUN_FLAGS], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(workdir) -> subprocess.CompletedProcess:
  process = _start(workdir)
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err
  return subprocess.CompletedProcess(process.args, 0, out, err)


def _final_params(workdir) -> list[np.ndarray]:
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
  return [np.asarray(x) for x in jax.tree.leaves(restored)]


def _rows(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_points(workdir) -> list[tuple[str, int]]:
  """(tag, step) of every scalar in <workdir>/tb, read back from the event files (TFRecords:
  8-byte length, 4-byte CRC, an Event proto, 4-byte CRC)."""
  from tensorboardX.proto import event_pb2
  points = []
  for path in sorted((workdir / "tb").iterdir()):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      points += [(value.tag, event.step) for value in event.summary.value]
      offset += 12 + length + 4
  return points


def _assert_tensorboard_matches_metrics(workdir):
  """Every number of metrics.jsonl is in TensorBoard once, and nothing else is."""
  expected = [(key, row["step"]) for row in _rows(workdir) for key, value in row.items()
              if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
  assert sorted(_tensorboard_points(workdir)) == sorted(expected)


def _wait_for(condition, process, timeout=300.0, poll_s=0.001) -> bool:
  """Polls ``condition``: every millisecond where a kill must land inside a short save, more
  slowly where it need not (each poll reads files, CPU the other test workers want)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    if process.poll() is not None:
      return False
    time.sleep(poll_s)
  return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _finish(workdir)
  return _final_params(workdir), _rows(workdir)


def _assert_same_run(workdir, reference):
  params, rows = reference
  for a, b in zip(_final_params(workdir), params):
    np.testing.assert_array_equal(a, b)
  got = _rows(workdir)
  assert [r["step"] for r in got] == [r["step"] for r in rows]  # none missing, none twice
  assert [r["loss"] for r in got] == [r["loss"] for r in rows]
  assert [r["loss_mean"] for r in got] == [r["loss_mean"] for r in rows]
  _assert_tensorboard_matches_metrics(workdir)


@pytest.mark.xdist_group("resume_reference")  # one worker builds the reference run
def test_kill_9_at_any_moment_resumes_bitwise(reference, tmp_path):
  workdir = tmp_path / "run"
  checkpoint_dir = workdir / "checkpoints"

  def saving():  # Orbax writes into a temporary directory until the save is complete
    return checkpoint_dir.exists() and any("tmp" in d for d in os.listdir(checkpoint_dir))

  def rows_at_least(n):
    return lambda: (workdir / "metrics.jsonl").exists() and \
        len(_rows_safely(workdir)) >= n

  kill_points = {
      "before the first checkpoint": lambda: (workdir / "config.json").exists() and not (
          checkpoint_dir.exists() and any(d.isdigit() for d in os.listdir(checkpoint_dir))),
      "during a save": saving,
      "between checkpoints": rows_at_least(random.Random(0).randint(4, 12)),
      "after a random delay": None,
  }
  killed = []
  for name, condition in kill_points.items():
    process = _start(workdir)
    if condition is None:
      time.sleep(random.Random(1).uniform(1.0, 6.0))
      hit = process.poll() is None
    else:
      hit = _wait_for(condition, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if hit:
      killed.append(name)
  print("killed:", killed)
  assert len(killed) >= 3, killed
  _finish(workdir)
  _assert_same_run(workdir, reference)


# The LSTM also prunes gradually across the kill: its masks must come back with the rest.
GRADUAL_PRUNING = ["--config.prune.method=gradual", "--config.prune.sparsity=0.5",
                   "--config.prune.start_step=4", "--config.prune.end_step=40",
                   "--config.prune.every=4"]
# The ViT trains quantization-aware (fake int4 weights, patch convolution included).
QAT_INT4 = ["--config.quant.bits=4", "--config.quant.mode=qat"]


@pytest.mark.parametrize("config_name, extra", [
    ("moe_tiny", []), ("lstm_tiny", GRADUAL_PRUNING), ("bert_tiny", []), ("t5_tiny", []),
    ("vit_tiny", QAT_INT4), ("resnet_tiny", [])], ids=[
        "moe_tiny", "lstm_tiny_gradual_pruning", "bert_tiny", "t5_tiny", "vit_tiny_qat_int4",
        "resnet_tiny"])
def test_other_families_resume_bitwise_after_kill_9(config_name, extra, tmp_path):
  """A routed decoder, an LSTM (pruned as it trains), a masked-LM encoder, a
  span-corruption encoder-decoder and a ViT (trained quantization-aware), killed after a checkpoint and restarted, end exactly where
  an uninterrupted run does. Processes of two devices, not eight: the same code path at a
  fraction of the CPU time (the reference is a process too: XLA's CPU numerics depend on the
  process's device count)."""
  flags = [f"--config=experiments/configs/{config_name}.py", "--config.steps=48",
           "--config.checkpoint_every=8", "--config.log_every=2", "--config.eval_every=0",
           "--config.optimizer.warmup_steps=4", *extra]
  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "isoflop.experiments.cli", "train", f"--workdir={workdir}",
             *flags]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
  past_a_checkpoint = lambda: len(_rows_safely(workdir)) >= 5 and any(
      d.isdigit() for d in os.listdir(workdir / "checkpoints"))
  assert _wait_for(past_a_checkpoint, process, poll_s=0.02), process.communicate()[1]
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
  finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=env)
  assert finished.returncode == 0, finished.stderr
  assert "resum" in finished.stderr + finished.stdout  # it did continue from a checkpoint
  reference = tmp_path / "reference"
  uninterrupted = subprocess.run([*command[:-len(flags) - 1], f"--workdir={reference}", *flags],
                                 cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert uninterrupted.returncode == 0, uninterrupted.stderr
  _assert_same_run(workdir, (_final_params(reference), _rows(reference)))
  if extra == QAT_INT4:
    assert json.loads((workdir / "config.json").read_text())["quant"]["bits"] == 4
  elif extra:  # the pruned fraction, as logged through the kill, reaches its target
    assert [r["sparsity"] for r in _rows(workdir)] == [r["sparsity"] for r in _rows(reference)]
    assert _rows(workdir)[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def _rows_safely(workdir):
  try:
    return [line for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
  except FileNotFoundError:
    return []


@pytest.mark.xdist_group("resume_reference")  # one worker builds the reference run
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_saves_exits_75_and_resumes_bitwise(reference, tmp_path, stop_signal):
  workdir = tmp_path / "run"
  process = _start(workdir)
  assert _wait_for(lambda: len(_rows_safely(workdir)) >= 3, process, poll_s=0.02)
  process.send_signal(stop_signal)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 75, err
  assert "rerun the same command to resume" in err
  saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert saved and saved[-1] < 120
  _finish(workdir)
  _assert_same_run(workdir, reference)


def _small(tiny_config, steps):
  # A constant schedule: a run extended from 4 to 8 steps then follows the 8-step run's lr.
  tiny_config.optimizer.schedule = "constant"
  tiny_config.steps = steps
  tiny_config.checkpoint_every = 2
  tiny_config.log_every = 2
  return tiny_config


def test_corrupt_checkpoint_is_skipped(tiny_config, tmp_path, capsys):
  uninterrupted = loop.train(_small(tiny_config, 10), str(tmp_path / "ref"), progress=False)
  workdir = tmp_path / "run"
  loop.train(_small(tiny_config, 8), str(workdir), progress=False)
  state_dir = workdir / "checkpoints" / "8" / "state"
  for path in state_dir.rglob("*"):  # cut every data file short, as a full disk might
    if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  resumed = loop.train(_small(tiny_config, 10), str(workdir), progress=False)
  assert "skipping checkpoint at step 8" in capsys.readouterr().out
  assert resumed.resumed_from == 6
  assert list((workdir / "corrupt_checkpoints").iterdir())
  for a, b in zip(jax.tree.leaves(resumed.state.params),
                  jax.tree.leaves(uninterrupted.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensorboard_has_each_step_once_after_a_resume(tiny_config, tmp_path):
  loop.train(_small(tiny_config, 8), str(tmp_path), progress=False)
  # As if killed after logging step 8 but before its checkpoint was complete.
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  resumed = loop.train(_small(tiny_config, 8), str(tmp_path), progress=False)
  assert resumed.resumed_from == 6 and [r["step"] for r in resumed.rows] == [8]
  assert [r["step"] for r in _rows(tmp_path)] == [2, 4, 6, 8]
  _assert_tensorboard_matches_metrics(tmp_path)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tb")] == ["tb"]


def test_checkpoints_without_config_json_are_refused_in_one_line(tmp_path, capsys):
  command = ["isoflop", "train", "--config=experiments/configs/tiny.py", f"--workdir={tmp_path}",
             "--config.steps=2", "--config.log_every=2", "--config.batch_size=8",
             "--config.seq_len=16", "--config.model.d_model=32", "--config.model.vocab_size=64",
             "--config.optimizer.warmup_steps=1"]
  assert cli.main(command) == 0
  (tmp_path / "config.json").unlink()

  def files():  # the workdir's lock file names its latest holder: not the run's data
    return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
  before = files()
  capsys.readouterr()
  assert cli.main(command) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("isoflop train: error: "), lines
  assert "holds checkpoints but no config.json" in lines[0]
  assert "restore config.json or use a new --workdir" in lines[0]
  assert files() == before


def test_changed_config_is_refused_and_nothing_is_touched(tiny_config, tmp_path):
  loop.train(_small(tiny_config, 4), str(tmp_path), progress=False)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  tiny_config.model.d_model = 48
  tiny_config.optimizer.lr = 1e-2
  with pytest.raises(ValueError, match=r"model\.d_model \(32 -> 48\), optimizer\.lr"):
    loop.train(tiny_config, str(tmp_path), progress=False)
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_safe_changes_are_allowed_and_recorded(tiny_config, tmp_path):
  loop.train(_small(tiny_config, 4), str(tmp_path), progress=False)
  tiny_config.steps = 6
  tiny_config.log_every = 3
  result = loop.train(tiny_config, str(tmp_path), progress=False)
  assert result.resumed_from == 4
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["resumes"][-1] == {"step": 4, "changed": {"log_every": [2, 3], "steps": [4, 6]}}


@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 4, 2)])
def test_restore_onto_another_mesh_reshards(tiny_config, tmp_path, mesh):
  tiny_config.mesh.update(data=2, fsdp=2, tensor=2)
  uninterrupted = loop.train(_small(tiny_config, 8), str(tmp_path / "ref"), progress=False)
  loop.train(_small(tiny_config, 4), str(tmp_path / "run"), progress=False)
  tiny_config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  resumed = loop.train(_small(tiny_config, 8), str(tmp_path / "run"), progress=False)
  assert resumed.resumed_from == 4
  kernel = resumed.state.params["layers"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.mesh.shape == {**dict(zip(("data", "fsdp", "tensor"), mesh)), "expert": 1}
  np.testing.assert_allclose([r["loss"] for r in resumed.rows],
                             [r["loss"] for r in uninterrupted.rows[2:]], rtol=1e-5)


def test_non_finite_loss_stops_and_keeps_good_checkpoints(tiny_config, tmp_path):
  c = _small(tiny_config, 40)
  c.log_every = 1
  # Plain SGD with an absurd peak learning rate, unclipped: diverges a few steps in.
  c.optimizer.update(name="sgd", lr=1e3, clip_norm=0.0, warmup_steps=20)
  with pytest.raises(loop.NonFiniteError, match=r"non-finite loss or gradient at step \d+"):
    loop.train(c, str(tmp_path), progress=False)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps, "no good checkpoint was kept"
  restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(steps[-1]) /
                                                "state")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))


def test_two_processes_match_one(tmp_path):
  """Each process reads only its rows of the text stream; together they are the batch."""
  flags = ["--config=experiments/configs/tiny.py", "--config.steps=12", "--config.log_every=3",
           "--config.optimizer.warmup_steps=4", "--config.data.source=shakespeare",
           "--config.checkpoint_every=6", "--config.mesh.data=2", "--config.mesh.fsdp=2",
           "--config.mesh.tensor=2"]
  port = random.Random(os.getpid()).randint(20000, 40000)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  processes = [subprocess.Popen(
      [sys.executable, "-m", "isoflop.experiments.cli", "train", f"--workdir={tmp_path}/multi",
       *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for p in processes:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
  single = subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", "train",
                           f"--workdir={tmp_path}/single", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr
  multi_rows, single_rows = _rows(tmp_path / "multi"), _rows(tmp_path / "single")
  assert [r["step"] for r in multi_rows] == [3, 6, 9, 12]  # only process 0 logs
  np.testing.assert_allclose([r["loss"] for r in multi_rows], [r["loss"] for r in single_rows],
                             rtol=1e-5)
  record = json.loads((tmp_path / "multi" / "config.json").read_text())
  assert record["devices"]["process_count"] == 2 and record["devices"]["count"] == 8
  assert sorted(int(d) for d in os.listdir(tmp_path / "multi" / "checkpoints")
                if d.isdigit()) == [6, 12]


def test_dry_run_reports_without_training(tmp_path):
  out = subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", "train",
                        "--config=experiments/configs/tiny.py", f"--workdir={tmp_path}",
                        "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "memory per device" in out.stdout and "FLOPs per step" in out.stdout
  report = json.loads((tmp_path / "dry_run.json").read_text())
  memory = report["memory_per_device_bytes"]
  assert memory["arguments"] > 0 and memory["temporaries"] >= 0
  assert report["flops_per_step"]["measured"] > 0
  assert report["param_counts"]["total"] == 120_576
  assert not (tmp_path / "metrics.jsonl").exists()
  assert not (tmp_path / "checkpoints").exists()


def test_keys_added_since_a_checkpoint_resume_only_at_their_old_behaviour():
  """A run recorded before model.family and the MoE keys existed resumes under today's config
  when those keys hold the values that behave as it did (the family's config defaults)."""
  from isoflop.experiments.configs import tiny
  from isoflop.train import resume_policy
  new = tiny.get_config().to_dict()
  old = json.loads(json.dumps(new))
  for key in ("family", "num_experts", "experts_per_token", "expert_d_ff", "router_z_loss"):
    del old["model"][key]
  changes = resume_policy.check_resumable(old, new, checkpoint_step=0)
  assert changes["model.family"] == [None, "decoder"]
  new["model"]["num_experts"] = 4
  with pytest.raises(ValueError, match="model.num_experts \\(None -> 4\\)"):
    resume_policy.check_resumable(old, new, checkpoint_step=0)
  # The blocks of objectives added since (masked_lm, span_corruption) are never read by a
  # causal-LM run; the run's own objective's keys stay guarded.
  new["model"]["num_experts"] = 0
  del old["masked_lm"], old["span_corruption"]
  new["masked_lm"]["mask_rate"] = 0.3
  assert "masked_lm.mask_rate" in resume_policy.check_resumable(old, new, checkpoint_step=0)
  masked = {**new, "task": "masked_lm"}
  with pytest.raises(ValueError, match="masked_lm.mask_rate \\(None -> 0.3\\)"):
    resume_policy.check_resumable({**old, "task": "masked_lm"}, masked, checkpoint_step=0)
