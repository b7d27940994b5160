"""A tokenized corpus as fixed-length training examples, in an order set by the seed alone.

The training stream (every document followed by EOS) is cut into windows of T + 1 tokens
(inputs and next-token targets), and a grain ``MapDataset`` shuffles window ids with the seed,
afresh each epoch. Example k of the run is window ``order[k]``, so any process can read any
rows of any batch directly, and the stream position saved in checkpoints is grain's
``next_index``: resuming replays nothing.
"""

import dataclasses
import math
from typing import Any, Sequence

import grain
import numpy as np

from isoflop.train.data import fingerprint


@dataclasses.dataclass
class TextSource:
  train_tokens: np.ndarray  # 1-D stream, documents separated by EOS
  eval_tokens: np.ndarray  # held-out documents, never in train_tokens
  seq_len: int
  seed: int
  tokenizer: Any
  document_masking: bool  # emit segment_ids and positions so attention stays in a document
  info: dict[str, Any]
  entropy_nats = None  # unknown for real text

  def __post_init__(self):
    self.num_train_examples = (len(self.train_tokens) - 1) // self.seq_len
    self.num_eval_examples = max((len(self.eval_tokens) - 1) // self.seq_len, 0)
    if self.num_train_examples < 1:
      raise ValueError(f"the corpus has {len(self.train_tokens)} training tokens, fewer than "
                       f"one sequence of seq_len={self.seq_len} + 1; use more text or a "
                       "shorter seq_len")
    self._order = grain.MapDataset.range(self.num_train_examples).shuffle(
        seed=self.seed).repeat(None)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _windows(self, tokens: np.ndarray, window_ids: Sequence[int]) -> dict[str, np.ndarray]:
    span = self.seq_len + 1
    windows = np.stack([tokens[w * self.seq_len: w * self.seq_len + span]
                        for w in window_ids]).astype(np.int32)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
    if self.document_masking:
      batch.update(segments_and_positions(batch["inputs"], self.tokenizer.eos_id))
    return batch

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self._windows(self.train_tokens, [self._order[int(i)] for i in indices])

  def windows(self, indices: Sequence[int]) -> np.ndarray:
    """int32[n, seq_len + 1]: the raw training windows of examples ``indices``."""
    batch = self.batch(indices)
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)

  def eval_windows(self, indices: Sequence[int]) -> np.ndarray:
    batch = self.eval_batch(indices)
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    if self.num_eval_examples == 0:
      raise ValueError("the held-out split holds less than one sequence; raise "
                       "data.eval_fraction or set eval_every=0")
    return self._windows(self.eval_tokens, [int(i) % self.num_eval_examples for i in indices])

  def digest(self) -> dict[str, str]:
    """The tokenizer and the token streams' contents: what the windows are cut from. Contents,
    not the files' paths or modification times, so a corpus copied or touched is no change."""
    return {"tokenizer": self.tokenizer.identity(),
            "train_tokens": fingerprint.array_digest(self.train_tokens),
            "eval_tokens": fingerprint.array_digest(self.eval_tokens)}

  def describe(self) -> dict[str, Any]:
    return {**self.info, "vocab_size": self.vocab_size, "entropy_nats": None,
            "train_tokens": int(len(self.train_tokens)), "eval_tokens": int(len(self.eval_tokens)),
            "train_examples": self.num_train_examples, "eval_examples": self.num_eval_examples}


def segments_and_positions(inputs_BL: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
  """A document's EOS belongs to it; the next token starts a new segment at position 0."""
  ends = inputs_BL == eos_id
  segment_ids = np.concatenate([np.zeros_like(ends[:, :1], np.int32),
                                np.cumsum(ends[:, :-1], axis=1, dtype=np.int32)], axis=1)
  index = np.broadcast_to(np.arange(inputs_BL.shape[1]), inputs_BL.shape)
  starts = np.concatenate([np.ones_like(ends[:, :1]), ends[:, :-1]], axis=1)
  first_of_segment = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
  return {"segment_ids": segment_ids, "positions": (index - first_of_segment).astype(np.int32)}


def split_documents(documents: Sequence[str], eval_fraction: float) -> tuple[list[int], list[int]]:
  """Held-out documents by content hash (stable under reordering): the ceil(fraction * n)
  documents with the smallest hashes are evaluation, never training."""
  import hashlib
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"data.eval_fraction={eval_fraction} must be in [0, 1)")
  n_eval = math.ceil(eval_fraction * len(documents)) if eval_fraction else 0
  if n_eval >= len(documents):
    count = f"{len(documents)} document" + ("s" if len(documents) != 1 else "")
    raise ValueError(f"only {count}: too few to hold out "
                     f"{eval_fraction:.0%} for evaluation; add text or lower data.eval_fraction")
  digests = [hashlib.sha256(d.encode("utf-8")).digest() for d in documents]
  ranked = sorted(range(len(documents)), key=lambda i: (digests[i], i))
  eval_ids = sorted(ranked[:n_eval])
  chosen = set(eval_ids)
  return [i for i in range(len(documents)) if i not in chosen], eval_ids
