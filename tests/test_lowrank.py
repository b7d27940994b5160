"""Low-rank factorization: a full-rank factorization reproduces the model, the energy rule
keeps what it is asked, a low-rank matrix comes back exactly, bad ranks are refused in one
line, and `isoflop compress --method=lowrank` reports and writes a loadable run."""

import dataclasses
import importlib
import json

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from isoflop.experiments import cli
from isoflop.models import families
from isoflop.train import build, init_from
from isoflop.train import task as task_lib
from isoflop.train.compression import lowrank


def _model(config_name):
  c = importlib.import_module(f"isoflop.experiments.configs.{config_name}").get_config()
  c.model.d_model, c.model.vocab_size = 32, 64
  model = families.family_of(c).make_model(families.model_config(c))
  tokens_BL = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  boxed = jax.jit(model.init)(jax.random.key(0), tokens_BL)
  return model, tokens_BL, nn.meta.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]


@pytest.mark.parametrize("config_name", ["tiny", "lstm_tiny", "moe_tiny"])
def test_full_rank_reproduces_the_dense_logits(config_name):
  model, tokens_BL, params, specs = _model(config_name)
  settings = lowrank.LowRankSettings(rank_fraction=1.0, factor_all=True)
  factored, factored_specs, report = lowrank.factorize(jax.device_get(params), specs, settings)
  assert report["matrices"] and all(m["factored"] for m in report["matrices"])
  factored_paths = {"/".join(p[:-1]) for p in flax.traverse_util.flatten_dict(factored)
                    if p[-1] in ("U", "V")}
  assert factored_paths == {m["path"] for m in report["matrices"]}
  for path, spec in flax.traverse_util.flatten_dict(factored_specs).items():
    assert ("rank" in tuple(spec)) == (path[-1] in ("U", "V"))
  dense = jax.jit(lambda f: lowrank.materialize(f, factored_specs))(factored)
  assert jax.tree.map(jnp.shape, dense) == jax.tree.map(jnp.shape, params)
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, tokens_BL)
  rebuilt = apply({"params": dense}, tokens_BL)
  np.testing.assert_allclose(rebuilt, logits, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(logits))))


def _stack(s_CK, d_in, d_out, seed=0):
  """Matrices (copies, d_in, d_out) with these singular values."""
  rng = np.random.default_rng(seed)
  out = []
  for s_K in s_CK:
    u, _ = np.linalg.qr(rng.normal(size=(d_in, len(s_K))))
    v, _ = np.linalg.qr(rng.normal(size=(d_out, len(s_K))))
    out.append((u * s_K) @ v.T)
  return np.stack(out).astype(np.float32)


def test_energy_keeps_what_is_asked_and_a_low_rank_matrix_is_exact():
  spread = np.linspace(1.0, 0.5, 8)  # copy 1 needs many singular values for 90%
  peaked = np.array([10.0] + [0.1] * 7)  # copy 0 needs one
  stacked = _stack(np.stack([peaked, spread]), 12, 8)
  rng = np.random.default_rng(3)
  low = (rng.normal(size=(16, 3)) @ rng.normal(size=(3, 2 * 8))).reshape(16, 2, 8)
  params = {"mlp": {"kernel": stacked}, "attn": {"kernel": low.astype(np.float32)},
            "conv": {"kernel": np.ones((3, 3, 4, 8), np.float32)}, "norm": np.ones(8)}
  specs = {"mlp": {"kernel": P("layers", "embed", "mlp")},
           "attn": {"kernel": P("embed", "heads", "kv")},
           "conv": {"kernel": P("height", "width", "channels_in", "channels")},
           "norm": P("embed")}

  _, _, report = lowrank.factorize(params, specs, lowrank.LowRankSettings(energy=0.9))
  rows = {m["path"]: m for m in report["matrices"]}
  assert set(rows) == {"mlp/kernel", "attn/kernel"}  # the conv and the norm stay dense
  energy_CK = np.cumsum(spread ** 2) / np.sum(spread ** 2)
  needed = int(np.argmax(energy_CK >= 0.9)) + 1  # the smallest rank the spread copy allows
  assert rows["mlp/kernel"]["rank"] == needed and rows["mlp/kernel"]["energy_kept"] >= 0.9

  factored, factored_specs, report = lowrank.factorize(params, specs,
                                                       lowrank.LowRankSettings(rank=3))
  assert factored["attn"]["kernel"]["U"].shape == (16, 3)
  assert factored["attn"]["kernel"]["V"].shape == (3, 2, 8)
  assert factored_specs["mlp"]["kernel"]["V"] == P("layers", "rank", "mlp")
  dense = lowrank.materialize(factored, factored_specs)
  np.testing.assert_allclose(dense["attn"]["kernel"], low, atol=1e-4)
  np.testing.assert_array_equal(dense["conv"]["kernel"], params["conv"]["kernel"])
  saved = (16 * 16 - 3 * 32) + 2 * (12 * 8 - 3 * 20)
  assert report["n_params_before"] - report["n_params_after"] == saved
  assert report["matmul_flops_per_token_before"] == 2 * (16 * 16 + 2 * 12 * 8)
  assert report["matmul_flops_per_token_after"] == 2 * (3 * 32 + 2 * 3 * 20)


@pytest.mark.parametrize("values, message", [
    ({"rank": 9}, "lowrank.rank=9 is above min(d_in, d_out)=8 of mlp/kernel (shape (2, 12, 8)"),
    ({"rank_fraction": 0.0}, "lowrank.rank_fraction=0.0 must be in (0, 1]"),
    ({"rank_fraction": 1.5}, "lowrank.rank_fraction=1.5 must be in (0, 1]"),
    ({"energy": 0.0}, "lowrank.energy=0.0 must be in (0, 1]"),
    ({"rank": 0}, "lowrank.rank=0 must be a whole number >= 1"),
    ({"rank": 2, "energy": 0.5}, "set exactly one of"),
])
def test_bad_settings_are_one_line(values, message):
  params = {"mlp": {"kernel": np.ones((2, 12, 8), np.float32)}}
  specs = {"mlp": {"kernel": P("layers", "embed", "mlp")}}
  from isoflop.experiments.configs import base
  block = base.get_config().lowrank
  block.update(values)
  with pytest.raises(ValueError) as error:
    lowrank.factorize(params, specs, lowrank.settings_from_config(block))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_factored_form_trains_through_the_task():
  """Recovery fine-tuning's seam: Task.wrap_model holds U and V as the parameters (with the
  factors' logical axes), the model code sees dense kernels, gradients reach U and V."""
  from isoflop.experiments.configs import tiny
  c = tiny.get_config()
  c.model.d_model, c.model.vocab_size = 32, 64
  dense_task = task_lib.make_task(c)
  tokens_BL = jax.random.randint(jax.random.key(1), (4, 9), 0, 64)
  batch = {"inputs": tokens_BL[:, :-1], "targets": tokens_BL[:, 1:]}
  boxed = jax.jit(dense_task.init_variables)(jax.random.key(0), batch)
  factored, factored_specs, _ = lowrank.factorize(
      jax.device_get(nn.meta.unbox(boxed)["params"]), nn.get_partition_spec(boxed)["params"],
      lowrank.LowRankSettings(rank_fraction=0.25))
  task = dataclasses.replace(dense_task, wrap_model=lambda model: lowrank.FactoredModel(
      model, factored_specs, lowrank.ranks_of(factored)))
  fresh = jax.eval_shape(task.init_variables, jax.random.key(0), batch)
  assert nn.get_partition_spec(fresh)["params"] == factored_specs
  assert jax.tree.map(jnp.shape, nn.meta.unbox(fresh)["params"]) == jax.tree.map(
      jnp.shape, factored)

  @jax.jit
  def loss(params):
    return task.losses(params, {}, batch, jax.random.key(2), train=False)[0].objective

  dense_loss = jax.jit(lambda f: dense_task.losses(lowrank.materialize(f, factored_specs), {},
                                                   batch, jax.random.key(2), train=False
                                                   )[0].objective)(factored)
  np.testing.assert_allclose(loss(factored), dense_loss, rtol=1e-6)
  grads = jax.jit(jax.grad(loss))(factored)
  kernel = grads["layers"]["mlp"]["wi"]["kernel"]
  assert set(kernel) == {"U", "V"} and all(float(jnp.abs(g).max()) > 0 for g in kernel.values())
  stepped = jax.tree.map(lambda p, g: p - 0.1 * g, factored, grads)
  assert loss(stepped) < loss(factored)


def _compress(*args):
  return cli.main(["isoflop", "compress", *map(str, args)])


@pytest.mark.xdist_group("trained_tiny_run")  # the shared trained run, built once
def test_compress_lowrank_reports_and_writes_a_loadable_run(trained_tiny_run, tmp_path, capsys):
  workdir, c = trained_tiny_run
  out = tmp_path / "factored"
  assert _compress(f"--workdir={workdir}", "--method=lowrank", f"--out={out}",
                   "--config.lowrank.rank_fraction=0.5") == 0
  report = json.loads((out / "compress.json").read_text())
  assert np.isfinite(report["loss_before"]) and np.isfinite(report["loss_after"])
  assert report["n_params_nonzero"] < report["n_params_dense"]
  assert report["weight_bytes"] < report["weight_bytes_dense"]
  for convention, flops in report["flops_per_token_after"].items():
    assert flops < report["flops_per_token_before"][convention], convention
  assert {m["rank"] for m in report["lowrank"]["matrices"]} == {16}  # half of min(32, 128)
  record = json.loads((out / "config.json").read_text())
  assert record["compression"]["method"] == "lowrank"
  plan = init_from.plan(str(out), build.prepare(c).abstract_state)  # loads as a dense run
  assert not plan.fresh and plan.step == 0

  tuned = tmp_path / "tuned"  # recovery trains U and V, then writes their dense product
  assert _compress(f"--workdir={workdir}", "--method=lowrank", f"--out={tuned}",
                   "--config.lowrank.rank_fraction=0.25", "--finetune_steps=6") == 0
  report = json.loads((tuned / "compress.json").read_text())
  assert report["loss_after_finetune"] < report["loss_after"] and report["finetune_steps"] == 6
  rows = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
  assert max(row["step"] for row in rows) == 6
  assert sorted(p.name for p in tmp_path.iterdir()) == ["factored", "tuned"]  # no scratch left

  bad = tmp_path / "bad"
  capsys.readouterr()
  assert _compress(f"--workdir={workdir}", "--method=lowrank", f"--out={bad}",
                   "--config.lowrank.rank=33") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "lowrank.rank=33 is above min(d_in, d_out)=32" in err[0], err
  assert not bad.exists()
