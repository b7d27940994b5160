"""The mixture-of-experts decoder: routing, capacity, auxiliary losses, counts and FLOPs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.models import counting, moe, transformer
from isoflop.train import task as task_lib

BASE = transformer.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                                     max_len=16, num_experts=4, experts_per_token=2)


def test_routing_keeps_capacity_priority_and_weights():
  logits_BLE = jax.random.normal(jax.random.key(0), (3, 12, 4)) * 3
  capacity = moe.capacity(1.0, 2, 12, 4)
  assert capacity == 6
  dispatch_BLEC, combine_BLEC, stats = moe.route(logits_BLE, 2, capacity)
  dispatch = np.asarray(dispatch_BLEC)
  assert set(np.unique(dispatch)) <= {0.0, 1.0}
  assert (dispatch.sum(axis=1) <= 1).all()  # each slot holds at most one token
  assert (dispatch.sum(axis=(2, 3)) <= 2).all()  # each token takes at most k slots
  kept = dispatch.sum(axis=(1, 3))  # assignments kept per (sequence, expert)
  assert (kept <= capacity).all()
  dropped = 1 - dispatch.sum() / (3 * 12 * 2)
  assert float(stats["dropped_fraction"]) == pytest.approx(dropped)
  assert dropped > 0  # with this much imbalance some choices overflow
  # First choices are never dropped while an expert still has room for them: a first choice is
  # dropped only if the expert is full of first choices.
  first_BL = np.asarray(jnp.argmax(logits_BLE, -1))
  for b in range(3):
    for e in range(4):
      firsts = (first_BL[b] == e).sum()
      assert dispatch[b, first_BL[b] == e, e].sum() == min(firsts, capacity)
  # A token none of whose choices were dropped gets weights summing to one.
  whole = dispatch.sum(axis=(2, 3)) == 2
  np.testing.assert_allclose(np.asarray(combine_BLEC).sum(axis=(2, 3))[whole], 1.0, rtol=1e-6)
  # Without a capacity limit nothing is dropped.
  dispatch_BLEC, _, stats = moe.route(logits_BLE, 2, moe.capacity(0.0, 2, 12, 4))
  assert float(stats["dropped_fraction"]) == 0.0 and float(dispatch_BLEC.sum()) == 3 * 12 * 2


@pytest.mark.parametrize("changes", [
    {},
    {"moe_every": 2, "n_layers": 4, "shared_experts": 1, "expert_d_ff": 24},
    {"activation": "swiglu", "use_bias": False, "tie_embeddings": False, "experts_per_token": 1},
], ids=["every_layer", "every_second_shared_fine", "gated_top1"])
def test_counts_equal_the_initialized_tree_and_active_is_the_routed_path(changes):
  cfg = dataclasses.replace(BASE, **changes)
  params = jax.eval_shape(lambda: nn.meta.unbox(transformer.Decoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  counts = counting.param_counts(cfg)
  assert counts["total"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  experts = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
             if "moe" in jax.tree_util.keystr(path) and "router" not in jax.tree_util.keystr(path)
             and "shared" not in jax.tree_util.keystr(path)]
  expert_params = sum(int(np.prod(x.shape)) for x in experts)
  unused = expert_params * (cfg.num_experts - cfg.experts_per_token) // cfg.num_experts
  assert counts["active"] == counts["total"] - unused
  dense = counting.param_counts(dataclasses.replace(cfg, num_experts=0))
  assert dense["active"] == dense["total"]


def test_auxiliary_losses_enter_the_objective_and_are_logged():
  from isoflop.experiments.configs import moe_tiny
  config = moe_tiny.get_config()
  config.seq_len = 8
  task = task_lib.make_task(config)
  cfg = task.model_config
  tokens = jax.random.randint(jax.random.key(1), (4, 9), 0, cfg.vocab_size)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  variables = nn.meta.unbox(task.init_variables(jax.random.key(0), batch))
  params = variables.pop("params")
  terms, _ = task.losses(params, variables, batch, jax.random.key(2), train=True)
  ce = terms.metrics["loss"][0]
  balance, z = terms.metrics["router_balance_loss"][0], terms.metrics["router_z_loss"][0]
  # Each of the two layers adds its own terms; the metrics are their layer means.
  expected = ce + 2 * (cfg.router_aux_loss * balance + cfg.router_z_loss * z)
  assert float(terms.objective) == pytest.approx(float(expected), rel=1e-5)
  assert 1.0 <= float(balance) <= cfg.num_experts
  assert 0.0 <= float(terms.metrics["dropped_fraction"][0]) < 1.0


@pytest.mark.parametrize("changes, message", [
    ({"experts_per_token": 5}, "experts_per_token=5 must be between 1 and model.num_experts=4"),
    ({"moe_every": 3}, "moe_every=3 must divide model.n_layers=2"),
    ({"capacity_factor": -1.0}, "capacity_factor=-1.0 must not be negative"),
])
def test_bad_expert_configs_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **changes)
