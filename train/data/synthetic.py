"""Synthetic token streams whose entropy rate is known exactly, so the loss floor is known.

Example i depends only on (seed, i): the order does not depend on the batch size or on the
number of processes, and a position in the stream is one number. Evaluation examples come from
a disjoint range of indices.
"""

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

KINDS = ("markov", "uniform", "ngram")
_EVAL_OFFSET = 1 << 40  # evaluation examples are indices no training run reaches


def _zipf_probs(branching: int, exponent: float) -> np.ndarray:
  weights = 1.0 / np.arange(1, branching + 1) ** exponent
  return weights / weights.sum()


def _entropy(p: np.ndarray) -> float:
  return float(-(p * np.log(p)).sum())


@dataclasses.dataclass(frozen=True)
class _Stream:
  """Shared parts: per-example random draws and the batch layout."""

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
  def entropy_nats(self) -> float:
    """Every context has the same Zipf probabilities over distinct successors, so the
    entropy rate (the best expected loss on each predicted token) is H(Zipf) exactly."""
    return _entropy(_zipf_probs(self.branching, self.zipf))

  num_eval_examples = None  # unlimited
  epochs_available = math.inf

  def _draws(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """First tokens and successor ranks for each example, from (seed, index) alone."""
    cdf = np.cumsum(_zipf_probs(self.branching, self.zipf))
    first = np.empty(len(indices), np.int64)
    ranks = np.empty((len(indices), self.seq_len), np.int64)
    for row, index in enumerate(indices):
      rng = np.random.default_rng([self.seed, int(index)])
      first[row] = rng.integers(self.vocab_size)
      ranks[row] = np.minimum(np.searchsorted(cdf, rng.random(self.seq_len)),
                              self.branching - 1)
    return first, ranks

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    tokens = self.examples(indices)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self.batch(np.asarray(indices, np.int64) + _EVAL_OFFSET)

  def windows(self, indices: Sequence[int]) -> np.ndarray:
    """int32[n, seq_len + 1]: the raw examples ``indices``."""
    return self.examples(indices)

  def eval_windows(self, indices: Sequence[int]) -> np.ndarray:
    return self.examples(np.asarray(indices, np.int64) + _EVAL_OFFSET)

  def describe(self) -> dict:
    return {"vocab_size": self.vocab_size, "entropy_nats": self.entropy_nats}

  def digest(self) -> dict[str, str]:
    """The generator and the parameters that define every example (see the module doc)."""
    return {"generator": type(self).__name__,
            **{f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self)}}


@dataclasses.dataclass(frozen=True)
class MarkovSource(_Stream):
  """First-order chain: each token has ``branching`` successors (drawn once from the seed)
  taken with Zipf(``zipf``) probabilities by rank. ``branching == vocab_size`` with
  ``zipf == 0`` is the uniform i.i.d. stream (entropy ln V)."""

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
    """int32[len(indices), seq_len + 1]."""
    first, ranks = self._draws(indices)
    tokens = np.empty((len(indices), self.seq_len + 1), np.int32)
    tokens[:, 0] = first
    for t in range(self.seq_len):
      tokens[:, t + 1] = self._successors[tokens[:, t], ranks[:, t]]
    return tokens


@dataclasses.dataclass(frozen=True)
class NgramSource(_Stream):
  """Structure at many scales: the next token depends on the last m tokens, where the order
  m = 1 + (previous token mod ``max_order``) varies along the sequence. A context (hashed with
  the seed) picks ``branching`` distinct successors, taken with Zipf probabilities by rank.

  Memorizing the contexts of every order takes capacity that grows with the order, so larger
  models keep improving, while the entropy rate stays exactly H(Zipf): a scaling fit's
  irreducible loss E can be checked against it.
  """

  max_order: int = 3

  def __post_init__(self):
    super().__post_init__()
    if self.max_order < 1:
      raise ValueError(f"data.max_order={self.max_order} must be at least 1")

  @functools.cached_property
  def _stride(self) -> int:
    """A step coprime with V, so successors h, h + s, h + 2s, ... are distinct mod V."""
    stride = int(0.618 * self.vocab_size) | 1
    while math.gcd(stride, self.vocab_size) != 1:
      stride += 1
    return stride

  def examples(self, indices: Sequence[int]) -> np.ndarray:
    first, ranks = self._draws(indices)
    n, order = len(indices), self.max_order
    history = np.zeros((n, order + self.seq_len + 1), np.uint64)  # zero-padded on the left
    history[:, order] = first
    mix = np.uint64(0x9E3779B97F4A7C15)
    rows = np.arange(n)
    for t in range(self.seq_len):
      now = order + t
      previous = history[:, now]
      m = (previous % np.uint64(order)).astype(np.int64) + 1
      h = np.full(n, np.uint64(self.seed) * mix + np.uint64(1), np.uint64)
      for j in range(order):  # fold in the last m tokens; later ones are masked out
        token = history[rows, now - j]
        used = j < m
        h = np.where(used, (h ^ token) * mix, h)
      h ^= h >> np.uint64(31)
      h = (h + m.astype(np.uint64)) * mix
      h ^= h >> np.uint64(29)
      successor = (h % np.uint64(self.vocab_size)).astype(np.int64)
      history[:, now + 1] = (successor + ranks[:, t] * self._stride) % self.vocab_size
    return history[:, order:].astype(np.int32)


def make(kind: str, cfg, vocab_size: int, seq_len: int, seed: int) -> _Stream:
  if kind not in KINDS:
    raise ValueError(f"unknown synthetic source {kind!r}; choose one of "
                     f"{['synthetic:' + k for k in KINDS]}")
  if kind == "uniform":
    return MarkovSource(vocab_size, seq_len, seed, branching=vocab_size, zipf=0.0)
  if kind == "markov":
    return MarkovSource(vocab_size, seq_len, seed, branching=cfg.branching, zipf=cfg.zipf)
  return NgramSource(vocab_size, seq_len, seed, branching=cfg.branching, zipf=cfg.zipf,
                     max_order=cfg.max_order)
