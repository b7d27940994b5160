"""DP-SGD: each example's gradient clipped to the bound, noise of the stated size, the privacy
spent as dp-accounting computes it, bitwise resumes, and bad settings refused in one line."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.experiments.configs import tiny_shakespeare, vit_tiny
from isoflop.train import build, loop, privacy
from isoflop.train import task as task_lib


def _grad_fn(task):
  """The step's objective, as train/step.py differentiates it."""
  def objective(params, model_state, batch, rng, teacher_variables):
    terms, state = task.losses(params, model_state, batch, rng, train=True)
    return terms.objective, (terms.weight, terms.metrics, state)
  return jax.value_and_grad(objective, has_aux=True)


def _tiny_decoder():
  config = tiny_shakespeare.get_config()
  config.model.update(d_model=32, vocab_size=256)
  config.seq_len = 16
  task = task_lib.make_task(config)
  tokens = jax.random.randint(jax.random.key(0), (6, 17), 0, 256)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  params = task.init_variables(jax.random.key(1), batch)["params"]
  return task, jax.tree.map(lambda box: getattr(box, "value", box), params,
                            is_leaf=lambda x: hasattr(x, "value")), batch


def _norm(tree) -> float:
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def test_each_example_is_clipped_to_the_bound():
  task, params, batch = _tiny_decoder()
  grad_fn = _grad_fn(task)
  rng = jax.random.key(2)
  single_grad = jax.jit(lambda p, b, key: grad_fn(p, {}, b, key, None)[1])
  singles = [single_grad(params, jax.tree.map(lambda x: x[i:i + 1], batch),
                         jax.random.fold_in(rng, i)) for i in range(6)]
  norms = [_norm(g) for g in singles]
  clip = float(np.median(norms))  # half the examples above the bound, half below
  summed, examples, _, n_clipped = jax.jit(
      lambda p, b: privacy.clipped_sums(grad_fn, clip, None, p, {}, b, rng, None))(params, batch)
  assert examples == 6 and int(n_clipped) == sum(n > clip for n in norms) == 3
  expected = jax.tree.map(lambda *g: sum(g), *[
      jax.tree.map(lambda x, s=min(1.0, clip / n): x * s, g) for g, n in zip(singles, norms)])
  for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # fp32 sums of 6
  # One example alone: its clipped gradient is within the bound, whatever its own norm.
  clipped_one = jax.jit(
      lambda p, b: privacy.clipped_sums(grad_fn, clip, None, p, {}, b, rng, None)[0])
  for i in range(6):
    one = clipped_one(params, jax.tree.map(lambda x: x[i:i + 1], batch))
    assert _norm(one) <= clip * (1 + 1e-5)


def test_noise_has_the_stated_standard_deviation():
  settings = privacy.Privacy(noise_multiplier=1.5, clip_norm=0.5, delta=1e-5)
  zeros = {"a": jnp.zeros((300, 300)), "b": jnp.zeros((1000,))}
  noised = privacy.noised_mean(zeros, 4, settings, jax.random.key(0))
  values = np.concatenate([np.ravel(x) for x in jax.tree.leaves(noised)])
  assert np.std(values) == pytest.approx(1.5 * 0.5 / 4, rel=0.02)
  assert abs(np.mean(values)) < 0.01 * 1.5 * 0.5 / 4


def test_epsilon_matches_the_gaussian_mechanism_without_subsampling():
  """With every example in every batch (q = 1), T steps are the Gaussian mechanism composed T
  times: RDP of order a is T a / (2 sigma^2), so eps = min_a T a / (2 sigma^2) +
  log(1 / delta) / (a - 1) (Mironov 2017, Prop. 3 and Prop. 1)."""
  settings = privacy.Privacy(noise_multiplier=4.0, clip_norm=1.0, delta=1e-5)
  steps = 10
  orders = np.linspace(1.01, 200, 200_000)
  closed = np.min(steps * orders / (2 * 16.0) + math.log(1e5) / (orders - 1))
  got = privacy.epsilon(settings, steps, 1.0)
  # dp-accounting evaluates a fixed grid of orders and a tighter RDP-to-(eps, delta)
  # conversion: never above the classic bound, and close to it.
  assert closed * 0.8 < got <= closed * (1 + 1e-6)
  assert privacy.epsilon(settings, 0, 0.01) == 0.0
  assert privacy.epsilon(privacy.Privacy(0.0, 1.0, 1e-5), 10, 0.01) is None
  smaller = privacy.epsilon(settings, steps, 0.01)
  assert 0 < smaller < got  # subsampling amplifies privacy


def _decoder_config():
  c = tiny_shakespeare.get_config()
  c.update(steps=6, batch_size=8, seq_len=16, log_every=1, eval_every=0, checkpoint_every=3)
  c.model.d_model = 32
  return c


def _vit_config():
  c = vit_tiny.get_config()
  c.update(steps=6, batch_size=8, log_every=1, eval_every=0, checkpoint_every=3)
  c.model.update(d_model=16, n_layers=1, n_heads=2, dropout=0.1)
  return c


@pytest.mark.parametrize("make_config", [_decoder_config, _vit_config], ids=["decoder", "vit"])
def test_private_run_logs_epsilon_and_resumes_bitwise(make_config, tmp_path):
  config = make_config()
  config.optimizer.update(schedule="constant", warmup_steps=0)
  config.privacy.noise_multiplier = 1.0
  config.privacy.clip_norm = 0.1
  prepared = build.prepare(config)
  straight = loop.run(prepared, str(tmp_path / "straight"), progress=False)
  half = config.copy_and_resolve_references()
  half.steps = 3
  loop.run(build.prepare(half), str(tmp_path / "resumed"), progress=False)
  resumed = loop.run(build.prepare(config), str(tmp_path / "resumed"), progress=False)
  assert resumed.resumed_from == 3
  for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(a, b)
  record = json.loads((tmp_path / "straight" / "config.json").read_text())["privacy"]
  rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text()
          .splitlines()]
  settings = privacy.settings_from_config(config)
  assert record["sampling_rate"] == 8 / prepared.source.num_train_examples
  epsilons = [r["dp_epsilon"] for r in rows]
  assert epsilons == [privacy.epsilon(settings, r["step"], record["sampling_rate"])
                      for r in rows]
  assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
  assert all(r["dp_clipped_fraction"] == 1.0 for r in rows)  # a bound of 0.1 clips them all


@pytest.mark.parametrize("flag, message", [
    ("--config.privacy.noise_multiplier=-1", "privacy.noise_multiplier=-1.0 must be >= 0"),
    ("--config.privacy.clip_norm=0", "privacy.clip_norm=0.0 must be > 0"),
    ("--config.data.source=synthetic:markov", "privacy needs a finite training set"),
])
def test_bad_privacy_settings_are_one_line(flag, message, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["isoflop", "train", "--config=experiments/configs/tiny_shakespeare.py",
                   f"--workdir={workdir}", "--config.privacy.noise_multiplier=1", flag])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not workdir.exists()
