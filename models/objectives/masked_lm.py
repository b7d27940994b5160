"""Masked language modelling (BERT): predict the original token at selected positions.

Each token of a window is selected with probability ``mask_rate``; a selected token is replaced
by ``<mask>``, by a random ordinary token, or kept, with probabilities ``replace_rates`` (BERT:
15% selected; 80/10/10). The loss is the mean cross-entropy over selected tokens only, weighted
by their count, so microbatches and devices with different numbers of selections average
exactly. Held-out metrics: ``loss`` and ``accuracy`` (top-1 at selected positions).

Examples are made on the host from raw windows (``make_examples``), one NumPy generator per
example seeded by the run seed and the example's index: a resumed run masks exactly as the
uninterrupted one did.
"""

import dataclasses

import numpy as np

from isoflop.models import objectives

TOKENS = ("batch", "length")
MASK, PAD = "<mask>", "<pad>"


@dataclasses.dataclass(frozen=True)
class MaskedLm:
  mask_rate: float = 0.15
  replace_rates: tuple[float, float, float] = (0.8, 0.1, 0.1)  # <mask>, random, unchanged
  name = "masked_lm"
  unit = "token"
  batch_axes = {"inputs": TOKENS, "targets": TOKENS, "target_weights": TOKENS,
                "positions": TOKENS, "segment_ids": TOKENS, "token_types": TOKENS}
  required_keys = ("inputs", "targets", "target_weights")
  special_tokens = (PAD, MASK)

  def __post_init__(self):
    if not 0.0 < self.mask_rate < 1.0:
      raise ValueError(f"masked_lm.mask_rate={self.mask_rate} must be in (0, 1) (BERT: 0.15)")
    rates = tuple(float(r) for r in self.replace_rates)
    if len(rates) != 3 or min(rates) < 0 or abs(sum(rates) - 1.0) > 1e-6:
      raise ValueError(f"masked_lm.replace_rates={tuple(self.replace_rates)} must be three "
                       "non-negative shares (mask, random, unchanged) summing to 1, e.g. "
                       "(0.8, 0.1, 0.1)")
    object.__setattr__(self, "replace_rates", rates)

  def window_length(self, seq_len: int) -> int:
    return seq_len

  def make_examples(self, windows_BL, rngs, special_ids, vocab_size):
    """Inputs with the selected tokens replaced, the original tokens as targets, and 1.0 where
    a token was selected (``target_weights``)."""
    windows_BL = np.asarray(windows_BL, np.int32)
    inputs_BL = windows_BL.copy()
    weights_BL = np.zeros(windows_BL.shape, np.float32)
    to_mask, to_random = self.replace_rates[0], self.replace_rates[0] + self.replace_rates[1]
    length = windows_BL.shape[1]
    for row, rng in enumerate(rngs):
      selected_L = rng.random(length) < self.mask_rate
      choice_L = rng.random(length)
      random_L = rng.integers(0, vocab_size, length)
      masked_L = selected_L & (choice_L < to_mask)
      randomized_L = selected_L & (choice_L >= to_mask) & (choice_L < to_random)
      inputs_BL[row, masked_L] = special_ids[MASK]
      inputs_BL[row, randomized_L] = random_L[randomized_L]
      weights_BL[row] = selected_L
    return {"inputs": inputs_BL, "targets": windows_BL, "target_weights": weights_BL}

  def prepare(self, batch, rng):
    del rng  # the examples were made on the host
    return batch

  def model_inputs(self, batch, train):
    return (batch["inputs"],), {"positions_BL": batch.get("positions"),
                                "segment_ids_BL": batch.get("segment_ids"),
                                "token_types_BL": batch.get("token_types"), "train": train}

  def terms(self, logits_BLV, batch) -> objectives.Terms:
    return objectives.weighted_token_terms(logits_BLV, batch["targets"],
                                           batch["target_weights"])

  def eval_metrics(self, logits_BLV, batch):
    return objectives.weighted_token_metrics(logits_BLV, batch["targets"],
                                             batch["target_weights"])

  def target_weights(self, logits, batch):
    return batch["target_weights"]

  def units(self, batch) -> int:
    """Tokens the model reads (every position is encoded), not only the selected ones."""
    return int(batch["inputs"].shape[0] * batch["inputs"].shape[1])


def from_run_config(config) -> MaskedLm:
  block = config.get("masked_lm") or {}
  return MaskedLm(mask_rate=float(block.get("mask_rate", 0.15)),
                  replace_rates=tuple(block.get("replace_rates", (0.8, 0.1, 0.1))))


objectives.register("masked_lm", from_run_config)
