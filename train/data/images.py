"""Image classification data for the vision families: scikit-learn's 8x8 digits, or a TFDS
image dataset with ``image`` and ``label`` features. Batches are ``{"image": float32[B, H, W,
C] in [0, 1], "label": int32[B]}``, in an order set by the seed alone (grain, as for text); the
held-out images do not depend on the seed."""

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from isoflop.train.data import fingerprint


@dataclasses.dataclass
class ImageSource:
  images: np.ndarray  # uint8[N, H, W, C]
  labels: np.ndarray  # int[N]
  num_classes: int
  seed: int
  eval_fraction: float
  info: dict[str, Any]
  vocab_size = None
  entropy_nats = None

  def __post_init__(self):
    # The held-out split depends on the data alone (a fixed seed), so runs with different
    # seeds are evaluated on the same images; only the training order follows the seed.
    order = np.random.default_rng(0xE7A1).permutation(len(self.labels))
    n_eval = int(round(self.eval_fraction * len(order)))
    self._eval_ids, self._train_ids = order[:n_eval], order[n_eval:]
    self.num_train_examples, self.num_eval_examples = len(self._train_ids), n_eval
    self._order = grain.MapDataset.range(self.num_train_examples).shuffle(
        seed=self.seed).repeat(None)

  def _take(self, ids) -> dict[str, np.ndarray]:
    return {"image": self.images[ids].astype(np.float32) / 255.0,
            "label": self.labels[ids].astype(np.int32)}

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self._take(self._train_ids[[self._order[int(i)] for i in indices]])

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self._take(self._eval_ids[np.asarray(indices) % max(self.num_eval_examples, 1)])

  def digest(self) -> dict[str, str]:
    """The images and labels, in order: with the config, they define the split and the order."""
    return {"images": fingerprint.array_digest(self.images),
            "labels": fingerprint.array_digest(np.asarray(self.labels, np.int64)),
            "num_classes": str(self.num_classes)}

  def describe(self) -> dict[str, Any]:
    return {**self.info, "num_classes": self.num_classes,
            "image_shape": list(self.images.shape[1:]),
            "train_examples": self.num_train_examples, "eval_examples": self.num_eval_examples}


def digits(seed: int, eval_fraction: float) -> ImageSource:
  """1,797 8x8 handwritten digits shipped with scikit-learn (values 0-16, scaled to 0-255)."""
  from sklearn.datasets import load_digits
  data = load_digits()
  images = (data.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
  return ImageSource(images, data.target, 10, seed, eval_fraction, {"source": "digits"})


def from_tfds(spec: str, source, seed: int, eval_fraction: float) -> ImageSource:
  records = source.__getitems__(list(range(len(source))))
  images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.array([int(r["label"]) for r in records])
  features = source.dataset_info.features
  num_classes = int(features["label"].num_classes) if hasattr(features["label"], "num_classes") \
      else int(labels.max()) + 1
  return ImageSource(images, labels, num_classes, seed, eval_fraction, {"source": f"tfds:{spec}"})
