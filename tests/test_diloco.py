"""DiLoCo: one inner step between outer SGD steps of lr 1 is synchronous data parallelism,
communication is counted once per outer step, the inner and outer states resume bitwise, and
bad settings are refused in one line."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.experiments.configs import tiny_shakespeare, vit_tiny
from isoflop.train import build, checkpointing, loop


def _decoder():
  c = tiny_shakespeare.get_config()
  c.update(steps=6, batch_size=16, seq_len=16, log_every=1, eval_every=0, checkpoint_every=3)
  c.model.d_model = 32
  return c


def _vit():
  c = vit_tiny.get_config()
  c.update(steps=6, batch_size=16, log_every=1, eval_every=0, checkpoint_every=3)
  c.model.update(d_model=16, n_layers=1, n_heads=2, dropout=0.0)
  return c


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("make_config", [_decoder, _vit], ids=["decoder", "vit"])
def test_one_inner_step_and_outer_sgd_of_lr_1_is_data_parallel(make_config, tmp_path):
  """Inner SGD from the global parameters on each replica's half of the batch, then the
  global parameters minus the mean change: the full batch's SGD step (equal halves)."""
  config = make_config()
  config.optimizer.update(name="sgd", lr=0.5, schedule="constant", warmup_steps=0,
                          weight_decay=0.0, clip_norm=0.0)
  parallel = loop.run(build.prepare(config), str(tmp_path / "dp"), progress=False)
  low = config.copy_and_resolve_references()
  low.diloco.update(replicas=2, inner_steps=1, outer_optimizer="sgd", outer_lr=1.0)
  replicas = loop.run(build.prepare(low), str(tmp_path / "diloco"), progress=False)
  for a, b in zip(jax.tree.leaves(parallel.state.params), jax.tree.leaves(replicas.state.params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)  # fp32 sums in another order
  params = json.loads((tmp_path / "dp" / "config.json").read_text())["param_counts_padded"]
  per_exchange = 2 * params["total"] * 4
  # Data parallel: 8 groups every step; DiLoCo: 2 replicas, here also every step.
  assert [r["comm_bytes"] for r in _rows(tmp_path / "dp")] == [
      s * 7 * per_exchange for s in range(1, 7)]
  assert [r["comm_bytes"] for r in _rows(tmp_path / "diloco")] == [
      s * per_exchange for s in range(1, 7)]


def test_inner_and_outer_states_resume_bitwise_and_sync_every_h_steps(tmp_path):
  config = _decoder()
  config.update(steps=8, checkpoint_every=4)
  config.optimizer.update(schedule="constant", warmup_steps=0)
  config.diloco.update(replicas=2, inner_steps=3)
  straight = loop.run(build.prepare(config), str(tmp_path / "straight"), progress=False)
  half = config.copy_and_resolve_references()
  half.steps = 4  # stopped between outer steps: the replicas have drifted apart
  stopped = loop.run(build.prepare(half), str(tmp_path / "resumed"), progress=False)
  replica_params = stopped.state.outer["replica_params"]
  assert not all(np.array_equal(p[0], p[1]) for p in jax.tree.leaves(replica_params))
  resumed = loop.run(build.prepare(config), str(tmp_path / "resumed"), progress=False)
  assert resumed.resumed_from == 4
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  # An outer step at 3 and 6: then every replica continues from the global parameters.
  for rows in (_rows(tmp_path / "straight"),):
    per_exchange = rows[2]["comm_bytes"]
    assert [r["comm_bytes"] for r in rows] == [0, 0] + [per_exchange] * 3 + [2 * per_exchange] * 3


@pytest.mark.parametrize("flags, message", [
    (["--config.diloco.replicas=0"], "must both be positive"),
    (["--config.diloco.replicas=2", "--config.diloco.inner_steps=0"], "must both be positive"),
    (["--config.diloco.replicas=3"], "diloco.replicas=3 does not divide the 8 devices"),
])
def test_bad_diloco_settings_are_one_line(flags, message, tmp_path, capsys):
  code = cli.main(["isoflop", "train", "--config=experiments/configs/tiny.py",
                   f"--workdir={tmp_path / 'run'}", *flags])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_the_outer_field_restores(tiny_config, tmp_path):
  """Train states gained ``outer`` (empty outside DiLoCo): older checkpoints lack it and must
  still restore, not be quarantined as corrupt."""
  prepared = build.prepare(tiny_config)
  state = loop.run(prepared, str(tmp_path / "run"), progress=False).state
  older = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "outer"}
  saver = checkpointing.Checkpoints(str(tmp_path / "older"), keep=None)
  saver.save(8, older, {"next_index": 64})
  saver.close()
  reader = checkpointing.Checkpoints(str(tmp_path / "older"), keep=None)
  step, restored, data = reader.restore_latest(prepared.abstract_state)
  reader.close()
  assert step == 8 and data["next_index"] == 64 and restored.outer == {}
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(a, b)
