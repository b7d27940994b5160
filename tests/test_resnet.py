"""The convolutional families (``model.family=resnet`` and ``vgg``, models/resnet/): exact
parameter counts (the initialized tree and torchvision's published numbers), analytic FLOPs,
BatchNorm as model state (batch statistics in training, running averages in evaluation),
zero-initialized residuals, parameter roles from logical axes, bf16 compute, refused configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import resnet18, resnet34, resnet50, resnet_tiny, vgg_tiny
from isoflop.models import families, param_roles
from isoflop.models.resnet import ResNet, ResNetConfig, counting
from isoflop.models.resnet import family as resnet_family
from isoflop.train import task as task_lib

TINY = dict(image_size=8, channels=1, stage_depths=(1, 2), stage_widths=(4, 8), stem_width=4)


def _cfg(**changes) -> ResNetConfig:
  return ResNetConfig(**{**TINY, **changes})


def _images(cfg: ResNetConfig, batch: int = 4, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed),
                           (batch, cfg.image_size, cfg.image_size, cfg.channels))


def _init(cfg: ResNetConfig, batch: int = 4):
  return nn.meta.unbox(ResNet(cfg).init(jax.random.key(1), _images(cfg, batch)))


def _size(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _captured(cfg, variables, images, *, train=False):
  """Every submodule's output (Flax's capture_intermediates), by module path."""
  mutable = ["intermediates"] + (["batch_stats"] if train else [])
  logits, out = ResNet(cfg).apply(variables, images, train=train, mutable=mutable,
                                  capture_intermediates=True)
  return logits, out


SHAPES = {
    "basic": {},
    "bottleneck": {"block": "bottleneck"},
    "single": {"block": "single"},
    "imagenet_stem": {"stem": "imagenet", "image_size": 16, "channels": 3},
    "no_skip": {"skip": False},
    "bottleneck_no_skip": {"block": "bottleneck", "skip": False},
    "maxpool": {"downsample": "maxpool", "stage_widths": (4, 4)},
    "no_batch_norm": {"batch_norm": False, "block": "bottleneck"},
    "vgg_defaults": {"skip": False, "downsample": "maxpool", "block": "single"},
}


@pytest.mark.parametrize("changes", SHAPES.values(), ids=SHAPES.keys())
def test_counts_equal_the_initialized_parameters(changes):
  cfg = _cfg(**changes)
  shapes = jax.eval_shape(lambda: ResNet(cfg).init(jax.random.key(0), _images(cfg)))
  params = nn.meta.unbox(shapes["params"])
  counts = counting.param_counts(cfg)
  assert counts["total"] == _size(params) == counts["active"]
  assert counts == counting.param_counts(cfg, padded=True)
  assert counts["embedding"] == 0
  assert counts["head"] == _size(params["head"])
  assert counts["stem"] == _size({k: v for k, v in params.items() if k.startswith("stem_")})
  for s in range(1, len(cfg.stage_depths) + 1):
    stage = {k: v for k, v in params.items() if k.startswith(f"stage{s}_")}
    assert counts[f"stage_{s}"] == _size(stage)
  assert counts["non_embedding"] == counts["total"] - counts["head"]
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"]
  n = counting.n_by_convention(cfg)
  assert n == {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
               "palm": _size(kernels)}
  # BatchNorm's running statistics are model state, not parameters.
  if cfg.batch_norm:
    assert _size(shapes["batch_stats"]) > 0
  else:
    assert "batch_stats" not in shapes


PUBLISHED = [(resnet18, 11_689_512, 1.814e9), (resnet34, 21_797_672, 3.664e9),
             (resnet50, 25_557_032, 4.089e9)]  # torchvision: parameters, GMACs at 224 x 224


@pytest.mark.parametrize("module,published,_", PUBLISHED, ids=["resnet18", "resnet34",
                                                               "resnet50"])
def test_published_configs_have_torchvisions_parameter_counts(module, published, _):
  config = module.get_config()
  assert config.data.source == "tfds:imagenet2012" and config.task == "classification"
  cfg = families.model_config(config)
  image = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
  shapes = jax.eval_shape(lambda x: ResNet(cfg).init(jax.random.key(0), x), image)
  assert _size(shapes["params"]) == published == counting.param_counts(cfg)["total"]


@pytest.mark.parametrize("module,_,macs", PUBLISHED, ids=["resnet18", "resnet34", "resnet50"])
def test_analytic_flops_are_torchvisions_multiply_accumulates(module, _, macs):
  cfg = families.model_config(module.get_config())
  assert counting.forward_macs(cfg) == pytest.approx(macs, rel=1e-3)
  flops = counting.flops_per_example(cfg, seq_len=123)
  assert flops == {k: 6.0 * counting.forward_macs(cfg) for k in ("kaplan", "chinchilla", "palm")}


@pytest.mark.parametrize("changes", [{"image_size": 32}, {"block": "bottleneck"}],
                         ids=["basic", "bottleneck"])
def test_analytic_forward_flops_match_xla_up_to_padding(changes):
  """XLA counts the conv taps that land inside the image, so on small images with 3x3 convs
  it counts a little less than the full-kernel convention (torchvision's); never more."""
  cfg = _cfg(batch_norm=False, **changes)
  variables, images = _init(cfg), _images(cfg, batch=2)
  cost = jax.jit(ResNet(cfg).apply).lower(variables, images).compile().cost_analysis()
  analytic = 2 * counting.forward_macs(cfg)
  assert 0.85 * analytic < cost["flops"] / 2 < 1.05 * analytic


def test_training_normalizes_by_the_batch_and_updates_the_running_statistics():
  cfg = _cfg(bn_momentum=0.9)
  variables, images = _init(cfg, batch=8), _images(cfg, batch=8)
  _, out = _captured(cfg, variables, images, train=True)
  conv_BHWC = out["intermediates"]["stem_conv"]["__call__"][0]
  normed_BHWC = out["intermediates"]["stem_bn"]["__call__"][0]
  np.testing.assert_allclose(normed_BHWC.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(normed_BHWC.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
  stats = out["batch_stats"]["stem_bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * conv_BHWC.mean(axis=(0, 1, 2)), atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv_BHWC.var(axis=(0, 1, 2)),
                             rtol=1e-5)
  assert set(out["batch_stats"]) == set(variables["params"]) - {"stem_conv", "head"}


def test_evaluation_uses_the_running_averages_and_each_example_alone():
  cfg = _cfg()
  variables, images = _init(cfg, batch=8), _images(cfg, batch=8)
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 2.0, x.shape), jnp.float32),
                       variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  _, out = _captured(cfg, variables, images)
  conv_BHWC = out["intermediates"]["stem_conv"]["__call__"][0]
  np.testing.assert_allclose(
      out["intermediates"]["stem_bn"]["__call__"][0],
      (conv_BHWC - stats["stem_bn"]["mean"]) / np.sqrt(stats["stem_bn"]["var"] + cfg.bn_eps),
      rtol=1e-5, atol=1e-5)
  model = ResNet(cfg)
  batch_BK = model.apply(variables, images)
  alone_1K = model.apply(variables, images[:1])
  np.testing.assert_allclose(batch_BK[:1], alone_1K, rtol=1e-5, atol=1e-6)
  # Training mode, by contrast, normalizes by the batch: the others change example 0.
  train_BK, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
  train_1K, _ = model.apply(variables, images[:1], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_BK[:1], train_1K, atol=1e-3)


@pytest.mark.parametrize("block", ["basic", "bottleneck", "single"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no_bn"])
def test_zero_init_residual_starts_every_block_as_its_shortcut(block, batch_norm):
  cfg = _cfg(block=block, batch_norm=batch_norm, zero_init_residual=True,
             stage_depths=(2, 2))
  variables, images = _init(cfg), _images(cfg)
  _, out = _captured(cfg, variables, images)
  captured = out["intermediates"]
  last = {"basic": 2, "bottleneck": 3, "single": 1}[block]
  last_name = f"bn{last}" if batch_norm else f"conv{last}"
  stem_name = "stem_bn" if batch_norm else "stem_conv"
  previous = jax.nn.relu(captured[stem_name]["__call__"][0])
  for s in (1, 2):
    for b in (1, 2):
      mine = captured[f"stage{s}_block{b}"]
      np.testing.assert_array_equal(mine[last_name]["__call__"][0], 0.0)
      projection = mine.get("proj_bn" if batch_norm else "proj_conv")
      shortcut = previous if projection is None else projection["__call__"][0]
      assert (projection is None) == (s == 1 and block != "bottleneck" or b == 2)
      output = mine["__call__"][0]
      np.testing.assert_allclose(output, jax.nn.relu(shortcut), rtol=1e-6, atol=1e-6)
      previous = output


def test_roles_and_logical_axes_come_from_the_names():
  cfg = _cfg(block="bottleneck")
  variables = ResNet(cfg).init(jax.random.key(0), _images(cfg))
  specs = nn.get_partition_spec(variables["params"])
  kinds = param_roles.kinds(param_roles.label(specs))
  flat = {jax.tree_util.keystr(p, simple=True, separator="/"): k
          for p, k in jax.tree_util.tree_leaves_with_path(kinds)}
  for name, kind in flat.items():
    leaf = name.rsplit("/", 1)[-1]
    expected = {"kernel": "hidden", "scale": "vector", "bias": "vector"}[leaf]
    if name.startswith("head/"):
      expected = "readout" if leaf == "kernel" else "vector"
    assert kind == expected, name
  assert tuple(specs["stem_conv"]["kernel"]) == ("height", "width", "channels_in", "channels")
  assert tuple(specs["head"]["kernel"]) == ("channels", "vocab")
  # Every activation's axes too: under a table naming only these, nothing is unknown.
  names = ("batch", "height", "width", "channels", "channels_in", "vocab")
  with nn.logical_axis_rules([(n, None) for n in names]):
    ResNet(cfg).apply(nn.meta.unbox(variables), _images(cfg), train=True,
                      mutable=["batch_stats"])
  with nn.logical_axis_rules([(n, None) for n in names if n != "channels"]):
    with pytest.raises(ValueError, match="logical axis 'channels' of an activation"):
      ResNet(cfg).apply(nn.meta.unbox(variables), _images(cfg))


def test_bfloat16_computes_with_float32_parameters_and_logits():
  cfg32 = _cfg()
  cfg16 = _cfg(dtype="bfloat16")
  variables, images = _init(cfg16), _images(cfg16)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits_BK, out = ResNet(cfg16).apply(variables, images, train=True,
                                       mutable=["batch_stats", "intermediates"])
  assert logits_BK.dtype == jnp.float32
  assert out["intermediates"]["stage2_block2"]["block_output"][0].dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(out["batch_stats"])} == {jnp.dtype(jnp.float32)}
  reference_BK, _ = ResNet(cfg32).apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits_BK, reference_BK, rtol=0.1, atol=0.1)


def test_rematerialized_blocks_give_the_same_loss_gradients_and_statistics():
  results = []
  for remat in ("none", "full"):
    cfg = _cfg(remat=remat)
    variables, images = _init(cfg), _images(cfg)

    def loss(params):
      logits, state = ResNet(cfg).apply({**variables, "params": params}, images, train=True,
                                        mutable=["batch_stats"])
      return jnp.mean(logits ** 2), state
    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"]))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert resnet_family.for_cost_analysis(_cfg(remat="full"), False, 1).remat == "none"
  assert resnet_family.for_cost_analysis(_cfg(remat="full"), True, 1).remat == "full"


BAD = [
    ({"stage_depths": (1, 1), "stage_widths": (8,)}, "differ in length; give one width"),
    ({"stage_depths": (), "stage_widths": ()}, "model.stage_depths is empty"),
    ({"stage_widths": (8, 0)}, r"model.stage_widths=\(8, 0\) must hold positive integers"),
    ({"block": "wide"}, "model.block='wide' is unknown; choose one of"),
    ({"stem": "tiny"}, "model.stem='tiny' is unknown"),
    ({"remat": "most"}, "model.remat='most' is unknown"),
    ({"image_size": 0}, "model.image_size=0 must be positive"),
    ({"bn_momentum": 1.0}, r"model.bn_momentum=1.0 must be in \[0, 1\)"),
    ({"zero_init_residual": True, "skip": False}, "without shortcuts"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_bad_configs_are_refused_in_one_line(changes, message):
  with pytest.raises(ValueError, match=message) as error:
    _cfg(**changes)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("module,name,skip", [(resnet_tiny, "resnet", True),
                                              (vgg_tiny, "vgg", False)])
def test_tiny_configs_build_their_family_for_classification(module, name, skip):
  config = module.get_config()
  task = task_lib.make_task(config)
  assert task.family is families.get(name) and task.unit == "example"
  cfg = task.model_config
  assert cfg.skip is skip and isinstance(cfg, ResNetConfig)
  assert task.describe({})["flops_per_example"]["chinchilla"] > 0
  # Lists (a JSON record, the command line) become the same config.
  fields = families.model_fields(config)
  fields["stage_widths"] = list(fields["stage_widths"])
  assert task.family.from_run_config(fields, config) == cfg
  digits = {"source": "digits", "image_shape": [8, 8, 1], "label_range": [0, 9]}
  task.family.check_data(cfg, digits, 8)
  with pytest.raises(ValueError, match="set model.channels=3"):
    task.family.check_data(cfg, {**digits, "image_shape": [8, 8, 3]}, 8)


def test_shape_rule_grows_every_width_and_keeps_depth():
  base = ResNetConfig(stage_depths=(1, 2), stage_widths=(16, 32), stem_width=16)
  shapes = list(resnet_family.shape_candidates(base, aspect_ratio=64, head_size=8,
                                               max_steps=4))
  assert [s.stem_width for s in shapes] == [8, 16, 24, 32]
  assert [s.stage_widths for s in shapes] == [(8, 16), (16, 32), (24, 48), (32, 64)]
  assert all(s.stage_depths == base.stage_depths for s in shapes)
  totals = [counting.param_counts(s)["total"] for s in shapes]
  assert totals == sorted(totals) and len(set(totals)) == 4
  assert resnet_family.shape_overrides(shapes[2]) == {"model.stage_widths": (24, 48),
                                                      "model.stem_width": 24}
