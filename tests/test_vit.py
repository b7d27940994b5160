"""The Vision Transformer family: counts against the initialized tree and the published models,
the two patch embeddings, parameter roles, positions, precision, remat, the family's seams and
bad configs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isoflop.models.vit.family  # noqa: F401  registers model.family=vit
from isoflop.experiments.configs import vit_b16, vit_s16, vit_ti16, vit_tiny
from isoflop.models import families, param_roles
from isoflop.models.vit import Vit, VitConfig, counting
from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib

# Random heads, so logits differ with their inputs (the default head starts at zero).
BASE = VitConfig(num_classes=5, image_size=8, channels=3, patch_size=2, d_model=16,
                 n_layers=2, n_heads=2, head_zero_init=False)


def _image(cfg, batch=2, seed=1):
  return jax.random.normal(jax.random.key(seed),
                           (batch, cfg.image_size, cfg.image_size, cfg.channels))


def _init(cfg):
  return Vit(cfg).init(jax.random.key(0), _image(cfg))


def _size(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("changes", [
    {},
    {"pool": "gap", "positions": "sincos"},
    {"pool": "cls", "positions": "sincos", "patch_embed": "dense"},
    {"pool": "gap", "positions": "learned", "patch_embed": "dense"},
    {"activation": "swiglu", "norm": "rmsnorm", "use_bias": False, "n_kv_heads": 1,
     "d_ff": 24},
], ids=["cls_learned_conv", "gap_sincos", "cls_sincos_dense", "gap_learned_dense",
        "gated_unbiased_gqa"])
def test_counts_equal_the_initialized_tree(changes):
  cfg = dataclasses.replace(BASE, **changes)
  params = nn.meta.unbox(_init(cfg)["params"])
  counts = counting.param_counts(cfg)
  assert counts["total"] == counts["active"] == _size(params)
  assert counts["embedding"] == _size({k: params[k] for k in
                                       ("patch_embed", "position_embed", "cls_token")
                                       if k in params})
  assert counts["non_embedding"] == _size(params["layers"]) + _size(params["final_norm"])
  assert counts["head"] == _size(params["head"])
  assert counts["per_layer"] * cfg.n_layers == _size(params["layers"])
  assert ("position_embed" in params) == (cfg.positions == "learned")
  assert ("cls_token" in params) == (cfg.pool == "cls")
  assert counting.param_counts(cfg, padded=True) == counts


@pytest.mark.parametrize("module, total", [
    (vit_ti16, 5_717_416), (vit_s16, 22_050_664), (vit_b16, 86_567_656),
], ids=["ti16", "s16", "b16"])
def test_published_configs_have_timms_counts(module, total):
  cfg = families.model_config(module.get_config())
  assert counting.param_counts(cfg)["total"] == total  # timm vit_*_patch16_224, 1,000 classes
  shapes = jax.eval_shape(lambda: Vit(cfg).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert _size(nn.meta.unbox(shapes)["params"]) == total
  assert nn.meta.unbox(shapes)["params"]["position_embed"].shape == (197, cfg.d_model)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_conv_and_dense_patch_embeddings_agree(pool):
  conv = dataclasses.replace(BASE, pool=pool, patch_embed="conv")
  dense = dataclasses.replace(conv, patch_embed="dense")
  variables, image = _init(conv), _image(conv)
  np.testing.assert_allclose(Vit(conv).apply(variables, image),
                             Vit(dense).apply(variables, image), rtol=1e-5, atol=1e-6)


def test_roles_follow_the_axes():
  kinds = param_roles.kinds(param_roles.label(nn.get_partition_spec(_init(BASE)["params"])))
  assert kinds["patch_embed"]["kernel"] == "hidden"
  assert kinds["patch_embed"]["bias"] == "vector"
  assert kinds["position_embed"] == "embedding"
  assert kinds["cls_token"] == "vector"
  assert kinds["head"] == {"kernel": "readout", "bias": "vector"}
  assert kinds["layers"]["attention"]["query_kernel"] == "hidden"
  assert kinds["layers"]["mlp_norm"] == {"scale": "vector", "bias": "vector"}
  assert kinds["final_norm"] == {"scale": "vector", "bias": "vector"}


def _swap_two_patches(image):
  """The top-left and bottom-right 2x2 patches exchanged."""
  first, last = image[:, :2, :2], image[:, -2:, -2:]
  return image.at[:, :2, :2].set(last).at[:, -2:, -2:].set(first)


@pytest.mark.parametrize("pool, zero_positions, changes", [
    ("cls", False, True), ("gap", False, True), ("gap", True, False),
], ids=["cls_learned", "gap_learned", "gap_without_positions"])
def test_patch_order_matters_through_the_positions(pool, zero_positions, changes):
  cfg = dataclasses.replace(BASE, pool=pool)
  variables, image = _init(cfg), _image(cfg)
  if zero_positions:  # then attention and the mean are blind to the order
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "position_embed" in jax.tree_util.keystr(path)
        else x, variables)
  logits, swapped = (Vit(cfg).apply(variables, x) for x in (image, _swap_two_patches(image)))
  assert np.allclose(logits, swapped, atol=1e-5) != changes


@pytest.mark.parametrize("table", ["fsdp_tensor", "replicated"])
def test_sharded_forward_equals_the_unsharded_one(table):
  """Every logical axis (images' height/width/channels, the patch kernel's channels_in) has a
  rule, and a data x fsdp x tensor mesh computes the same logits."""
  cfg = dataclasses.replace(BASE, num_classes=6)
  rules = rules_lib.get_rules(table)
  boxed, image = _init(cfg)["params"], _image(cfg, batch=8)
  specs = nn.get_partition_spec(boxed)
  rules_lib.check_names(specs, rules, table)
  mesh = mesh_lib.build_mesh({"data": 2, "fsdp": 2, "tensor": 2},
                             axes=rules_lib.mesh_axes(rules), table=table)
  params = jax.device_put(nn.meta.unbox(boxed), rules_lib.logical_to_sharding(specs, mesh, rules))
  image_sharded = jax.device_put(image, rules_lib.batch_sharding(mesh, rules, image.ndim))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits = jax.jit(lambda p, x: Vit(cfg).apply({"params": p}, x))(params, image_sharded)
  reference = Vit(cfg).apply({"params": nn.meta.unbox(boxed)}, image)
  np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_fp32_params_and_logits():
  cfg = dataclasses.replace(BASE, dtype="bfloat16")
  variables = _init(cfg)
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(variables))} == {jnp.dtype("float32")}
  logits = Vit(cfg).apply(variables, _image(cfg))
  assert logits.dtype == jnp.float32
  reference = Vit(BASE).apply(variables, _image(cfg))
  np.testing.assert_allclose(logits, reference, atol=0.05)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_nothing(remat):
  variables, image = _init(BASE), _image(BASE)

  def loss_and_grads(cfg):
    loss = lambda v: jnp.sum(Vit(cfg).apply(v, image) ** 2)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(variables)

  (loss, grads), (loss_r, grads_r) = (loss_and_grads(BASE),
                                      loss_and_grads(dataclasses.replace(BASE, remat=remat)))
  np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g, g_r, rtol=1e-6, atol=1e-6)


def test_head_starts_at_zero_by_default():
  cfg = dataclasses.replace(BASE, head_zero_init=True)
  np.testing.assert_array_equal(Vit(cfg).apply(_init(cfg), _image(cfg)), 0.0)


def test_family_reads_the_tiny_config_and_counts_per_example():
  config = vit_tiny.get_config()
  family = families.family_of(config)
  cfg = families.model_config(config)
  assert family.name == "vit" and family.unit == "example"
  assert (cfg.n_patches, cfg.n_tokens, cfg.num_classes) == (16, 17, 10)
  flops = family.flops_per_unit(cfg, config.seq_len)
  assert flops == family.flops_per_unit(cfg, 1)  # seq_len means nothing for images
  assert set(flops) == {"kaplan", "chinchilla", "palm"}
  n = family.n_by_convention(cfg)
  assert n["chinchilla"] == counting.param_counts(cfg)["total"]
  assert n["palm"] == n["kaplan"] + 64 * 10 + 2 * 2 * 1 * 64
  unrolled = family.for_cost_analysis(dataclasses.replace(cfg, remat="full"), False, 0)
  assert (unrolled.scan_unroll, unrolled.remat) == (cfg.n_layers, "none")
  config.model.attention = "cudnn"  # the tests run on CPUs
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    families.model_config(config)


def test_analytic_forward_flops_match_xlas_count():
  """chinchilla / 3 against XLA's cost analysis of the unrolled forward, on one image. ReLU:
  XLA counts exact GELU's erf as tens of FLOPs an element, which no convention counts."""
  cfg = dataclasses.replace(BASE, scan_unroll=BASE.n_layers, d_model=64, n_heads=4,
                            activation="relu")
  variables, image = _init(cfg), _image(cfg, batch=1)
  compiled = jax.jit(Vit(cfg).apply).lower(variables, image).compile()
  analysis = compiled.cost_analysis()
  measured = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  analytic = counting.flops_per_example(cfg)["chinchilla"] / 3
  assert measured == pytest.approx(analytic, rel=0.05)  # 2.4% over: norms, softmax


def test_shape_rule_grows_one_head_at_a_time():
  family = families.get("vit")
  base = dataclasses.replace(BASE, positions="sincos", d_ff=32)
  shapes = list(family.shape_candidates(base, aspect_ratio=16, head_size=6, max_heads=6))
  assert [s.d_model for s in shapes] == [12, 24, 36]  # widths not divisible by 4 are skipped
  assert all(s.positions == "sincos" and s.d_ff == 2 * s.d_model for s in shapes)
  assert family.shape_overrides(shapes[-1]) == {"model.d_model": 36, "model.n_layers": 2,
                                                "model.n_heads": 6, "model.d_ff": 72}


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 9}, "image_size=9 is not divisible by model.patch_size=2"),
    ({"patch_size": 0}, "patch_size=0 must be positive"),
    ({"num_classes": 0}, "num_classes=0 must be positive"),
    ({"pool": "max"}, "model.pool='max' is unknown"),
    ({"positions": "rope"}, "model.positions='rope' is unknown"),
    ({"patch_embed": "linear"}, "model.patch_embed='linear' is unknown"),
    ({"positions": "sincos", "d_model": 18, "n_heads": 3}, "needs d_model divisible by 4"),
    ({"n_heads": 3}, "n_heads=3 does not divide model.d_model=16"),
])
def test_bad_configs_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **changes)


def test_images_of_another_size_are_refused():
  with pytest.raises(ValueError, match=r"do not fit the model's .* = \(8, 8, 3\)"):
    Vit(BASE).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
