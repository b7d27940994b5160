"""Every optimizer and schedule builds and takes a step; schedules have their shapes."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jax.sharding import PartitionSpec as P

from isoflop.experiments.configs import base
from isoflop.models import param_roles
from isoflop.train import optimizers, schedules

PARAMS = {"embed": {"embedding": jnp.ones((8, 4))},
          "layers": {"mlp": {"wi": {"kernel": jnp.ones((2, 4, 4)), "bias": jnp.ones((2, 4))}},
                     "mlp_norm": {"scale": jnp.ones((2, 4))}},
          "final_norm": {"scale": jnp.ones(4)}}
ROLES = param_roles.label(
    {"embed": {"embedding": P("vocab", "embed")},
     "layers": {"mlp": {"wi": {"kernel": P("layers", "embed", "mlp"), "bias": P("layers", "mlp")}},
                "mlp_norm": {"scale": P("layers", "embed")}},
     "final_norm": {"scale": P("embed")}})


def _opt_config(**changes) -> ml_collections.ConfigDict:
  c = base.get_config().optimizer
  c.update(changes)
  return c


@pytest.mark.parametrize("name, schedule",
                         list(itertools.product(optimizers.OPTIMIZERS, schedules.SCHEDULES)))
def test_every_optimizer_and_schedule_takes_a_step(name, schedule):
  tx, lr = optimizers.make_optimizer(_opt_config(name=name, schedule=schedule, warmup_steps=0,
                                                 lr=0.1), total_steps=10, roles=ROLES)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), PARAMS)
  state = tx.init(PARAMS)
  updates, state = jax.jit(tx.update)(grads, state, PARAMS)
  new = optax.apply_updates(PARAMS, updates)
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new),
                                                          jax.tree.leaves(PARAMS))]
  assert all(np.isfinite(moved)) and min(moved) > 0, moved
  assert float(lr(0)) == pytest.approx(0.1)


def test_schedules_warm_up_and_decay_as_named():
  def make(name, **kw):
    return schedules.make_schedule(name, peak_lr=1.0, total_steps=100, warmup_steps=10,
                                   min_lr_ratio=0.1, **kw)

  for name in schedules.SCHEDULES:
    s = make(name)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
  assert float(make("constant")(99)) == pytest.approx(1.0)
  assert float(make("cosine")(100)) == pytest.approx(0.1)
  assert float(make("linear")(55)) == pytest.approx(0.55)
  wsd = make("wsd", decay_fraction=0.2)
  assert float(wsd(79)) == pytest.approx(1.0) and float(wsd(100)) == pytest.approx(0.1)
  assert float(make("inverse_sqrt")(40)) == pytest.approx(0.5)  # sqrt(warmup 10 / step 40)


def test_weight_decay_skips_norms_and_biases():
  mask = param_roles.decay_mask(ROLES)
  assert mask["embed"]["embedding"] and mask["layers"]["mlp"]["wi"]["kernel"]
  assert not mask["layers"]["mlp"]["wi"]["bias"]
  assert not mask["layers"]["mlp_norm"]["scale"] and not mask["final_norm"]["scale"]
  tx, _ = optimizers.make_optimizer(_opt_config(name="adamw", weight_decay=0.5, lr=1.0,
                                                warmup_steps=0, clip_norm=0.0,
                                                schedule="constant"), 10, ROLES)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  assert float(updates["embed"]["embedding"][0, 0]) == pytest.approx(-0.5)
  assert float(jnp.abs(updates["final_norm"]["scale"]).max()) == 0.0


def test_clipping_bounds_the_global_norm():
  tx, _ = optimizers.make_optimizer(_opt_config(name="sgd", lr=1.0, warmup_steps=0,
                                                weight_decay=0.0, clip_norm=1.0,
                                                schedule="constant"), 10, ROLES)
  grads = jax.tree.map(lambda p: 100 * jnp.ones_like(p), PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("changes, message", [
    (dict(name="adamax2"), "unknown optimizer"),
    (dict(schedule="exp"), "unknown schedule"),
    (dict(lr=0.0), "must be positive"),
    (dict(lr=-1e-3), "must be positive"),
    (dict(warmup_steps=500), "warmup_steps"),
])
def test_bad_optimizer_settings(changes, message):
  with pytest.raises(ValueError, match=message):
    optimizers.make_optimizer(_opt_config(**changes), total_steps=100, roles=ROLES)
