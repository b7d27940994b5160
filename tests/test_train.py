"""The trainer end to end, in-process on the 8 fake CPU devices."""

import json

import jax
import numpy as np
import pytest

from isoflop.models import conventions
from isoflop.train import loop

REQUIRED_ROW_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s",
                     "tokens_seen"}


def _losses(result):
  return np.array([row["loss"] for row in result.rows])


# Each family on a mesh that splits its parameters: its sharded parameter, that leaf's
# partition spec and the shape of one device's shard.
SHARDED_FAMILIES = {
    "decoder": ({"data": 2, "fsdp": 2, "tensor": 2}, ("layers", "attention", "query_kernel"),
                (None, "fsdp", "tensor", None), (2, 16, 2, 8)),
    "moe": ({"data": 2, "expert": 2, "tensor": 2}, ("layers", "moe", "wi"),
            (None, "expert", "fsdp", "tensor"), (2, 2, 32, 32)),
    "lstm": ({"data": 2, "fsdp": 2, "tensor": 2}, ("layer_1", "recurrent_kernel"),
             ("fsdp", "tensor", None), (16, 16, 4)),
    "encoder": ({"data": 2, "fsdp": 2, "tensor": 2}, ("layers", "attention", "query_kernel"),
                (None, "fsdp", "tensor", None), (2, 16, 2, 8)),
    "encdec": ({"data": 2, "fsdp": 2, "tensor": 2},
               ("decoder", "layers", "cross_attention", "query_kernel"),
               (None, "fsdp", "tensor", None), (2, 16, 2, 8)),
    "vit": ({"data": 4, "fsdp": 2, "tensor": 1}, ("layers", "attention", "query_kernel"),
            (None, "fsdp", "tensor", None), (2, 16, 4, 8)),
    # BatchNorm statistics over the global batch: the one jitted program synchronizes them.
    "resnet": ({"data": 2, "fsdp": 2, "tensor": 2}, ("stage2_block1", "conv2", "kernel"),
               (None, None, None, "fsdp"), (3, 3, 16, 8)),
}


def _family_config(c, family):
  if family == "moe":
    c.model.update(num_experts=4, experts_per_token=2, expert_d_ff=64)
  elif family == "lstm":
    from isoflop.experiments.configs import base
    from isoflop.models.lstm import LstmConfig
    c.model = base.family_model_block("lstm", LstmConfig, vocab_size=64, d_model=32,
                                      init_std=0.3)
    c.optimizer.lr = 1e-2
  elif family == "encoder":  # BERT-shaped, masked LM
    from isoflop.experiments.configs import base
    from isoflop.models.encoder import EncoderConfig
    c.task = "masked_lm"
    c.model = base.family_model_block("encoder", EncoderConfig, vocab_size=64, d_model=32,
                                      n_heads=4, n_kv_heads=2, tie_embeddings=False,
                                      type_vocab_size=2, max_len=None)
  elif family == "encdec":  # T5-shaped, span corruption
    from isoflop.experiments.configs import base
    from isoflop.models.encdec import EncDecConfig
    c.task = "span_corruption"
    c.span_corruption.num_sentinels = 4
    c.model = base.family_model_block("encdec", EncDecConfig, vocab_size=64, d_model=32,
                                      n_heads=4, tie_embeddings=False)
  elif family in ("vit", "resnet"):  # digits, image classification
    from isoflop.experiments.configs import base
    from isoflop.models.resnet import ResNetConfig
    from isoflop.models.vit import VitConfig
    c.task, c.data.source, c.data.normalize = "classification", "digits", True
    c.batch_size = 16
    c.model = (base.family_model_block("vit", VitConfig, d_model=32, n_layers=2, n_heads=4,
                                       n_kv_heads=None, patch_size=2) if family == "vit" else
               base.family_model_block("resnet", ResNetConfig, stage_depths=(1, 1),
                                       stage_widths=(8, 16), stem_width=8))
  return c


@pytest.mark.parametrize("family", sorted(SHARDED_FAMILIES))
def test_sharded_2x2x2_matches_one_device(tiny_config, tmp_path, family):
  c = tiny_config
  c.steps = 12
  c.model.update(n_kv_heads=2, tie_embeddings=False)
  c = _family_config(c, family)
  mesh, leaf_path, spec, shard_shape = SHARDED_FAMILIES[family]
  c.mesh.update(mesh)
  sharded = loop.train(c, str(tmp_path / "sharded"), progress=False)
  c.mesh.update({axis: 1 for axis in mesh})
  single = loop.train(c, str(tmp_path / "single"), devices=jax.devices()[:1], progress=False)
  np.testing.assert_allclose(_losses(sharded), _losses(single), rtol=1e-5)
  # atol: the key bias has an exactly zero true gradient (softmax ignores a shift shared by
  # all keys), so Adam normalizes float rounding into steps of up to lr; weights are ~0.02.
  for a, b in zip(jax.tree.leaves(sharded.state.params), jax.tree.leaves(single.state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # Parameters really are split as the family's logical axes say.
  kernel = sharded.state.params
  for key in leaf_path:
    kernel = kernel[key]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(*spec)
  assert kernel.addressable_shards[0].data.shape == shard_shape


def test_training_approaches_the_source_entropy(tmp_path):
  from isoflop.experiments.configs import tiny
  c = tiny.get_config()
  c.steps = 150
  c.log_every = 10
  result = loop.train(c, str(tmp_path / "run"), progress=False)
  entropy = result.record["data"]["entropy_nats"]
  first, last = result.rows[0]["loss"], result.rows[-1]["loss"]
  assert last > entropy - 0.05  # nothing beats the source's entropy (up to batch noise)
  assert last - entropy < 0.3 * (first - entropy), (first, last, entropy)


def test_same_seed_gives_bitwise_identical_params(tiny_config, tmp_path):
  a = loop.train(tiny_config, str(tmp_path / "a"), progress=False)
  b = loop.train(tiny_config, str(tmp_path / "b"), progress=False)
  for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  tiny_config.seed = 1
  c = loop.train(tiny_config, str(tmp_path / "c"), progress=False)
  assert not np.array_equal(np.asarray(jax.tree.leaves(a.state.params)[0]),
                            np.asarray(jax.tree.leaves(c.state.params)[0]))


def test_gradient_accumulation_matches_the_full_batch(tiny_config, tmp_path):
  full = loop.train(tiny_config, str(tmp_path / "full"), progress=False)
  tiny_config.microbatches = 4
  tiny_config.mesh.data = 2
  accumulated = loop.train(tiny_config, str(tmp_path / "acc"), devices=jax.devices()[:2],
                           progress=False)
  np.testing.assert_allclose(_losses(full), _losses(accumulated), rtol=1e-5)


def test_workdir_files_and_logged_keys(tiny_config, tmp_path):
  tiny_config.log_layer_norms = True
  tiny_config.loss.update(z_loss=1e-4, l2=1e-5, l1=1e-6)
  result = loop.train(tiny_config, str(tmp_path), progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  assert all(REQUIRED_ROW_KEYS <= set(r) for r in rows)
  assert rows[-1]["tokens_seen"] == 8 * 8 * 16
  assert "grad_norm/layers/attention/01" in rows[0] and "param_norm/embed" in rows[0]
  assert "z_loss" in rows[0]
  assert all(r["energy_j"] is None for r in rows)  # no energy counter on a CPU: null, not 0
  assert list((tmp_path / "tb").iterdir()), "TensorBoard event file missing"
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["config"]["steps"] == 8
  for convention in conventions.N_CONVENTIONS:
    assert record["n_params"][convention] > 0
  for convention in conventions.FLOP_CONVENTIONS:
    assert record["flops_per_token"][convention] > 0
  assert record["versions"]["jax"] == jax.__version__
  assert record == json.loads(json.dumps(result.record))


def test_bfloat16_compute_trains(tiny_config, tmp_path):
  tiny_config.model.dtype = "bfloat16"
  result = loop.train(tiny_config, str(tmp_path), progress=False)
  assert result.rows[-1]["loss"] < result.rows[0]["loss"]
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(result.state.params))


def test_rerunning_a_finished_run_changes_nothing(tiny_config, tmp_path):
  first = loop.train(tiny_config, str(tmp_path), progress=False)
  before = (tmp_path / "metrics.jsonl").read_text()
  again = loop.train(tiny_config, str(tmp_path), progress=False)
  assert again.resumed_from == tiny_config.steps and again.rows == []
  assert (tmp_path / "metrics.jsonl").read_text() == before
  for x, y in zip(jax.tree.leaves(first.state.params), jax.tree.leaves(again.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_seed_ensemble_trains_k_models_in_one_step(tiny_config, tmp_path):
  single = loop.train(tiny_config, str(tmp_path / "single"), progress=False)
  tiny_config.ensemble = 3
  tiny_config.eval_every = 4
  ensemble = loop.train(tiny_config, str(tmp_path / "ensemble"), progress=False)
  train_rows = [r for r in ensemble.rows if "loss" in r]
  assert all(len(r["loss_per_seed"]) == 3 and r["loss_std"] > 0 for r in train_rows)
  assert all(len(r["loss_mean_per_seed"]) == 3 and r["loss_mean_std"] > 0 for r in train_rows)
  # Member 0 uses the single run's seed and the same batches: the same model.
  np.testing.assert_allclose([r["loss_per_seed"][0] for r in train_rows], _losses(single),
                             rtol=1e-5)
  kernel = ensemble.state.params["layers"]["mlp"]["wi"]["kernel"]
  assert kernel.shape[0] == 3 and not np.allclose(kernel[0], kernel[1])
  assert any("eval_loss_std" in r for r in ensemble.rows)


def test_loss_mean_is_the_mean_over_the_log_interval(tiny_config, tmp_path):
  tiny_config.log_every = 1
  every_step = _losses(loop.train(tiny_config, str(tmp_path / "every"), progress=False))
  tiny_config.log_every = 3  # intervals of 3, 3 and the last 2 steps
  rows = loop.train(tiny_config, str(tmp_path / "every3"), progress=False).rows
  assert [r["step"] for r in rows] == [3, 6, 8]
  assert [r["loss"] for r in rows] == list(every_step[[2, 5, 7]])  # the last step's batch
  np.testing.assert_allclose([r["loss_mean"] for r in rows],
                             [every_step[:3].mean(), every_step[3:6].mean(),
                              every_step[6:].mean()], rtol=1e-12)
  logged = [json.loads(line) for line in (tmp_path / "every3" / "metrics.jsonl").open()]
  assert [r["loss_mean"] for r in logged] == [r["loss_mean"] for r in rows]


def test_init_from_says_what_it_takes_from_the_source_run(tiny_config, tmp_path, capsys):
  tiny_config.steps, tiny_config.checkpoint_every = 4, 4
  loop.train(tiny_config, str(tmp_path / "source"), progress=False)
  tiny_config.steps, tiny_config.init_from = 6, str(tmp_path / "source" / "checkpoints" / "4")
  result = loop.train(tiny_config, str(tmp_path / "branch"))
  out = capsys.readouterr().out
  assert f"initialized from {tmp_path / 'source' / 'checkpoints' / '4'} (step 4)" in out
  assert "optimizer state" in out and "continues at step 4" in out
  assert [r["step"] for r in result.rows if "loss" in r] == [6]
