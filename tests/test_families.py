"""The seam between train/ and the families: a family and an objective registered from outside
the package (here) train through the unchanged trainer, with model state (BatchNorm
statistics), batches of another shape (images [B, H, W, C], labels [B]) each sharded by its own
logical axes, example units, weighted losses, eval metrics, checkpoints and resume."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from isoflop.experiments.configs import base
from isoflop.models import families, objectives
from isoflop.train import loop
from isoflop.train import step as step_lib
from isoflop.train import task as task_lib


@dataclasses.dataclass(frozen=True)
class BnConfig:
  hidden: int = 16
  num_classes: int = 10
  batch_norm: bool = True


class BnClassifier(nn.Module):
  """image_BHWC -> logits_BK through a dense layer, BatchNorm (running statistics in the
  ``batch_stats`` collection: model state) and a readout."""
  config: BnConfig

  @nn.compact
  def __call__(self, image_BHWC, *, train=False):
    x_BF = image_BHWC.reshape(image_BHWC.shape[0], -1)
    init = nn.initializers.normal(0.1)
    h_BH = nn.Dense(self.config.hidden, kernel_init=nn.with_logical_partitioning(
        init, ("embed", "mlp")), use_bias=False)(x_BF)
    if self.config.batch_norm:
      h_BH = nn.BatchNorm(
          use_running_average=not train, momentum=0.5,
          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("mlp",)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(h_BH)
    return nn.Dense(self.config.num_classes, use_bias=False, kernel_init=(
        nn.with_logical_partitioning(init, ("mlp", "vocab"))))(jax.nn.relu(h_BH))


def _counts(cfg, padded=False):
  del padded
  hidden = 64 * cfg.hidden + (2 * cfg.hidden if cfg.batch_norm else 0)
  head = cfg.hidden * cfg.num_classes
  return {"embedding": 0, "non_embedding": hidden, "head": head, "total": hidden + head,
          "active": hidden + head}


FAMILY = families.register(families.Family(
    name="test_bn_classifier", config_class=BnConfig, make_model=BnClassifier,
    objectives=("test_classification",), unit="example", param_counts=_counts,
    n_by_convention=lambda cfg: {"kaplan": _counts(cfg)["total"]},
    flops_per_unit=lambda cfg, seq_len: {"kaplan": 6.0 * _counts(cfg)["total"]},
    for_cost_analysis=lambda cfg, remat, seq_len: cfg,
    from_run_config=lambda fields, run: BnConfig(**fields)))


@dataclasses.dataclass(frozen=True)
class Classification:
  """Softmax cross-entropy over the examples whose label is >= 0 (a negative label is padding:
  weight 0), so microbatches can hold different numbers of targets."""
  name = "test_classification"
  unit = "example"
  batch_axes = {"image": ("batch", "height", "width", "channels"), "label": ("batch",)}
  required_keys = ("image", "label")

  def prepare(self, batch, rng):
    return batch

  def model_inputs(self, batch, train):
    return (batch["image"],), {"train": train}

  def terms(self, logits_BK, batch):
    labels_B = batch["label"]
    valid_B = (labels_B >= 0).astype(jnp.float32)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BK, jnp.maximum(labels_B, 0))
    weight = valid_B.sum()
    loss = objectives.safe_mean((ce_B * valid_B).sum(), weight)
    return objectives.Terms(objective=loss, weight=weight, metrics={"loss": (loss, weight)})

  def eval_metrics(self, logits_BK, batch):
    terms = self.terms(logits_BK, batch)
    correct = (jnp.argmax(logits_BK, -1) == batch["label"]).mean(dtype=jnp.float32)
    return {"loss": terms.metrics["loss"], "accuracy": (correct, terms.weight)}

  def units(self, batch):
    return int(batch["label"].shape[0])


objectives.register("test_classification", lambda config: Classification())


def _config(**changes) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.task = "test_classification"
  c.model = ml_collections.ConfigDict({"family": "test_bn_classifier", "hidden": 16,
                                       "num_classes": 10})
  c.data.source = "digits"
  c.steps, c.batch_size, c.log_every, c.eval_every, c.eval_batches = 6, 32, 2, 3, 2
  c.checkpoint_every = 3
  c.optimizer.warmup_steps = 1
  c.optimizer.lr = 0.05
  c.optimizer.schedule = "constant"  # a run stopped early then resumed follows the same lr
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_registered_family_trains_with_model_state_and_resumes_bitwise(tmp_path):
  straight = loop.train(_config(), str(tmp_path / "straight"), progress=False)
  stats = straight.state.model_state["batch_stats"]
  assert set(stats["BatchNorm_0"]) == {"mean", "var"}
  assert np.abs(np.asarray(stats["BatchNorm_0"]["mean"])).max() > 0  # updated by training
  # Images and labels each got a sharding from their own logical axes.
  record = json.loads((tmp_path / "straight" / "config.json").read_text())
  assert record["unit"] == "example" and record["examples_per_step"] == 32
  assert record["model_family"] == "test_bn_classifier"
  rows = straight.rows
  assert "examples_per_s" in rows[0] and "examples_seen" in rows[0]
  evals = [r for r in rows if "eval_loss" in r]
  assert evals and all(0.0 <= r["eval_accuracy"] <= 1.0 for r in evals)
  # Stop at step 3 (a checkpoint holding the statistics), then resume to 6: bitwise the same.
  loop.train(_config(steps=3), str(tmp_path / "resumed"), progress=False)
  resumed = loop.train(_config(), str(tmp_path / "resumed"), progress=False)
  assert resumed.resumed_from == 3
  for a, b in zip(_leaves((straight.state.params, straight.state.model_state)),
                  _leaves((resumed.state.params, resumed.state.model_state))):
    np.testing.assert_array_equal(a, b)


def test_model_state_passes_through_microbatches_and_ensembles(tmp_path):
  result = loop.train(_config(microbatches=2, ensemble=2, steps=2, eval_every=2),
                      str(tmp_path / "run"), progress=False)
  mean = np.asarray(result.state.model_state["batch_stats"]["BatchNorm_0"]["mean"])
  assert mean.shape == (2, 16)  # one set of statistics per seed
  assert not np.allclose(mean[0], mean[1])  # each seed's own model
  assert "eval_loss_std" in [r for r in result.rows if "eval_loss" in r][-1]


def _sgd_update(task, params, batch, microbatches):
  """The parameter change of one SGD step at learning rate 1: minus the gradient."""
  from isoflop.train.state import TrainState
  tx = optax.sgd(1.0)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     model_state={}, rng=jax.random.key_data(jax.random.key(0)),
                     first_nonfinite_step=jnp.full((), -1, jnp.int32))
  step = step_lib.make_train_step(task, tx, optax.constant_schedule(1.0),
                                  microbatches=microbatches)
  new_state, metrics = jax.jit(step)(state, batch)
  return jax.tree.map(jnp.subtract, new_state.params, params), float(metrics["loss"])


def test_microbatches_with_unequal_targets_weight_exactly():
  """Microbatch 0 holds 8 targets, microbatch 1 holds 1: the accumulated gradient is the
  full batch's mean over its 9 targets, not the mean of the two microbatch means."""
  task = task_lib.Task(FAMILY, BnConfig(batch_norm=False), Classification(), seq_len=1)
  rng = np.random.default_rng(0)
  label = rng.integers(0, 10, 16).astype(np.int32)
  label[3::2] = -1  # microbatch 1 takes rows 1, 3, 5, ...: only row 1 keeps a target
  batch = {"image": jnp.asarray(rng.random((16, 8, 8, 1), np.float32)),
           "label": jnp.asarray(label)}
  params = nn.meta.unbox(task.init_variables(jax.random.key(1), batch))["params"]
  full, full_loss = _sgd_update(task, params, batch, 1)
  split, split_loss = _sgd_update(task, params, batch, 2)
  assert split_loss == pytest.approx(full_loss, rel=1e-6)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(split)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # What equal weights would give: visibly different, so the check above has teeth.
  halves = [_sgd_update(task, params, {k: v[i::2] for k, v in batch.items()}, 1)[0]
            for i in (0, 1)]
  equal = jax.tree.map(lambda a, b: (a + b) / 2, *halves)
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(full),
                                                           jax.tree.leaves(equal)))
  assert gap > 1e-3


def test_unknown_family_or_task_and_unserved_tasks_are_one_line_errors():
  with pytest.raises(ValueError, match="unknown model.family 'nope'; choose one of"):
    task_lib.make_task(_config(**{"model.family": "nope"}))
  with pytest.raises(ValueError, match="unknown task 'nope'; choose one of"):
    task_lib.make_task(_config(task="nope"))
  with pytest.raises(ValueError, match="cannot serve task='causal_lm'"):
    task_lib.make_task(_config(task="causal_lm"))
  extra = _config()
  extra.model.width = 3
  with pytest.raises(ValueError, match=r"unknown model keys \['width'\] for model.family"):
    task_lib.make_task(extra)


def test_init_from_a_workdir_loads_parameters_by_name_and_shape(tmp_path):
  source = loop.train(_config(steps=3), str(tmp_path / "source"), progress=False)
  # Without BatchNorm the model keeps both dense layers; a vanishing lr keeps what was loaded.
  run = loop.train(_config(**{"model.batch_norm": False, "optimizer.lr": 1e-30, "steps": 2,
                              "init_from": str(tmp_path / "source")}),
                   str(tmp_path / "run"), progress=False)
  for name in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(run.state.params[name]["kernel"],
                                  source.state.params[name]["kernel"])
  info = run.record["initialized_from"]
  assert info["step"] == 3 and info["loaded"] == 2 and info["fresh"] == []
  assert "params/BatchNorm_0/scale" in info["ignored"]
  assert "model_state/batch_stats/BatchNorm_0/mean" in info["ignored"]
  assert int(run.state.step) == 2  # the step count started afresh

  for changes, message in [
      ({"model.hidden": 8}, r"6 array\(s\) differ in shape: .*params/Dense_0/kernel \(64, 16\) "
                            r"in the source, \(64, 8\) here; .*model_state/batch_stats"),
      ({"init_from": str(tmp_path / "source") + ":2"}, "no checkpoint at step 2 \\(saved: 3\\)"),
      ({"init_from": str(tmp_path / "missing")}, "holds no checkpoint"),
  ]:
    changes.setdefault("init_from", str(tmp_path / "source"))
    with pytest.raises(ValueError, match=message):
      loop.train(_config(**changes), str(tmp_path / "refused"), progress=False)
    assert not (tmp_path / "refused").exists()
