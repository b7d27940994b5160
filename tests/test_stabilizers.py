"""Stabilizers of the Transformer families: QK-norm bounds the attention logits, soft-capping
bounds logits and is exact attention otherwise, independent weight decay ignores the learning
rate's size, and their parameters are counted."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.experiments.configs import bert_tiny, t5_tiny, tiny, vit_tiny
from isoflop.models import attention as attention_lib
from isoflop.models import param_roles
from isoflop.train import data as data_lib
from isoflop.train import optimizers
from isoflop.train import task as task_lib

FAMILIES = {"decoder": tiny, "encoder": bert_tiny, "encdec": t5_tiny, "vit": vit_tiny}


def _task_and_batch(module, **model):
  config = module.get_config()
  config.model.update(model)
  task = task_lib.make_task(config)
  batch = {k: jnp.asarray(v) for k, v in data_lib.make_source(config).batch(np.arange(2)).items()}
  return task, batch


def _unboxed(tree):
  return jax.tree.map(lambda x: getattr(x, "value", x), tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _attention_logits(task, params, batch):
  args, kwargs = task.objective.model_inputs(task.objective.prepare(batch, jax.random.key(0)),
                                             train=False)
  apply = jax.jit(lambda p: task.model.apply({"params": p}, *args, mutable=["intermediates"],
                                             **kwargs)[1])
  variables = apply(params)
  found = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
      variables["intermediates"]) if "attention_logits" in jax.tree_util.keystr(path)]
  assert found
  return found


def _blow_up_queries(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x * 1000.0 if "query_kernel" in jax.tree_util.keystr(path) else x, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_qk_norm_bounds_attention_logits_and_is_counted(family):
  """Queries 1000x too large: the logits follow them without QK-norm; with it each head's
  unit-RMS queries and keys (scales at 1) give |q.k| / sqrt(d_head) <= sqrt(d_head)."""
  plain_task, batch = _task_and_batch(FAMILIES[family])
  normed_task, _ = _task_and_batch(FAMILIES[family], qk_norm=True)
  d_head = normed_task.model_config.head_dim
  bound = np.sqrt(d_head) * (1 + 1e-4)
  for task, bounded in ((plain_task, False), (normed_task, True)):
    params = _unboxed(jax.jit(task.init_variables)(jax.random.key(0), batch)["params"])
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert n_params == task.describe(batch)["param_counts_padded"]["total"]
    largest = max(np.abs(x).max() for x in _attention_logits(task, _blow_up_queries(params),
                                                             batch))
    assert (largest <= bound) == bounded, (family, largest, bound)
  roles = param_roles.label(nn.get_partition_spec(normed_task.init_variables(
      jax.random.key(0), batch))["params"])
  norm_roles = [r for path, r in jax.tree_util.tree_leaves_with_path(roles)
                if "query_norm" in jax.tree_util.keystr(path)]
  assert norm_roles and all(r.kind == param_roles.VECTOR for r in norm_roles)  # no decay


def test_soft_capped_attention_is_exact_attention_below_the_cap_and_bounded_above():
  keys = jax.random.split(jax.random.key(0), 5)
  q_BLHK = jax.random.normal(keys[0], (2, 6, 4, 8))
  k_BSGK = jax.random.normal(keys[1], (2, 6, 2, 8))
  v_BSGK = jax.random.normal(keys[2], (2, 6, 2, 8))
  bias_BHLS = jax.random.normal(keys[3], (1, 4, 6, 6))
  mask_B1LS = jax.random.bernoulli(keys[4], 0.8, (2, 1, 6, 6)).at[..., 0].set(True)
  for causal in (True, False):
    exact = jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, bias=bias_BHLS,
                                         mask=mask_B1LS, is_causal=causal, scale=0.35)
    capped = attention_lib.capped_attention(q_BLHK, k_BSGK, v_BSGK, bias_BHLS=bias_BHLS,
                                            mask_B1LS=mask_B1LS, causal=causal, scale=0.35,
                                            cap=1e5)
    np.testing.assert_allclose(capped, exact, rtol=1e-5, atol=1e-5)
  task, batch = _task_and_batch(tiny, attn_logit_softcap=2.0, final_logit_softcap=3.0)
  params = _blow_up_queries(_unboxed(task.init_variables(jax.random.key(0), batch)["params"]))
  assert all(np.abs(x).max() <= 2.0 for x in _attention_logits(task, params, batch))
  logits = jax.jit(task.model.apply)({"params": jax.tree.map(lambda x: x * 50.0, params)},
                                     batch["inputs"])
  assert np.abs(np.asarray(logits)).max() <= 3.0


def _decay_after_one_step(lr: float, independent: bool) -> float:
  cfg = ml_collections.ConfigDict(dict(
      name="adamw", lr=lr, schedule="constant", warmup_steps=0, min_lr_ratio=0.1,
      decay_fraction=0.2, b1=0.9, b2=0.95, eps=1e-8, momentum=0.9, weight_decay=0.01,
      clip_norm=0.0, independent_weight_decay=independent))
  params = {"kernel": jnp.full((3, 3), 2.0)}
  roles = {"kernel": param_roles.Role(param_roles.HIDDEN, False)}
  tx, _ = optimizers.make_optimizer(cfg, 10, roles)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  return -float(updates["kernel"][0, 0])


def test_independent_weight_decay_does_not_scale_with_the_learning_rate():
  # Zero gradients: the step is the decay alone. Coupled (optax's AdamW): lr * wd * p.
  assert _decay_after_one_step(1e-2, False) == pytest.approx(1e-2 * 0.01 * 2.0)
  assert _decay_after_one_step(1e-1, False) == pytest.approx(1e-1 * 0.01 * 2.0)
  # Independent: wd * p at the peak, whatever the peak rate.
  assert _decay_after_one_step(1e-2, True) == pytest.approx(0.01 * 2.0)
  assert _decay_after_one_step(1e-1, True) == pytest.approx(0.01 * 2.0)


def test_bad_soft_cap_is_one_line(tmp_path, capsys):
  code = cli.main(["isoflop", "train", "--config=experiments/configs/tiny.py",
                   f"--workdir={tmp_path / 'run'}", "--config.model.attn_logit_softcap=-1"])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "attn_logit_softcap=-1.0 must be >= 0" in err, err
  assert not (tmp_path / "run").exists()
