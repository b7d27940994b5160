"""Image classification data for the vision families: scikit-learn's 8x8 digits, or a TFDS
image dataset with ``image`` and ``label`` features. Batches are ``{"image": float32[B, H, W,
C], "label": int32[B]}`` (with mixup also ``label_mix`` and ``mix``), in an order set by the
seed alone (grain, as for text); the held-out images do not depend on the seed.

Pixels are scaled to [0, 1] and, with ``data.normalize``, standardized per channel by the
training split's mean and standard deviation. Training batches can be augmented
(``data.augment``): a random crop of the image zero-padded by ``crop_padding`` pixels, a
horizontal flip with probability 1/2, and mixup (Zhang et al. 2018: the image blended with
another training image by a weight drawn from Beta(alpha, alpha); the loss is blended alike).
Each draw comes from a NumPy generator seeded by (seed, example index in the run), so a step's
augmentations depend on the seed and the step alone (resume stays bitwise); held-out images are
never augmented.
"""

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from isoflop.train.data import fingerprint

_AUGMENT = 0xA06  # generator domain of the training augmentations


@dataclasses.dataclass(frozen=True)
class Augment:
  crop_padding: int = 0  # 0: no random crop
  flip: bool = False  # horizontal flips (off for digits and text-like images)
  mixup_alpha: float = 0.0  # 0: no mixup

  def __post_init__(self):
    if self.crop_padding < 0 or self.mixup_alpha < 0:
      raise ValueError(f"data.augment.crop_padding={self.crop_padding} and "
                       f"data.augment.mixup_alpha={self.mixup_alpha} must be >= 0")


class ImageBatches:
  """Training and held-out batches of an image source: the split, the seed-set order, the
  standardization and the augmentations. A source supplies ``_examples(ids, rngs)``: pixels in
  [0, 1] (float32[n, H, W, C]) and labels of the examples ``ids``, with each example's
  generator (``None`` for held-out images) for any random crop of its own."""

  def _split(self, count: int) -> None:
    # The held-out split depends on the data alone (a fixed seed), so runs with different
    # seeds are evaluated on the same images; only the training order follows the seed.
    order = np.random.default_rng(0xE7A1).permutation(count)
    n_eval = int(round(self.eval_fraction * len(order)))
    self._eval_ids, self._train_ids = order[:n_eval], order[n_eval:]
    self.num_train_examples, self.num_eval_examples = len(self._train_ids), n_eval
    self._order = grain.MapDataset.range(self.num_train_examples).shuffle(
        seed=self.seed).repeat(None)

  def _fit_stats(self, ids) -> None:
    """Per-channel mean and standard deviation of the (training) images ``ids``."""
    pixels = self._examples(ids, None)[0].astype(np.float64)
    channels = pixels.shape[-1]
    self.mean_C = pixels.mean(axis=(0, 1, 2)) if self.normalize else np.zeros(channels)
    self.std_C = (np.maximum(pixels.std(axis=(0, 1, 2)), 1e-6) if self.normalize
                  else np.ones(channels))

  def _standardize(self, image_BHWC: np.ndarray) -> np.ndarray:
    return ((image_BHWC - self.mean_C) / self.std_C).astype(np.float32)

  def _augmented(self, image_HWC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pad = self.augment.crop_padding
    if pad:
      padded = np.pad(image_HWC, ((pad, pad), (pad, pad), (0, 0)))
      top, left = rng.integers(0, 2 * pad + 1, 2)
      image_HWC = padded[top:top + image_HWC.shape[0], left:left + image_HWC.shape[1]]
    if self.augment.flip and rng.random() < 0.5:
      image_HWC = image_HWC[:, ::-1]
    return image_HWC

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    ids = self._train_ids[[self._order[int(i)] for i in indices]]
    rngs = [np.random.default_rng([self.seed, _AUGMENT, int(i)]) for i in indices]
    images, labels = self._examples(ids, rngs)
    if not (self.augment.crop_padding or self.augment.flip or self.augment.mixup_alpha):
      return {"image": self._standardize(images), "label": labels}
    out = np.empty_like(images)
    partners, mix = labels.copy(), np.ones(len(ids), np.float32)
    for row, rng in enumerate(rngs):
      out[row] = self._augmented(images[row], rng)
      if self.augment.mixup_alpha:
        other = self._train_ids[int(rng.integers(self.num_train_examples))]
        mix[row] = rng.beta(self.augment.mixup_alpha, self.augment.mixup_alpha)
        other_images, other_labels = self._examples([other], [rng])
        out[row] = mix[row] * out[row] + (1.0 - mix[row]) * self._augmented(other_images[0],
                                                                             rng)
        partners[row] = other_labels[0]
    batch = {"image": self._standardize(out), "label": labels}
    if self.augment.mixup_alpha:
      batch.update(label_mix=partners, mix=mix)
    return batch

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    ids = self._eval_ids[np.asarray(indices) % max(self.num_eval_examples, 1)]
    images, labels = self._examples(ids, None)
    batch = {"image": self._standardize(images), "label": labels}
    if self.augment.mixup_alpha:  # the same keys as training batches, unmixed
      batch.update(label_mix=batch["label"], mix=np.ones(len(ids), np.float32))
    return batch

  def _description(self, image_shape, label_range) -> dict[str, Any]:
    return {**self.info, "num_classes": self.num_classes, "image_shape": list(image_shape),
            "label_range": list(label_range),
            "channel_mean": [float(m) for m in self.mean_C],
            "channel_std": [float(s) for s in self.std_C],
            "augment": dataclasses.asdict(self.augment),
            "train_examples": self.num_train_examples, "eval_examples": self.num_eval_examples}


@dataclasses.dataclass
class ImageSource(ImageBatches):
  """A dataset held in memory as uint8 images."""

  images: np.ndarray  # uint8[N, H, W, C]
  labels: np.ndarray  # int[N]
  num_classes: int
  seed: int
  eval_fraction: float
  info: dict[str, Any]
  normalize: bool = False
  augment: Augment = Augment()
  vocab_size = None
  entropy_nats = None

  def __post_init__(self):
    self._split(len(self.labels))
    self._fit_stats(self._train_ids)

  def _examples(self, ids, rngs):
    del rngs  # every image already has the model's size
    return (self.images[ids].astype(np.float32) / 255.0,
            np.asarray(self.labels)[ids].astype(np.int32))

  def digest(self) -> dict[str, str]:
    """The images and labels, in order: with the config, they define the split and the order;
    and what is done to them."""
    return {"images": fingerprint.array_digest(self.images),
            "labels": fingerprint.array_digest(np.asarray(self.labels, np.int64)),
            "num_classes": str(self.num_classes),
            "preprocessing": f"normalize={self.normalize} {self.augment!r}"}

  def describe(self) -> dict[str, Any]:
    return self._description(self.images.shape[1:],
                             (int(np.min(self.labels)), int(np.max(self.labels))))


def augment_from_config(cfg) -> Augment:
  block = cfg.get("augment") or {}
  return Augment(crop_padding=int(block.get("crop_padding", 0)),
                 flip=bool(block.get("flip", False)),
                 mixup_alpha=float(block.get("mixup_alpha", 0.0)))


def digits(seed: int, cfg) -> ImageSource:
  """1,797 8x8 handwritten digits shipped with scikit-learn (values 0-16, scaled to 0-255)."""
  from sklearn.datasets import load_digits
  data = load_digits()
  images = (data.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
  return ImageSource(images, data.target, 10, seed, cfg.eval_fraction, {"source": "digits"},
                     bool(cfg.get("normalize", False)), augment_from_config(cfg))


IN_MEMORY_LIMIT_BYTES = 1 << 30  # larger image datasets are read on demand


def from_tfds(spec: str, source, seed: int, cfg, image_size: int | None):
  """A TFDS image dataset: in memory when its images share one shape and fit in
  ``IN_MEMORY_LIMIT_BYTES``, unless ``data.stream_images``; else read on demand and fitted to
  the model's ``image_size`` (``images_stream``)."""
  features = source.dataset_info.features
  label = features["label"]
  shape = tuple(getattr(features["image"], "shape", ()) or ())
  fixed = bool(shape) and None not in shape
  size_bytes = len(source) * int(np.prod(shape)) if fixed else None
  info = {"source": f"tfds:{spec}"}
  augment, normalize = augment_from_config(cfg), bool(cfg.get("normalize", False))
  if cfg.get("stream_images") or not fixed or size_bytes > IN_MEMORY_LIMIT_BYTES:
    if not hasattr(label, "num_classes"):
      raise ValueError(f"tfds:{spec}'s label is not a ClassLabel; a streamed dataset needs "
                       "its number of classes")
    if image_size is None:
      raise ValueError(f"tfds:{spec} is read on demand and its images are fitted to the "
                       "model's; set model.image_size")
    from isoflop.train.data import images_stream
    identity = (f"tfds:{spec}|split={cfg.tfds_split}|n={len(source)}|"
                f"{source.dataset_info.version}")
    return images_stream.StreamedImageSource(
        source, identity, int(image_size), int(label.num_classes), seed, cfg.eval_fraction,
        {**info, "streamed": True}, normalize, augment)
  records = source.__getitems__(list(range(len(source))))
  images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.array([int(r["label"]) for r in records])
  num_classes = int(label.num_classes) if hasattr(label, "num_classes") \
      else int(labels.max()) + 1
  return ImageSource(images, labels, num_classes, seed, cfg.eval_fraction, info, normalize,
                     augment)
