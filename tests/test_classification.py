"""Image classification: the objective (label smoothing, mixup, padding weights, top-5) and
the image pipeline (normalization, deterministic augmentation, held-out images untouched)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments.configs import base
from isoflop.models.objectives import classification
from isoflop.train import data as data_lib


def _ce(logits_BK, targets_BK):
  return -(targets_BK * jax.nn.log_softmax(logits_BK)).sum(-1)


def test_smoothing_mixup_and_padding_weight_the_loss_exactly():
  logits = jax.random.normal(jax.random.key(0), (4, 10))
  labels = jnp.array([1, 3, -1, 9])
  objective = classification.Classification(label_smoothing=0.1)
  terms = objective.terms(logits, {"label": labels})
  smooth = 0.9 * jax.nn.one_hot(jnp.maximum(labels, 0), 10) + 0.01
  expected = _ce(logits, smooth)[jnp.array([0, 1, 3])].mean()
  assert float(terms.weight) == 3.0  # the -1 row is padding
  assert float(terms.objective) == pytest.approx(float(expected), rel=1e-6)
  mix = jnp.array([0.25, 1.0, 1.0, 0.5])
  mixed = objective.terms(logits, {"label": labels, "label_mix": jnp.array([2, 3, 0, 0]),
                                   "mix": mix})
  other = 0.9 * jax.nn.one_hot(jnp.array([2, 3, 0, 0]), 10) + 0.01
  blended = mix[:, None] * smooth + (1 - mix[:, None]) * other
  assert float(mixed.objective) == pytest.approx(
      float(_ce(logits, blended)[jnp.array([0, 1, 3])].mean()), rel=1e-6)


def test_held_out_metrics_top1_top5_and_plain_loss():
  logits = jnp.tile(jnp.arange(10.0), (3, 1))  # class 9 first, then 8, 7, ...
  labels = jnp.array([9, 5, 0])
  metrics = classification.Classification(label_smoothing=0.2).eval_metrics(
      logits, {"label": labels})
  assert float(metrics["accuracy"][0]) == pytest.approx(1 / 3)
  assert float(metrics["top5_accuracy"][0]) == pytest.approx(2 / 3)  # 9 and 5, not 0
  plain = -jax.nn.log_softmax(logits)[jnp.arange(3), labels].mean()
  assert float(metrics["loss"][0]) == pytest.approx(float(plain), rel=1e-6)  # no smoothing
  few = classification.Classification().eval_metrics(logits[:, :5], {"label": labels % 5})
  assert "top5_accuracy" not in few


def _digits(**augment):
  c = base.get_config()
  c.data.source, c.data.eval_fraction, c.data.normalize = "digits", 0.2, True
  c.data.augment.update(augment)
  return data_lib.make_source(c)


def test_images_are_standardized_and_augmented_deterministically_by_index():
  plain = _digits()
  train = plain.batch(np.arange(plain.num_train_examples))["image"]
  assert abs(train.mean()) < 1e-5 and train.std() == pytest.approx(1.0, abs=1e-4)
  augmented = _digits(crop_padding=2, flip=True, mixup_alpha=0.4)
  batch = augmented.batch(np.arange(16))
  assert set(batch) == {"image", "label", "label_mix", "mix"}
  assert not np.allclose(batch["image"], plain.batch(np.arange(16))["image"])
  assert (0 < batch["mix"]).all() and (batch["mix"] < 1).all()
  again = augmented.batch(np.arange(8, 24))  # example k is the same in any batch layout
  for key in batch:
    np.testing.assert_array_equal(batch[key][8:], again[key][:8])
  held_out = augmented.eval_batch(np.arange(16))
  np.testing.assert_array_equal(held_out["image"], plain.eval_batch(np.arange(16))["image"])
  assert (held_out["mix"] == 1).all() and (held_out["label_mix"] == held_out["label"]).all()
  assert augmented.digest() != plain.digest()
  with pytest.raises(ValueError, match="must be >= 0"):
    _digits(crop_padding=-1)


def test_bad_label_smoothing_is_refused():
  with pytest.raises(ValueError, match=r"label_smoothing=1.0 must be in \[0, 1\)"):
    classification.Classification(label_smoothing=1.0)


def test_streamed_images_are_fitted_by_their_shorter_side_then_cropped():
  from isoflop.train.data import images_stream
  image = np.arange(6 * 9 * 3, dtype=np.uint8).reshape(6, 9, 3)
  centre = images_stream.fit_image(image, 4, None)
  assert centre.shape == (4, 4, 3) and centre.dtype == np.uint8
  crops = {images_stream.fit_image(image, 4, np.random.default_rng(i)).tobytes()
           for i in range(20)}
  assert len(crops) > 1  # training crops move along the longer side
  again = images_stream.fit_image(image, 4, np.random.default_rng(3))
  np.testing.assert_array_equal(again, images_stream.fit_image(image, 4,
                                                               np.random.default_rng(3)))
  np.testing.assert_array_equal(images_stream.fit_image(image[:4, :4], 4, None), image[:4, :4])
