"""Exact parameter counts and training FLOPs per example of the convolutional families.

Parameter groups (they partition the ``params`` collection exactly; BatchNorm's running mean
and variance are model state in ``batch_stats``, not parameters, and are not counted, as
torchvision's buffers are not):
  embedding      0 (no lookup tables)
  non_embedding  the stem and every stage: conv kernels, BatchNorm scales and biases (or conv
                 biases without BatchNorm), projection shortcuts
  head           the classifier: C x K kernel and K bias
With 1,000 classes and the ImageNet stem this gives torchvision's ResNet-18 11,689,512,
ResNet-34 21,797,672 and ResNet-50 25,557,032.

N under each convention:
  kaplan      non_embedding (here: everything but the classifier)
  chinchilla  every parameter
  palm        the weights that enter a matmul or conv: conv kernels and the head kernel (no
              BatchNorm, no biases)

Training FLOPs per example are 3 x forward (backward is twice forward), and forward is 2 x the
multiply-accumulates of every conv and of the head, each conv's output size following from
``image_size``, the strides and "SAME" padding. A conv's weights are reused at every output
position, so 6N does not describe its compute; kaplan, chinchilla and palm therefore all get
this one count. BatchNorm, ReLU, the residual adds and the pooling (elementwise work, a few
percent of a conv) are left out. ResNet-50 at 224 x 224 comes to 4.09 G multiply-accumulates
forward, torchvision's figure. XLA's cost analysis (config.json's ``measured``) counts only
the taps of a "SAME" conv that land inside the image, so on small images it reports less
(resnet_tiny on 8x8 digits: 75% of this count; at 224 x 224 ResNet-18 93%, ResNet-50 98%).
"""

import math

from isoflop.models.resnet.model import EXPANSION, ResNetConfig


def _conv(cfg: ResNetConfig, size: int, cin: int, cout: int) -> int:
  """Parameters of a conv and what normalizes it: kernel, then BN scale+bias or conv bias."""
  return size * size * cin * cout + (2 * cout if cfg.batch_norm else cout)


def _down(side: int, stride: int) -> int:
  return math.ceil(side / stride)  # "SAME" padding


def convs(cfg: ResNetConfig) -> list[tuple[str, int, int, int, int]]:
  """Every conv in order, as (group, kernel size, in channels, out channels, output side):
  group "stem" or "stage_<s>"."""
  out = []
  side = cfg.image_size
  imagenet = cfg.stem == "imagenet"
  side = _down(side, 2 if imagenet else 1)
  out.append(("stem", 7 if imagenet else 3, cfg.channels, cfg.stem_width, side))
  if imagenet:
    side = _down(side, 2)  # the 3x3 stride-2 max-pool
  cin = cfg.stem_width
  expansion = EXPANSION[cfg.block]
  for s, (depth, width) in enumerate(zip(cfg.stage_depths, cfg.stage_widths), start=1):
    group = f"stage_{s}"
    for b in range(depth):
      stride = 2 if s > 1 and b == 0 else 1
      if stride == 2 and cfg.downsample == "maxpool":
        side, stride = _down(side, 2), 1  # pooled before the block, which then keeps the size
      strided = _down(side, stride)
      cout = expansion * width
      if cfg.block == "basic":
        out += [(group, 3, cin, width, strided), (group, 3, width, cout, strided)]
      elif cfg.block == "bottleneck":
        out += [(group, 1, cin, width, side), (group, 3, width, width, strided),
                (group, 1, width, cout, strided)]
      else:
        out.append((group, 3, cin, cout, strided))
      if cfg.skip and (stride != 1 or cin != cout):
        out.append((group, 1, cin, cout, strided))  # the projection shortcut
      side, cin = strided, cout
  return out


def param_counts(cfg: ResNetConfig, *, padded: bool = False) -> dict[str, int]:
  """Exact counts of the initialized ``params`` (``padded`` changes nothing: no vocabulary).
  Besides the family's keys, ``stem`` and ``stage_<s>`` per stage."""
  del padded
  groups: dict[str, int] = {"stem": 0}
  groups.update({f"stage_{s}": 0 for s in range(1, len(cfg.stage_depths) + 1)})
  for group, size, cin, cout, _ in convs(cfg):
    groups[group] += _conv(cfg, size, cin, cout)
  non_embedding = sum(groups.values())
  head = cfg.out_widths[-1] * cfg.num_classes + cfg.num_classes
  total = non_embedding + head
  return {"embedding": 0, "non_embedding": non_embedding, "head": head, "total": total,
          "active": total, **groups}


def n_by_convention(cfg: ResNetConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  kernels = sum(size * size * cin * cout for _, size, cin, cout, _ in convs(cfg))
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": kernels + cfg.out_widths[-1] * cfg.num_classes}


def forward_macs(cfg: ResNetConfig) -> int:
  """Multiply-accumulates of one example's forward pass: every conv and the head."""
  convolutions = sum(side * side * size * size * cin * cout
                     for _, size, cin, cout, side in convs(cfg))
  return convolutions + cfg.out_widths[-1] * cfg.num_classes


def flops_per_example(cfg: ResNetConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs per example (``seq_len`` is not used: the unit is one image)."""
  del seq_len
  training = 3.0 * 2.0 * forward_macs(cfg)
  return {"kaplan": training, "chinchilla": training, "palm": training}
