"""Small TFDS builders inside the package, so the ``tfds:`` path (array_record written by
TFDS, read back with ``tfds.data_source``) is tested for real on a machine that cannot
download. Build one with ``builder(data_dir=DIR).download_and_prepare()``."""

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# TFDS finds a builder's metadata folder from its top-level package, which for a namespace
# package like ``isoflop`` fails; point it at this folder directly.
_HERE = epath.Path(os.path.dirname(os.path.abspath(__file__)))
_CODE = _HERE / os.path.basename(__file__)

_WORDS = ("the king and queen of a far country went to the sea where ships sail under "
          "stars while poets write long songs about love war and bread").split()


class IsoflopTinyText(tfds.core.GeneratorBasedBuilder):
  """300 short English-like documents under the feature ``text``."""

  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = _HERE
  code_path = _CODE

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(300, seed=0),
            "validation": self._generate_examples(30, seed=1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      sentences = [" ".join(rng.choice(_WORDS, size=rng.integers(4, 12))) + "."
                   for _ in range(rng.integers(2, 6))]
      yield i, {"text": " ".join(sentences).capitalize()}


class IsoflopTinyImages(tfds.core.GeneratorBasedBuilder):
  """200 8x8 grey images of 4 classes (a bright quadrant marks the class) under the features
  ``image`` and ``label``, as an image dataset's layout."""

  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = _HERE
  code_path = _CODE

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(200)}

  def _generate_examples(self, count):
    rng = np.random.default_rng(0)
    for i in range(count):
      label = int(rng.integers(4))
      image = rng.integers(0, 64, size=(8, 8, 1)).astype(np.uint8)
      row, col = divmod(label, 2)
      image[row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 128
      yield i, {"image": image, "label": label}
