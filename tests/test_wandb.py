"""Weights & Biases logging, in W&B's offline mode (no network, no account).

The offline run is read back from the ``run-<id>.wandb`` file W&B writes: a LevelDB-style log
of protobuf records (W&B 0.31 writes no wandb-summary.json or config.yaml offline)."""

import glob
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import time

import pytest

from isoflop.train import loop, metrics_log, wandb_log

BLOCK_BYTES = 32768  # the log's block size; a record header never straddles a block
HEADER_BYTES = 7  # 4 crc, 2 length, 1 chunk type
FULL, LAST = 1, 4  # chunk types that complete a record


def _records(wandb_file: str):
  """The protobuf records of an offline run, in the order they were written."""
  from wandb.proto import wandb_internal_pb2
  with open(wandb_file, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", "not a W&B run file"
  records, position, pending = [], HEADER_BYTES, b""  # the file header is 7 bytes too
  while position + HEADER_BYTES <= len(data):
    left_in_block = BLOCK_BYTES - position % BLOCK_BYTES
    if left_in_block < HEADER_BYTES:  # padding at a block's end
      position += left_in_block
      continue
    _, length, chunk_type = struct.unpack("<IHB", data[position:position + HEADER_BYTES])
    if chunk_type == 0 and length == 0:  # zero fill
      position += left_in_block
      continue
    start = position + HEADER_BYTES
    pending += data[start:start + length]
    position = start + length
    if chunk_type in (FULL, LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def _items(updates) -> dict:
  return {item.key or "/".join(item.nested_key): json.loads(item.value_json)
          for item in updates}


def _offline_run(wandb_file: str) -> dict:
  """The run record (id, group, name, config), history rows by step, and the last summary
  value of each key that one offline session wrote."""
  records = _records(wandb_file)
  deadline = time.monotonic() + 60
  # W&B's service process writes the file; under load it may still be flushing after
  # finish() returns: read again until the run's exit record is there.
  while not any(r.WhichOneof("record_type") == "exit" for r in records):
    assert time.monotonic() < deadline, "the offline run file never got its exit record"
    time.sleep(0.5)
    records = _records(wandb_file)
  run, history, summary = None, {}, {}
  for record in records:
    kind = record.WhichOneof("record_type")
    if kind == "run":
      run = record.run
    elif kind == "history":
      row = _items(record.history.item)
      history[row["_step"]] = row
    elif kind == "summary":
      summary.update(_items(record.summary.update))
  return {"run": run, "config": _items(run.config.update), "history": history,
          "summary": summary}


def _metrics(workdir) -> dict[int, dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {row["step"]: row for row in rows}


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
  """W&B in offline mode, writing only under tmp_path; returns where its runs go."""
  files = tmp_path / "wandb_files"
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_DIR", str(files))
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
  monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
  return files / "wandb"


needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None,
    reason="wandb is not installed (pip install 'isoflop[test]' or 'isoflop[wandb]')")


@needs_wandb
def test_offline_run_has_rows_config_counts_and_resumes_into_the_same_run(
    tiny_config, tmp_path, offline_wandb, monkeypatch):
  monkeypatch.setenv(wandb_log.SWEEP_ENV, "my-sweep")
  workdir = tmp_path / "member-3"
  c = tiny_config
  c.checkpoint_every = 2
  c.wandb.update(project="isoflop-test", mode="offline")
  first = loop.train(c, str(workdir), progress=False)

  saved = json.loads((workdir / wandb_log.RUN_FILE).read_text())
  assert saved["last_step"] == 8
  (wandb_file,) = glob.glob(str(offline_wandb / "offline-run-*" / f"run-{saved['id']}.wandb"))
  logged = _offline_run(wandb_file)
  assert logged["run"].run_id == saved["id"]
  assert logged["run"].run_group == "my-sweep"  # from the environment: no config.wandb.group
  assert logged["run"].display_name == "member-3"
  assert logged["config"]["steps"] == 8 and logged["config"]["model"]["d_model"] == 32
  assert logged["config"]["wandb"]["project"] == "isoflop-test"
  metrics = _metrics(workdir)
  assert sorted(logged["history"]) == sorted(metrics) == [2, 4, 6, 8]
  for step, row in metrics.items():
    assert logged["history"][step]["loss"] == pytest.approx(row["loss"])
    assert logged["history"][step]["loss_mean"] == pytest.approx(row["loss_mean"])
  assert logged["summary"]["loss"] == pytest.approx(metrics[8]["loss"])
  assert logged["summary"]["n_params"] == first.record["n_params"]
  assert logged["summary"]["flops_per_token"] == pytest.approx(first.record["flops_per_token"])

  # As if killed after logging step 8 but before the checkpoints of steps 6 and 8 were
  # complete: the run resumes from 4, replays 6 and 8 (which W&B already has) and goes on.
  shutil.rmtree(workdir / "checkpoints" / "8")
  shutil.rmtree(workdir / "checkpoints" / "6")
  c.steps = 10
  resumed = loop.train(c, str(workdir), progress=False)
  assert resumed.resumed_from == 4 and [row["step"] for row in resumed.rows] == [6, 8, 10]

  assert json.loads((workdir / wandb_log.RUN_FILE).read_text()) == {"id": saved["id"],
                                                                    "last_step": 10}
  sessions = sorted(glob.glob(str(offline_wandb / "offline-run-*" / "run-*.wandb")))
  assert len(sessions) == 2 and all(saved["id"] in path for path in sessions)
  (later,) = [path for path in sessions if path != wandb_file]
  continued = _offline_run(later)
  assert continued["run"].run_id == saved["id"]
  assert sorted(continued["history"]) == [10]  # 6 and 8 are not sent twice
  assert continued["history"][10]["loss"] == pytest.approx(_metrics(workdir)[10]["loss"])
  assert continued["config"]["steps"] == 10


@needs_wandb
def test_turned_on_mid_run_it_sends_the_earlier_rows_and_takes_group_and_name_from_config(
    tmp_path, offline_wandb, monkeypatch):
  """MetricsLog alone (no training): a workdir whose metrics.jsonl holds steps 2 and 4 from
  before W&B was on, resumed at 4 with config.wandb.group and .name set."""
  monkeypatch.setenv(wandb_log.SWEEP_ENV, "my-sweep")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 5.0 - s / 2}) + "\n" for s in (2, 4, 6)))
  wandb_settings = {"project": "isoflop-test", "mode": "offline", "group": "mine",
                    "name": "first try", "entity": None}
  log = metrics_log.MetricsLog(str(workdir), resume_step=4, record={
      "config": {"steps": 6, "wandb": wandb_settings}, "n_params": {"total": 123}})
  log.write({"step": 6, "loss": 2.0, "loss_per_seed": [1.9, 2.1], "energy_j": None})
  log.close()

  (wandb_file,) = glob.glob(str(offline_wandb / "offline-run-*" / "run-*.wandb"))
  logged = _offline_run(wandb_file)
  assert (logged["run"].run_group, logged["run"].display_name) == ("mine", "first try")
  assert sorted(logged["history"]) == [2, 4, 6]  # the rows kept in metrics.jsonl, then 6
  assert logged["history"][2]["loss"] == 4.0
  assert logged["history"][6]["loss_per_seed/1"] == 2.1
  assert "energy_j" not in logged["history"][6]
  assert logged["summary"]["n_params"] == {"total": 123}


def test_without_a_project_wandb_is_not_imported(tmp_path):
  """MetricsLog with the default config (project None), in a fresh interpreter."""
  script = f"""
import sys
from isoflop.experiments.configs import base
from isoflop.train import metrics_log
log = metrics_log.MetricsLog({str(tmp_path)!r}, record={{"config": base.get_config().to_dict()}})
log.write({{"step": 1, "loss": 2.0}})
log.close()
assert "wandb" not in sys.modules, "wandb was imported"
"""
  subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
  assert not (tmp_path / wandb_log.RUN_FILE).exists()
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_a_project_without_wandb_installed_is_one_clear_error(tiny_config, monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
  wandb_log.check_available(tiny_config)  # no project: nothing needed
  tiny_config.wandb.project = "isoflop-test"
  with pytest.raises(ValueError) as error:
    wandb_log.check_available(tiny_config)
  assert str(error.value) == (
      "config.wandb.project is set but the wandb package is not installed; "
      "pip install 'isoflop[wandb]' or unset it")
  tiny_config.wandb.mode = "disabled"  # disabled needs no package either
  wandb_log.check_available(tiny_config)


def test_an_unknown_mode_is_refused(tiny_config):
  tiny_config.wandb.mode = "onlien"
  with pytest.raises(ValueError, match="config.wandb.mode='onlien' must be one of online"):
    wandb_log.check_available(tiny_config)


def test_rows_become_wandb_numbers():
  row = {"step": 4, "loss": 2.5, "loss_per_seed": [2.4, 2.6], "energy_j": None,
         "grad_norm": "nan", "tokens_seen": 512, "note": "text"}
  values = wandb_log.wandb_values(row)
  assert values.pop("grad_norm") != values.get("grad_norm")  # NaN, not the string "nan"
  assert values == {"loss": 2.5, "loss_per_seed/0": 2.4, "loss_per_seed/1": 2.6,
                    "tokens_seen": 512}
