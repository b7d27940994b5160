"""Loss-spike rollback: a batch of noise makes the loss jump; the run records the spike with its
per-layer norms, rolls back to the checkpoint before it, skips the batches since, and resumes
bitwise; past the rollback limit the spike is only recorded."""

import json

import jax
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.experiments.configs import tiny_shakespeare
from isoflop.train import build, loop, spikes

BAD_POSITION = 25  # the stream position of the poisoned batch: training step 26 (1-based)


def _config(steps: int, max_rollbacks: int = 3):
  c = tiny_shakespeare.get_config()
  c.update(steps=steps, batch_size=8, seq_len=32, log_every=1, eval_every=0,
           checkpoint_every=10)
  c.model.d_model = 32
  c.optimizer.update(schedule="constant", warmup_steps=5, lr=3e-3)
  c.stability.update(spike_sigmas=6.0, spike_warmup_steps=10,
                     spike_max_rollbacks=max_rollbacks)
  return c


def _poisoned(config):
  """The run with the targets at stream position BAD_POSITION moved half the byte range away
  from the real next bytes: what the model predicts confidently is then wrong."""
  prepared = build.prepare(config)
  clean = prepared.source.batch

  def batch(indices):
    out = clean(indices)
    if any(int(i) // config.batch_size == BAD_POSITION for i in indices):
      out = {**out, "targets": (out["targets"] + 128) % 256}
    return out

  prepared.source.batch = batch
  return prepared


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_spike_rolls_back_skips_the_batches_and_resumes_bitwise(tmp_path):
  straight = loop.run(_poisoned(_config(40)), str(tmp_path / "straight"), progress=False)
  (event,) = spikes.read_events(str(tmp_path / "straight"))
  assert event["spike_step"] == BAD_POSITION + 1
  assert event["restored_step"] == 20 and event["skipped_batches"] == 6  # steps 21..26
  assert event["loss"] > event["mean"] + 6 * event["std"]
  assert any(name.startswith("grad_norm/layers/") for name in event["norms"])
  rows = _rows(tmp_path / "straight")
  (logged,) = [r for r in rows if "spike_step" in r]
  assert logged["step"] == 20 and logged["spike_loss"] == event["loss"]
  assert logged["skipped_batches"] == 6 and "spike_grad_norm/embed" in logged
  train = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, 41))  # each step once, after the rollback
  assert max(r["loss"] for r in train[10:]) < event["loss"]  # the spike is gone from the run

  # Stopped at step 30 (after the rollback) and resumed: the same run, bit for bit.
  loop.run(_poisoned(_config(30)), str(tmp_path / "resumed"), progress=False)
  resumed = loop.run(_poisoned(_config(40)), str(tmp_path / "resumed"), progress=False)
  assert resumed.resumed_from == 30
  for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(a, b)
  assert [r["loss"] for r in _rows(tmp_path / "resumed") if "loss" in r] == \
      [r["loss"] for r in train]


def test_past_the_rollback_limit_a_spike_is_only_recorded(tmp_path):
  loop.run(_poisoned(_config(30, max_rollbacks=0)), str(tmp_path / "run"), progress=False)
  (event,) = spikes.read_events(str(tmp_path / "run"))
  assert event["ignored"] and event["restored_step"] is None
  rows = _rows(tmp_path / "run")
  assert [r["step"] for r in rows if "spike_ignored" in r] == [BAD_POSITION + 1]
  assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))


def test_detector_ignores_a_falling_loss_and_calls_a_jump():
  detector = spikes.Detector(spikes.SpikeSettings(sigmas=6.0, min_relative=0.1, ema=0.9,
                                                  warmup_steps=5, max_rollbacks=1,
                                                  skip_extra=0))
  rng = np.random.default_rng(0)
  falling = 5.0 * np.exp(-np.arange(50) / 20) + 1 + 0.01 * rng.standard_normal(50)
  assert all(detector.check(float(x)) is None for x in falling)
  state = dict(detector.state)
  assert detector.check(float(falling[-1]) * 1.5) is not None
  assert detector.state == state  # the spike stays out of the estimates


@pytest.mark.parametrize("flag, message", [
    ("--config.stability.spike_sigmas=0", "stability.spike_sigmas=0.0 must be > 0"),
    ("--config.stability.spike_ema=1.5", "stability.spike_ema=1.5 must be in (0, 1)"),
])
def test_bad_spike_settings_are_one_line(flag, message, tmp_path, capsys):
  code = cli.main(["isoflop", "train", "--config=experiments/configs/tiny_shakespeare.py",
                   f"--workdir={tmp_path / 'run'}", "--config.stability.spike_sigmas=5", flag])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not (tmp_path / "run").exists()
