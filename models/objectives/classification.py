"""Image classification (text: ``text_classification.py``): softmax cross-entropy of
``logits_BK`` against integer labels.

Serves any family whose module maps image_BHWC to logits_BK (ViT, ResNet, VGG). Training uses
label smoothing ``classification.label_smoothing`` (the target puts that much probability
uniformly over the K classes) and, when the data mixes images (mixup: batch keys
``label_mix`` and ``mix``), the same blend of the two labels' targets. A negative label marks
a padding example (weight 0), so batches and microbatches with different numbers of real
examples average exactly. Held-out metrics: ``loss`` (plain cross-entropy, no smoothing),
``accuracy`` (top-1) and, with more than 5 classes, ``top5_accuracy``; the prediction is the
argmax (the lowest index on ties), deterministic.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from isoflop.models import objectives

EXAMPLES = ("batch",)


@dataclasses.dataclass(frozen=True)
class Classification:
  label_smoothing: float = 0.0
  name = "classification"
  unit = "example"
  batch_axes = {"image": ("batch", "height", "width", "channels"), "label": EXAMPLES,
                "label_mix": EXAMPLES, "mix": EXAMPLES}
  required_keys = ("image", "label")

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"classification.label_smoothing={self.label_smoothing} must be in "
                       "[0, 1) (0: one-hot targets)")

  def prepare(self, batch, rng):
    del rng
    return batch

  def model_inputs(self, batch, train):
    return (batch["image"],), {"train": train}

  def _targets(self, labels_B, classes: int) -> jax.Array:
    one_hot_BK = jax.nn.one_hot(jnp.maximum(labels_B, 0), classes)
    return optax.smooth_labels(one_hot_BK, self.label_smoothing)

  def terms(self, logits_BK, batch) -> objectives.Terms:
    classes = logits_BK.shape[-1]
    targets_BK = self._targets(batch["label"], classes)
    if "mix" in batch:  # mixup: the image is mix * one + (1 - mix) * the other
      mix_B1 = batch["mix"].astype(jnp.float32)[:, None]
      targets_BK = mix_B1 * targets_BK + (1.0 - mix_B1) * self._targets(batch["label_mix"],
                                                                         classes)
    valid_B = (batch["label"] >= 0).astype(jnp.float32)
    weight = valid_B.sum()
    ce_B = optax.softmax_cross_entropy(logits_BK, targets_BK)
    loss = objectives.safe_mean((ce_B * valid_B).sum(), weight)
    return objectives.Terms(objective=loss, weight=weight, metrics={"loss": (loss, weight)})

  def eval_metrics(self, logits_BK, batch):
    labels_B = batch["label"]
    valid_B = (labels_B >= 0).astype(jnp.float32)
    weight = valid_B.sum()
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BK, jnp.maximum(labels_B, 0))
    mean = lambda x_B: objectives.safe_mean((x_B * valid_B).sum(), weight)  # noqa: E731
    correct_B = (jnp.argmax(logits_BK, axis=-1) == labels_B).astype(jnp.float32)
    metrics = {"loss": (mean(ce_B), weight), "accuracy": (mean(correct_B), weight)}
    if logits_BK.shape[-1] > 5:
      _, top5_B5 = jax.lax.top_k(logits_BK, 5)
      in_top5_B = (top5_B5 == labels_B[:, None]).any(axis=-1).astype(jnp.float32)
      metrics["top5_accuracy"] = (mean(in_top5_B), weight)
    return metrics

  def target_weights(self, logits_BK, batch):
    return (batch["label"] >= 0).astype(jnp.float32)

  def units(self, batch) -> int:
    return int(batch["label"].shape[0])


def from_run_config(config) -> Classification:
  """Image classification, or text classification (``text_classification.py``) when the
  model reads tokens (its config has a ``vocab_size``)."""
  block = config.get("classification") or {}
  smoothing = float(block.get("label_smoothing", 0.0))
  if "vocab_size" in config.get("model", {}):
    from isoflop.models.objectives import text_classification
    return text_classification.TextClassification(label_smoothing=smoothing)
  return Classification(label_smoothing=smoothing)


objectives.register("classification", from_run_config)
