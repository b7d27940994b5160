"""Text classification: the label of a token sequence (``task=classification`` on a family
that reads tokens, with ``model.num_classes`` set).

The same loss and held-out metrics as image classification (``classification.py``: softmax
cross-entropy of ``logits_BK``, label smoothing, negative labels as padding examples of
weight 0, ``accuracy`` and ``top5_accuracy``); the model reads ``inputs`` (int32[B, L]) and,
when the source pads rows, ``key_mask`` (1 at real tokens). Throughput and FLOPs count tokens,
as the language-model families do.
"""

import dataclasses

import numpy as np

from isoflop.models.objectives import classification

TOKENS = ("batch", "length")


@dataclasses.dataclass(frozen=True)
class TextClassification(classification.Classification):
  unit = "token"
  batch_axes = {"inputs": TOKENS, "key_mask": TOKENS, "label": classification.EXAMPLES}
  required_keys = ("inputs", "label")

  def model_inputs(self, batch, train):
    kwargs = {"train": train}
    if "key_mask" in batch:
      kwargs["key_mask_BL"] = batch["key_mask"]
    return (batch["inputs"],), kwargs

  def units(self, batch) -> int:
    return int(np.prod(batch["inputs"].shape))
