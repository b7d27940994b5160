"""Residual and plain convolutional networks (ResNet, He et al. 2016; VGG-style stacks), in pure
Flax Linen.

One module serves both families: ``skip=True`` is a ResNet (identity shortcuts, and a 1x1
projection with BatchNorm where a block changes the shape), ``skip=False`` the same stack
without shortcuts, the "plain" networks the ResNet paper compares against and, with
``downsample="maxpool"`` and ``block="single"``, VGG's conv-conv-pool stages. Layout follows
torchvision's ResNet (v1.5: a bottleneck strides in its 3x3 conv; its output is 4 x its width;
convolutions feeding a BatchNorm have no bias; kernels He-normal over fan-out) so that the
published parameter counts come out exactly. Padding is "SAME" everywhere, which gives
torchvision's spatial sizes at 224 x 224 (a stride-2 conv or pool halves a side, rounding up).

BatchNorm statistics live in the ``batch_stats`` collection (model state, carried by the
trainer). They are synchronized across data-parallel devices without an ``axis_name``: the
training step is one jit over global arrays sharded on a mesh, so a mean over the batch axis
already spans every device's examples (XLA inserts the all-reduce).

Notebook use needs nothing else::

    from isoflop.models.resnet import ResNet, ResNetConfig
    model = ResNet(ResNetConfig(stage_depths=(1, 1), stage_widths=(8, 16)))
    variables = model.init(jax.random.key(0), image_BHWC)
    logits_BK, state = model.apply(variables, image_BHWC, train=True, mutable=["batch_stats"])
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical
from isoflop.models.transformer import DTYPES, REMAT_POLICIES

BLOCKS = ("basic", "bottleneck", "single")
STEMS = ("imagenet", "cifar")
DOWNSAMPLES = ("stride", "maxpool")
INITS = ("he_fan_out", "he_fan_in")
EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}  # a block's output channels / its width
IMAGE = ("batch", "height", "width", "channels")
KERNEL = ("height", "width", "channels_in", "channels")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Shape and behaviour of the network; the defaults are a small CIFAR-style ResNet-18.

  Blocks: ``basic`` two 3x3 convs, ``bottleneck`` 1x1 (width), 3x3 (width), 1x1 (4 x width),
  ``single`` one 3x3 conv (VGG's unit). Stems: ``imagenet`` a 7x7 stride-2 conv and a 3x3
  stride-2 max-pool, ``cifar`` a 3x3 stride-1 conv. Stages after the first halve the spatial
  size: by a stride-2 first block (``downsample="stride"``) or a 2x2 max-pool before it
  (``"maxpool"``). ``zero_init_residual`` starts each block's last BatchNorm scale (or, without
  BatchNorm, its last conv kernel) at zero, so every block starts as its shortcut (Goyal et
  al. 2017).
  """

  num_classes: int = 10
  image_size: int = 8  # square images of image_size x image_size pixels
  channels: int = 1  # input channels (1 grey, 3 RGB)
  block: str = "basic"
  stage_depths: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
  stage_widths: tuple[int, ...] = (64, 128, 256, 512)  # width per stage (see EXPANSION)
  stem: str = "cifar"
  stem_width: int = 64
  skip: bool = True  # False: no shortcuts (a plain / VGG-style network)
  downsample: str = "stride"
  batch_norm: bool = True
  bn_momentum: float = 0.9  # Flax's convention: running = m * running + (1 - m) * batch
  bn_eps: float = 1e-5
  zero_init_residual: bool = False
  remat: str = "none"  # per block (models/transformer.py REMAT_POLICIES)
  init: str = "he_fan_out"  # conv kernels: He normal over fan-out (torchvision) or fan-in
  dtype: str = "float32"  # compute dtype of convs and activations
  param_dtype: str = "float32"

  def __post_init__(self):
    # Tuples, so the config stays hashable when a JSON record or the command line gave lists.
    for name in ("stage_depths", "stage_widths"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("num_classes", "image_size", "channels", "stem_width"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if not self.stage_depths:
      raise ValueError("model.stage_depths is empty; give at least one stage, e.g. (2, 2)")
    if len(self.stage_depths) != len(self.stage_widths):
      raise ValueError(f"model.stage_depths={self.stage_depths} and model.stage_widths="
                       f"{self.stage_widths} differ in length; give one width per stage")
    for name in ("stage_depths", "stage_widths"):
      if any(not isinstance(v, int) or v <= 0 for v in getattr(self, name)):
        raise ValueError(f"model.{name}={getattr(self, name)} must hold positive integers")
    choices = {"block": BLOCKS, "stem": STEMS, "downsample": DOWNSAMPLES, "init": INITS,
               "remat": tuple(REMAT_POLICIES), "dtype": DTYPES, "param_dtype": DTYPES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"model.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ValueError(f"model.bn_momentum={self.bn_momentum} must be in [0, 1) (Flax's "
                       "convention: 0.9 is torchvision's momentum=0.1)")
    if self.bn_eps <= 0:
      raise ValueError(f"model.bn_eps={self.bn_eps} must be positive")
    if self.zero_init_residual and not self.skip:
      raise ValueError("model.zero_init_residual=True without shortcuts (skip=False) would "
                       "zero every block's output; set one of them differently")

  @property
  def out_widths(self) -> tuple[int, ...]:
    """Output channels of each stage: its width times the block's expansion."""
    return tuple(EXPANSION[self.block] * w for w in self.stage_widths)


@dataclasses.dataclass(frozen=True)
class VggConfig(ResNetConfig):
  """``model.family=vgg``: the same network with VGG's defaults, no shortcuts and a max-pool
  between stages (conv-conv-pool with basic blocks; ``block="single"`` for VGG's own stacks
  of single convs, e.g. stage_depths (1, 1, 2, 2, 2) for VGG-11's convs)."""

  skip: bool = False
  downsample: str = "maxpool"


def kernel_init(cfg: ResNetConfig):
  """He normal (untruncated, as torchvision's ``kaiming_normal_``) for ReLU networks."""
  mode = "fan_out" if cfg.init == "he_fan_out" else "fan_in"
  return nn.initializers.variance_scaling(2.0, mode, "normal")


def _conv(cfg: ResNetConfig, features: int, size: int, stride: int, name: str, *,
          zero: bool = False) -> nn.Conv:
  """A size x size "SAME" conv; biased only where no BatchNorm follows it."""
  init = nn.initializers.zeros if zero else kernel_init(cfg)
  return nn.Conv(features, (size, size), strides=(stride, stride), padding="SAME",
                 use_bias=not cfg.batch_norm, dtype=jnp.dtype(cfg.dtype),
                 param_dtype=jnp.dtype(cfg.param_dtype),
                 kernel_init=nn.with_logical_partitioning(init, KERNEL),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("channels",)),
                 name=name)


def _norm(cfg: ResNetConfig, train: bool, name: str, *, zero: bool = False):
  """BatchNorm over (batch, height, width), or the identity without ``batch_norm``."""
  if not cfg.batch_norm:
    return lambda x: x
  scale = nn.initializers.zeros if zero else nn.initializers.ones
  return nn.BatchNorm(use_running_average=not train, momentum=cfg.bn_momentum,
                      epsilon=cfg.bn_eps, dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype),
                      scale_init=nn.with_logical_partitioning(scale, ("channels",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("channels",)),
                      name=name)


class Block(nn.Module):
  """One block: x_BHWC -> relu(branch(x) + shortcut(x)) (without ``skip``: relu(branch(x))).
  ``stride`` 2 halves the spatial size; the shortcut is a 1x1 conv + BatchNorm where the shape
  changes, the identity otherwise."""

  config: ResNetConfig
  width: int
  stride: int
  train: bool

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    cfg = self.config
    out = EXPANSION[cfg.block] * self.width
    zero = cfg.zero_init_residual
    # (kernel size, output channels, stride) of each conv of the branch, in order.
    layers = {"basic": [(3, self.width, self.stride), (3, out, 1)],
              "bottleneck": [(1, self.width, 1), (3, self.width, self.stride), (1, out, 1)],
              "single": [(3, out, self.stride)]}[cfg.block]
    h_BHWC = x_BHWC
    for i, (size, features, stride) in enumerate(layers, start=1):
      last = i == len(layers)
      h_BHWC = _conv(cfg, features, size, stride, f"conv{i}",
                     zero=last and zero and not cfg.batch_norm)(h_BHWC)
      h_BHWC = _norm(cfg, self.train, f"bn{i}", zero=last and zero)(h_BHWC)
      if not last:
        h_BHWC = logical.constrain(nn.relu(h_BHWC), IMAGE)
    if cfg.skip:
      shortcut_BHWC = x_BHWC
      if self.stride != 1 or x_BHWC.shape[-1] != out:
        shortcut_BHWC = _conv(cfg, out, 1, self.stride, "proj_conv")(x_BHWC)
        shortcut_BHWC = _norm(cfg, self.train, "proj_bn")(shortcut_BHWC)
      h_BHWC = h_BHWC + shortcut_BHWC
    h_BHWC = logical.constrain(nn.relu(h_BHWC), IMAGE)
    self.sow("intermediates", "block_output", h_BHWC)
    return h_BHWC


class ResNet(nn.Module):
  """image_BHWC (float, [B, image_size, image_size, channels]) -> logits_BK (float32, K =
  num_classes): stem, stages of blocks, global average pool, a dense classifier."""

  config: ResNetConfig

  @nn.compact
  def __call__(self, image_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x_BHWC = logical.constrain(image_BHWC.astype(dtype), IMAGE)
    imagenet = cfg.stem == "imagenet"
    x_BHWC = _conv(cfg, cfg.stem_width, 7 if imagenet else 3, 2 if imagenet else 1,
                   "stem_conv")(x_BHWC)
    x_BHWC = logical.constrain(nn.relu(_norm(cfg, train, "stem_bn")(x_BHWC)), IMAGE)
    if imagenet:
      x_BHWC = nn.max_pool(x_BHWC, (3, 3), strides=(2, 2), padding="SAME")

    block = Block
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    for s, (depth, width) in enumerate(zip(cfg.stage_depths, cfg.stage_widths), start=1):
      stride = 1
      if s > 1 and cfg.downsample == "stride":
        stride = 2
      elif s > 1:
        x_BHWC = nn.max_pool(x_BHWC, (2, 2), strides=(2, 2), padding="SAME")
      for b in range(1, depth + 1):
        x_BHWC = block(cfg, width, stride if b == 1 else 1, train,
                       name=f"stage{s}_block{b}")(x_BHWC)

    # Mean over the image in float32, so a bf16 network pools without rounding drift.
    x_BC = logical.constrain(x_BHWC.astype(jnp.float32).mean(axis=(1, 2)).astype(dtype),
                             ("batch", "channels"))
    # LeCun normal (variance 1 / fan-in: torchvision's uniform default has a third of it).
    logits_BK = nn.Dense(
        cfg.num_classes, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
        dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 ("channels", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
        name="head")(x_BC)
    logits_BK = logical.constrain(logits_BK.astype(jnp.float32), ("batch", "vocab"))
    self.sow("intermediates", "logits", logits_BK)
    return logits_BK
