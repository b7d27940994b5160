"""``data.source=shakespeare_plays``: which play is this passage from?

The embedded corpus (``documents.shakespeare``: 38 plays) cut into scenes at the Markdown
headings (``## ACT ...``, ``### SCENE ...``, prologues; the heading lines themselves, the
play's title among them, are dropped so no passage names its play). Labels are play indices
0..37 in the corpus' fixed order (its sorted file paths; ``describe()["plays"]`` lists the
titles).

Held out by scene: in each play the ``max(1, round(data.eval_fraction x scenes))`` scenes of
at least ``MIN_EVAL_CHARS`` characters with the smallest SHA-256 of their text are held out,
whole. The split depends on the corpus and ``eval_fraction`` alone, not on the seed, the
sequence length or the tokenizer, so a model pretrained on the training scenes never saw a
held-out scene of any classification run with the same ``eval_fraction``.

- ``task=classification``: ``PlaysSource``. Passages are non-overlapping windows of
  ``seq_len`` tokens inside one scene (a scene's tail shorter than a window is dropped):
  ``{"inputs": int32[B, L], "label": int32[B]}``. Training passages come in an order set by
  the seed alone (grain, as for text; resumable by stream index). Held-out passages come in a
  fixed shuffled order; indices past the last one give padding rows (label -1, weight 0), so
  ``eval_batches x batch_size >= eval_examples`` evaluates every held-out passage exactly once.
  The model's vocabulary is the tokenizer's, or ``model.vocab_size`` when larger (set it to
  a masked-LM encoder's vocabulary, special tokens included, to ``init_from`` that run).
- any other task: a ``text.TextSource`` over the training scenes' text (each scene followed by
  EOS), with the held-out scenes as its evaluation stream: causal-LM (or masked-LM)
  pretraining without the classifier's held-out scenes.
"""

import dataclasses
import hashlib
import re
from typing import Any, Callable, Sequence

import grain
import numpy as np

from isoflop.train.data import documents as documents_lib
from isoflop.train.data import fingerprint, text, token_cache

SOURCE = "shakespeare_plays"
MIN_EVAL_CHARS = 2000  # a held-out scene long enough to give passages at any usual seq_len
_HEADING = re.compile(r"^#+\s")
_EVAL_ORDER_SEED = 0x9A55  # the held-out passages' fixed order


@dataclasses.dataclass(frozen=True)
class Play:
  title: str
  scenes: tuple[str, ...]


def parse_play(markdown: str) -> Play:
  """A play's title (its ``# `` heading) and its scenes: the text between headings of level
  two or more, heading lines dropped, empty sections skipped."""
  title, scenes, lines = "", [], []
  for line in markdown.splitlines(keepends=True):
    if _HEADING.match(line):
      if line.startswith("# ") and not title:
        title = line[2:].strip()
      if "".join(lines).strip():
        scenes.append("".join(lines).strip("\n") + "\n")
      lines = []
    else:
      lines.append(line)
  if "".join(lines).strip():
    scenes.append("".join(lines).strip("\n") + "\n")
  return Play(title, tuple(scenes))


def held_out_scenes(scenes: Sequence[str], eval_fraction: float) -> list[int]:
  """Indices of a play's held-out scenes (see the module doc)."""
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"data.eval_fraction={eval_fraction} must be in [0, 1)")
  if eval_fraction == 0.0:
    return []
  count = max(1, round(eval_fraction * len(scenes)))
  if count >= len(scenes):
    raise ValueError(f"data.eval_fraction={eval_fraction} would hold out every scene of a "
                     f"{len(scenes)}-scene play; lower it")
  long_enough = [i for i, s in enumerate(scenes) if len(s) >= MIN_EVAL_CHARS] or list(
      range(len(scenes)))
  digest = lambda i: hashlib.sha256(scenes[i].encode("utf-8")).digest()  # noqa: E731
  return sorted(sorted(long_enough, key=lambda i: (digest(i), i))[:count])


@dataclasses.dataclass(frozen=True)
class Scenes:
  """Every scene of the corpus, flattened: its text, play (label) and whether it is held out."""
  texts: tuple[str, ...]
  plays: np.ndarray  # int32[S]
  held_out: np.ndarray  # bool[S]
  titles: tuple[str, ...]
  identity: str


def read_scenes(eval_fraction: float) -> Scenes:
  docs = documents_lib.shakespeare()
  texts, plays, held_out, titles = [], [], [], []
  for label, markdown in enumerate(docs.read()):
    play = parse_play(markdown)
    titles.append(play.title)
    chosen = set(held_out_scenes(play.scenes, eval_fraction))
    for i, scene in enumerate(play.scenes):
      texts.append(scene)
      plays.append(label)
      held_out.append(i in chosen)
  return Scenes(tuple(texts), np.asarray(plays, np.int32), np.asarray(held_out, bool),
                tuple(titles), f"{docs.identity}|scenes-v1")


def _scene_tokens(scenes: Scenes, tokenizer, cache_dir: str) -> list[np.ndarray]:
  """Each scene's tokens (cached on disk by corpus and tokenizer)."""
  entry = token_cache.entry_dir(cache_dir, "tokens", token_cache.key(
      scenes.identity, tokenizer.identity()))
  arrays = token_cache.load(entry)
  if arrays is None:
    pieces = [np.asarray(tokenizer.encode(t)) for t in scenes.texts]
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype(np.int64)
    flat = np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)
    token_cache.store(entry, {"tokens": flat, "offsets": offsets},
                      {"scenes": len(pieces), "tokenizer": tokenizer.identity()})
    arrays = token_cache.load(entry)
  tokens, offsets = np.asarray(arrays["tokens"]), np.asarray(arrays["offsets"])
  return [tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _passages(pieces, scene_ids, scenes: Scenes, seq_len: int):
  """(windows int32[N, L], labels int32[N], scene ids int32[N]) of the given scenes."""
  windows, labels, owners = [], [], []
  for s in scene_ids:
    n = len(pieces[s]) // seq_len
    if n:
      windows.append(np.asarray(pieces[s][:n * seq_len], np.int32).reshape(n, seq_len))
      labels.append(np.full(n, scenes.plays[s], np.int32))
      owners.append(np.full(n, s, np.int32))
  if not windows:
    return (np.zeros((0, seq_len), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
  return np.concatenate(windows), np.concatenate(labels), np.concatenate(owners)


@dataclasses.dataclass
class PlaysSource:
  """Labelled passages (see the module doc)."""
  train_inputs: np.ndarray  # int32[N, L]
  train_labels: np.ndarray  # int32[N]
  train_scenes: np.ndarray  # int32[N]: the scene (index into ``scenes``) of each passage
  eval_inputs: np.ndarray
  eval_labels: np.ndarray
  eval_scenes: np.ndarray
  seq_len: int
  seed: int
  tokenizer: Any
  titles: tuple[str, ...]
  info: dict[str, Any]
  model_vocab_size: int | None = None  # model.vocab_size, kept when above the tokenizer's
  entropy_nats = None

  def __post_init__(self):
    self.num_train_examples = len(self.train_labels)
    self.num_eval_examples = len(self.eval_labels)
    if self.num_train_examples < 1:
      raise ValueError(f"no training scene holds a passage of seq_len={self.seq_len} tokens; "
                       "use a shorter seq_len")
    self._order = grain.MapDataset.range(self.num_train_examples).shuffle(
        seed=self.seed).repeat(None)
    self._eval_order = np.random.default_rng(_EVAL_ORDER_SEED).permutation(
        self.num_eval_examples)

  @property
  def vocab_size(self) -> int:
    """The tokenizer's, or model.vocab_size when larger: an encoder pretrained with masked LM
    has rows for its special tokens, which the classifier loads with the rest."""
    return max(self.tokenizer.vocab_size, self.model_vocab_size or 0)

  @property
  def num_classes(self) -> int:
    return len(self.titles)

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    rows = np.asarray([self._order[int(i)] for i in indices], np.int64)
    return {"inputs": self.train_inputs[rows], "label": self.train_labels[rows]}

  def eval_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    if self.num_eval_examples == 0:
      raise ValueError("no held-out scene holds a passage; raise data.eval_fraction or set "
                       "eval_every=0")
    indices = np.asarray(indices, np.int64)
    real = indices < self.num_eval_examples
    rows = self._eval_order[np.where(real, indices, 0)]
    inputs = np.where(real[:, None], self.eval_inputs[rows], 0).astype(np.int32)
    return {"inputs": inputs, "label": np.where(real, self.eval_labels[rows], -1).astype(np.int32)}

  def digest(self) -> dict[str, str]:
    return {"tokenizer": self.tokenizer.identity(),
            "train_inputs": fingerprint.array_digest(self.train_inputs),
            "train_labels": fingerprint.array_digest(self.train_labels),
            "eval_inputs": fingerprint.array_digest(self.eval_inputs),
            "eval_labels": fingerprint.array_digest(self.eval_labels)}

  def describe(self) -> dict[str, Any]:
    return {**self.info, "vocab_size": self.vocab_size, "entropy_nats": None,
            "num_classes": self.num_classes, "label_range": [0, self.num_classes - 1],
            "plays": list(self.titles), "train_examples": self.num_train_examples,
            "eval_examples": self.num_eval_examples}


def make(config, seq_len: int, workdir: str | None, make_tokenizer: Callable,
         cache_dir: str, document_masking: bool):
  """The source of ``data.source=shakespeare_plays``: labelled passages for
  ``task=classification``, else the training scenes' text. ``make_tokenizer(cfg, identity,
  train_documents, cache_dir, workdir)`` is the package's tokenizer factory (a SentencePiece
  model trains on the training scenes only)."""
  cfg = config.data
  scenes = read_scenes(cfg.eval_fraction)
  train_ids = [i for i in range(len(scenes.texts)) if not scenes.held_out[i]]
  eval_ids = [i for i in range(len(scenes.texts)) if scenes.held_out[i]]
  tokenizer = make_tokenizer(cfg, f"{scenes.identity}|eval_fraction={cfg.eval_fraction}",
                             lambda: [scenes.texts[i] for i in train_ids], cache_dir, workdir)
  pieces = _scene_tokens(scenes, tokenizer, cache_dir)
  info = {"source": SOURCE, "tokenizer": cfg.tokenizer,
          "tokenizer_identity": tokenizer.identity(), "eval_fraction": cfg.eval_fraction,
          "train_scenes": len(train_ids), "eval_scenes": len(eval_ids)}
  if config.task != "classification":
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    stream = lambda ids: token_cache.concatenate(  # noqa: E731
        (pieces[i] for i in ids), tokenizer.eos_id, tokenizer.vocab_size).astype(dtype)
    return text.TextSource(stream(train_ids), stream(eval_ids), seq_len, config.seed,
                           tokenizer, document_masking, info)
  train = _passages(pieces, train_ids, scenes, seq_len)
  held = _passages(pieces, eval_ids, scenes, seq_len)
  return PlaysSource(*train, *held, seq_len, config.seed, tokenizer, scenes.titles, info,
                     config.model.get("vocab_size"))
