"""A TFDS image dataset read on demand: images of any size, fitted to the model's.

For datasets too large to hold in memory or whose images differ in size (ImageNet), each
batch reads its records through the random-access ``tfds.data_source`` (array_record) and
fits every image to ``image_size`` x ``image_size``: the shorter side resized to
``image_size`` (bilinear, Pillow), then a square crop, at the centre for held-out images and
at a position drawn from the example's generator for training ones, so the crops too depend
on the seed and the step alone. The per-channel statistics come from the first
``STATS_SAMPLE`` training images (centre crops); the labels' range from the ``ClassLabel``
feature. The split, order and augmentations are ``images.ImageBatches``'.
"""

import dataclasses
from typing import Any

import numpy as np

from isoflop.train.data import images as images_lib

STATS_SAMPLE = 1024


def fit_image(image_HWC: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
  """uint8 image_HWC -> uint8[size, size, C]: shorter side to ``size``, then a square crop
  (centred without ``rng``)."""
  height, width = image_HWC.shape[:2]
  if (height, width) != (size, size):
    from PIL import Image
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    channels = [np.asarray(Image.fromarray(image_HWC[..., c]).resize(
        (new_w, new_h), Image.BILINEAR)) for c in range(image_HWC.shape[-1])]
    image_HWC = np.stack(channels, axis=-1)
    height, width = new_h, new_w
  if rng is None or (height, width) == (size, size):  # no draw when there is nothing to pick
    top, left = (height - size) // 2, (width - size) // 2
  else:
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
  return image_HWC[top:top + size, left:left + size]


@dataclasses.dataclass
class StreamedImageSource(images_lib.ImageBatches):
  source: Any  # tfds.data_source: records with "image" (uint8 HWC or HW) and "label"
  identity: str  # the dataset's name, split, size and version
  image_size: int
  num_classes: int
  seed: int
  eval_fraction: float
  info: dict[str, Any]
  normalize: bool = False
  augment: images_lib.Augment = images_lib.Augment()
  vocab_size = None
  entropy_nats = None

  def __post_init__(self):
    self._split(len(self.source))
    self._fit_stats(self._train_ids[:STATS_SAMPLE])

  def _examples(self, ids, rngs):
    records = self.source.__getitems__([int(i) for i in ids])
    pixels, labels = [], []
    for row, record in enumerate(records):
      image = np.asarray(record["image"], np.uint8)
      image = image[..., None] if image.ndim == 2 else image
      pixels.append(fit_image(image, self.image_size, None if rngs is None else rngs[row]))
      labels.append(int(record["label"]))
    return np.stack(pixels).astype(np.float32) / 255.0, np.asarray(labels, np.int32)

  def digest(self) -> dict[str, str]:
    """The dataset's identity (reading every image to hash it would be a pass over the data)
    and what is done to its images."""
    return {"tfds": self.identity, "num_classes": str(self.num_classes),
            "preprocessing": f"fit={self.image_size} normalize={self.normalize} "
                             f"{self.augment!r}"}

  def describe(self) -> dict[str, Any]:
    channels = len(self.mean_C)
    return {**self._description((self.image_size, self.image_size, channels),
                                (0, self.num_classes - 1)), "streamed": True}
