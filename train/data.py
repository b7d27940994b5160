"""Data sources for training. This issue's source: a synthetic Markov chain of known entropy.

A source turns stream indices into host batches ``{"inputs": int32[n, T], "targets":
int32[n, T]}``. Example i depends only on (seed, i), so the data order does not depend on the
batch size, a process reads only its own rows, and the position in the stream (saved in
checkpoints) is a single number.
"""

import dataclasses
import functools
from typing import Sequence

import numpy as np

SYNTHETIC_KINDS = ("markov", "uniform")


@dataclasses.dataclass(frozen=True)
class MarkovSource:
  """A first-order Markov chain over ``vocab_size`` tokens: each token has ``branching``
  successors (drawn once from the seed) taken with Zipf(``zipf``) probabilities by rank.

  Every row has the same probabilities, so the entropy rate is exactly H(zipf weights), the
  lowest expected cross-entropy any model can reach on the predicted tokens (in nats).
  ``branching == vocab_size`` with ``zipf == 0`` is the uniform i.i.d. stream (entropy ln V).
  """

  vocab_size: int
  seq_len: int
  seed: int
  branching: int
  zipf: float

  def __post_init__(self):
    if not 1 <= self.branching <= self.vocab_size:
      raise ValueError(f"data.branching={self.branching} must be in [1, vocab_size="
                       f"{self.vocab_size}]")

  @property
  def _probs(self) -> np.ndarray:
    weights = 1.0 / np.arange(1, self.branching + 1) ** self.zipf
    return weights / weights.sum()

  @property
  def entropy_nats(self) -> float:
    p = self._probs
    return float(-(p * np.log(p)).sum())

  @functools.cached_property
  def _successors(self) -> np.ndarray:
    """int[V, branching]: distinct successors of each token, in O(V * branching) memory."""
    v, k = self.vocab_size, self.branching
    rng = np.random.default_rng([self.seed, 0x5EED])
    if k == v:
      return np.tile(np.arange(v), (v, 1))
    # Strictly increasing offsets in [1, v - 1] are distinct modulo v; then shuffle the ranks.
    gaps = rng.integers(1, max((v - 1) // k, 1) + 1, size=(v, k))
    successors = (np.arange(v)[:, None] + np.cumsum(gaps, axis=1)) % v
    return np.take_along_axis(successors, np.argsort(rng.random((v, k)), axis=1), axis=1)

  def examples(self, indices: Sequence[int]) -> np.ndarray:
    """The examples with these stream indices, as int32[len(indices), seq_len + 1]."""
    successors = self._successors
    cdf = np.cumsum(self._probs)
    count = len(indices)
    first = np.empty(count, np.int64)
    choices = np.empty((count, self.seq_len), np.int64)
    for row, index in enumerate(indices):
      rng = np.random.default_rng([self.seed, index])
      first[row] = rng.integers(self.vocab_size)
      choices[row] = np.minimum(np.searchsorted(cdf, rng.random(self.seq_len)),
                                self.branching - 1)
    tokens = np.empty((count, self.seq_len + 1), np.int32)
    tokens[:, 0] = first
    for t in range(self.seq_len):
      tokens[:, t + 1] = successors[tokens[:, t], choices[:, t]]
    return tokens

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    tokens = self.examples(indices)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def make_source(cfg, vocab_size: int, seq_len: int, seed: int) -> MarkovSource:
  """``cfg`` is the ``data`` ConfigDict; ``source`` is ``synthetic:markov`` or
  ``synthetic:uniform``."""
  kind, _, name = cfg.source.partition(":")
  if kind != "synthetic" or name not in SYNTHETIC_KINDS:
    raise ValueError(f"unknown data.source {cfg.source!r}; this version knows "
                     f"{['synthetic:' + k for k in SYNTHETIC_KINDS]}")
  if name == "uniform":
    return MarkovSource(vocab_size, seq_len, seed, branching=vocab_size, zipf=0.0)
  return MarkovSource(vocab_size, seq_len, seed, branching=cfg.branching, zipf=cfg.zipf)
