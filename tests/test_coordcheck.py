"""The coordinate check: flat under muP, growing logits under SP; and SP training bitwise
unchanged by the muP code and the activation probes."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from isoflop.experiments import cli, coordcheck
from isoflop.experiments.configs import coordcheck as coordcheck_config
from isoflop.experiments.configs import tiny
from isoflop.models import mup, transformer
from isoflop.train import build
from isoflop.train import state as state_lib

WIDTHS = (32, 64, 128, 256, 512)


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
  """The check at widths 32-512 (heads of 8) on one device, 2 seeds, 3 steps, one 8-token
  sequence: few tokens keep these small widths in the regime the width limit describes."""
  config = coordcheck_config.get_config()
  config.update(batch_size=1, seq_len=8)
  config.model.init_std = 0.05
  out = tmp_path_factory.mktemp("coordcheck")
  data = coordcheck.run(config, str(out), WIDTHS, seeds=2, steps=3, base_width=32, head_dim=8,
                        progress=False, devices=jax.devices()[:1])
  return data, out


def test_mup_is_flat_and_sp_logits_grow(tiny_check):
  data, out = tiny_check
  assert json.loads((out / "coordcheck.json").read_text()).keys() >= {"sp", "mup"}
  assert (out / "coordcheck_sp.png").stat().st_size > 0
  assert (out / "coordcheck_mup.png").stat().st_size > 0
  names = set(data["mup"])
  assert names == {"embedding", "block_0", "block_1", "attention_logits_0",
                   "attention_logits_1", "logits"}
  for name, entry in data["mup"].items():
    for kind in ("size", "change"):
      for step, slope in enumerate(entry[f"{kind}_slope"]):
        if slope is None:  # only where the quantity is exactly 0 at every width
          assert np.all(np.asarray(entry[kind][step]) == 0), (name, kind, step)
        else:
          assert abs(slope) <= coordcheck.FLAT, (name, kind, step, slope)
  assert data["summary"]["mup_flat"]
  # SP: the logits grow with width, at initialization and after every step.
  sp_logits = data["sp"]["logits"]["size_slope"]
  assert all(s > 0.4 for s in sp_logits), sp_logits
  # The zero readout: muP logits are exactly 0 before the first update, and nothing else has
  # a gradient at step 1, so hidden activations first move at step 2.
  assert data["mup"]["logits"]["size_slope"][0] is None
  assert data["mup"]["block_0"]["change_slope"][1] is None


def test_log_slope():
  widths = [64, 128, 256]
  assert coordcheck.log_slope(widths, [1.0, 2.0, 4.0]) == pytest.approx(1.0)
  assert coordcheck.log_slope(widths, [3.0, 3.0, 3.0]) == pytest.approx(0.0, abs=1e-12)
  assert coordcheck.log_slope(widths, [0.0, 0.0, 0.0]) is None


def test_bad_widths_are_one_line(capsys):
  code = cli.main(["isoflop", "coordcheck", "--config=experiments/configs/coordcheck.py",
                   "--out=/nonexistent/x", "--widths=64"])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "at least two distinct positive widths" in err


def _train_sp(steps: int = 3):
  config = tiny.get_config()
  config.update(batch_size=8, seq_len=16, steps=steps)
  config.optimizer.warmup_steps = 1
  prepared = build.prepare(config)
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes,
                                   jax.random.key(0),
                                   jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
    for step in range(steps):
      host = prepared.source.batch(np.arange(8) + 8 * step)
      batch = {k: jax.device_put(v, prepared.batch_shardings[k]) for k, v in host.items()}
      state, _ = prepared.compiled_step(state, batch)
  return jax.tree.map(np.asarray, state.params)


def test_sp_training_is_bitwise_unchanged_by_the_mup_code(monkeypatch):
  with_mup_code = _train_sp()
  # What SP computed before muP existed: the plain init std, jax's default 1/sqrt(d_head)
  # attention scale (scale=None), no output multiplier, no zero readout.
  monkeypatch.setattr(mup, "hidden_init_std", lambda cfg, std: std)
  monkeypatch.setattr(mup, "attention_scale", lambda cfg: None)
  monkeypatch.setattr(mup, "zero_readout", lambda cfg: False)
  monkeypatch.setattr(mup, "output_multiplier", lambda cfg: pytest.fail("multiplier under SP"))
  without = _train_sp()
  for a, b in zip(jax.tree.leaves(with_mup_code), jax.tree.leaves(without)):
    np.testing.assert_array_equal(a, b)


def test_probing_activations_does_not_change_the_logits():
  cfg = transformer.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                      n_kv_heads=2, max_len=8)
  model = transformer.Decoder(cfg)
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  params = model.init(jax.random.key(0), tokens)["params"]
  plain = model.apply({"params": params}, tokens)
  probed, variables = model.apply({"params": params}, tokens, mutable=["intermediates"])
  np.testing.assert_array_equal(plain, probed)
  acts = coordcheck.activations(variables["intermediates"])
  assert acts["attention_logits_1"].shape == (2, 4, 8, 8)  # batch, heads, query, key
  assert acts["block_0"].shape == (2, 8, 32)
  np.testing.assert_array_equal(acts["logits"], plain)


def test_one_seed_and_its_json(tmp_path):
  config = coordcheck_config.get_config()
  config.update(batch_size=1, seq_len=8)
  data = coordcheck.run(config, str(tmp_path), (16, 32), seeds=1, steps=1, base_width=16,
                        head_dim=8, progress=False, devices=jax.devices()[:1])
  saved = json.loads((tmp_path / "coordcheck.json").read_text())
  assert saved["widths"] == [16, 32] and saved["steps"] == [0, 1] and saved["seeds"] == [0]
  for parametrization in ("sp", "mup"):
    entry = saved[parametrization]["block_0"]
    assert len(entry["size_slope"]) == 2 and len(entry["size"]) == 2
    assert len(entry["size"][0]) == 2  # one seed-mean per width
  assert data["summary"]["sp_logits_size_slope"][0] > 0
