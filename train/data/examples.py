"""Examples an objective makes from raw token windows: masked LM, span corruption.

Any token source (text or synthetic) is cut into windows of the objective's
``window_length(seq_len)`` tokens, in the source's own seed-set order; the objective turns each
window into its example with a NumPy generator seeded by (run seed, split, example index)
alone. So the masks and spans of a step depend on nothing but the seed and the step: not on
the batch size per process, the device count, microbatching or a resume.

Special tokens (``<pad>``, ``<mask>``, T5's sentinels) get ids after the tokenizer's own, and
the model's vocabulary grows to hold them. A synthetic stream has no tokenizer: its specials
take the top ids of ``model.vocab_size`` and the generator draws from the ids below them.
"""

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import numpy as np

_TRAIN, _EVAL = 0, 1  # generator domains: held-out examples never share a train example's draws
EOS = "<eos>"  # the tokenizer's own end-of-document id, passed to objectives under this name


class SpecialTokens:
  """A tokenizer with named special tokens appended after its vocabulary."""

  def __init__(self, base, names: Sequence[str]):
    self.base = base
    self.ids = {name: base.vocab_size + i for i, name in enumerate(names)}
    self.vocab_size = base.vocab_size + len(names)
    self.eos_id = base.eos_id
    self._names = {i: name for name, i in self.ids.items()}

  def encode(self, text: str) -> np.ndarray:
    return self.base.encode(text)

  def decode(self, ids) -> str:
    """Ordinary ids through the tokenizer, special ones as their names."""
    pieces, run = [], []
    for i in (int(i) for i in ids):
      if i in self._names:
        pieces += [self.base.decode(run), self._names[i]]
        run = []
      else:
        run.append(i)
    return "".join(pieces + [self.base.decode(run)])

  def identity(self) -> str:
    names = json.dumps(sorted(self.ids.items(), key=lambda kv: kv[1]))
    return f"{self.base.identity()}+specials-{hashlib.sha256(names.encode()).hexdigest()[:12]}"

  def files(self) -> dict[str, bytes]:
    return {**self.base.files(),
            "special_tokens.json": (json.dumps(self.ids, indent=1) + "\n").encode()}


def special_names(objective, has_tokenizer: bool) -> tuple[str, ...]:
  """The ids an objective's examples need beyond the tokens: its own specials and, for a
  stream without a tokenizer (no EOS of its own), an ``<eos>``."""
  names = tuple(objective.special_tokens)
  return names if has_tokenizer else names + (EOS,)


def check_room(vocab_size: int, names: Sequence[str], task: str) -> int:
  """The ordinary ids left in a fixed ``model.vocab_size`` once ``names`` take its top ids."""
  left = vocab_size - len(names)
  if left < 2:
    raise ValueError(f"model.vocab_size={vocab_size} leaves no room for the {len(names)} "
                     f"special tokens of task={task} (mask, padding, sentinels); raise "
                     f"model.vocab_size to at least {len(names) + 2}")
  return left


@dataclasses.dataclass
class ExampleSource:
  """A token source whose windows become an objective's examples (see the module doc)."""

  base: Any  # .windows(indices) / .eval_windows(indices) -> int32[n, window_length]
  objective: Any
  seed: int
  special_ids: dict[str, int]  # name -> id, ``<eos>`` included
  base_vocab_size: int  # ordinary ids are below this
  vocab_size: int  # what the model's table holds
  window_length: int  # raw tokens per example
  tokenizer: Any = None
  document_masking: bool = False  # segment ids and positions from the raw windows
  entropy_nats = None  # the objective's floor is not the stream's entropy rate

  def __post_init__(self):
    self.num_train_examples = getattr(self.base, "num_train_examples", None)
    self.num_eval_examples = getattr(self.base, "num_eval_examples", None)

  def _make(self, windows_BR: np.ndarray, indices: Sequence[int], domain: int):
    rngs = [np.random.default_rng([self.seed, domain, int(i)]) for i in indices]
    batch = self.objective.make_examples(np.asarray(windows_BR, np.int32), rngs,
                                         self.special_ids, self.base_vocab_size)
    if self.document_masking and "segment_ids" in self.objective.batch_axes:
      from isoflop.train.data import text
      batch.update(text.segments_and_positions(windows_BR, self.special_ids[EOS]))
    return batch

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self._make(self.base.windows(indices), indices, _TRAIN)

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return self._make(self.base.eval_windows(indices), indices, _EVAL)

  def digest(self) -> dict[str, str]:
    """The stream's digest plus what turns its windows into examples."""
    return {**self.base.digest(), "examples": repr(self.objective),
            "special_tokens": json.dumps(self.special_ids, sort_keys=True)}

  def describe(self) -> dict[str, Any]:
    return {**self.base.describe(), "vocab_size": self.vocab_size, "entropy_nats": None,
            "objective": self.objective.name, "special_tokens": dict(self.special_ids),
            "window_length": self.window_length}
