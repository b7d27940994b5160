"""Tokenizers by name: ``bytes`` (UTF-8 bytes, vocabulary 256), ``sentencepiece`` (trained
on the run's own documents to ``data.vocab_size``) and ``hf`` (a Hugging Face ``tokenizer.json``
named by ``data.tokenizer_path``, read with the ``tokenizers`` package). All end each document
with an EOS id."""

import hashlib
import io
import json
import os
from typing import Iterable, Protocol

import numpy as np

TOKENIZERS = ("bytes", "sentencepiece", "hf")


class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids) -> str: ...

  def identity(self) -> str:
    """A digest that changes whenever the token ids of some text would change."""


class BytesTokenizer:
  """UTF-8 bytes. Byte 0 (NUL) is the EOS id: text files with NUL bytes are refused as binary."""

  vocab_size = 256
  eos_id = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8)

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

  def identity(self) -> str:
    return "bytes-utf8-eos0"

  def files(self) -> dict[str, bytes]:
    return {"tokenizer.txt": b"bytes: UTF-8 bytes, vocabulary 256, EOS = 0\n"}


class SentencePieceTokenizer:
  """A SentencePiece model (unigram, byte fallback so any text encodes) held as bytes."""

  MODEL_FILE = "spm.model"

  def __init__(self, model: bytes):
    import sentencepiece
    self.model = model
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    self.vocab_size = int(self._sp.get_piece_size())
    self.eos_id = int(self._sp.eos_id())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def identity(self) -> str:
    return "sentencepiece-" + hashlib.sha256(self.model).hexdigest()[:16]

  def files(self) -> dict[str, bytes]:
    return {self.MODEL_FILE: self.model}


class HfTokenizer:
  """A Hugging Face fast tokenizer (``tokenizer.json``: BPE, WordPiece or Unigram) read with the
  ``tokenizers`` package, as a converted checkpoint expects its text tokenized.

  ``vocab_size`` is the model's vocabulary, which may hold more ids than the tokenizer makes
  (T5: 32,128 rows for 32,100 tokens); ``eos_id`` ends every document. ``side_files`` are
  Hugging Face's own files found beside it (``tokenizer_config.json``, ...), kept so that
  ``isoflop convert --to_hf`` hands them back."""

  FILE = "tokenizer.json"
  SETTINGS_FILE = "isoflop_tokenizer.json"  # {"vocab_size", "eos_id"}: what tokenizer.json lacks
  SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")

  def __init__(self, json_text: str, *, vocab_size: int | None = None,
               eos_id: int | None = None, eos_token: str | None = None,
               side_files: dict[str, bytes] | None = None):
    import tokenizers
    try:
      self._tokenizer = tokenizers.Tokenizer.from_str(json_text)
    except Exception as e:  # the Rust side raises its own exception types
      raise ValueError(f"not a tokenizer.json the tokenizers package reads: "
                       f"{' '.join(str(e).split())}") from None
    self.json_text = json_text
    self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    made = max(self._vocab.values(), default=-1) + 1  # ids may skip numbers: the highest counts
    self.vocab_size = made if vocab_size is None else int(vocab_size)
    if self.vocab_size < made:
      raise ValueError(f"tokenizer.json makes token ids up to {made - 1} but the model's "
                       f"vocabulary is {self.vocab_size}; use the tokenizer that came with the "
                       "checkpoint")
    if eos_id is None and eos_token in self._vocab:
      eos_id = self._vocab[eos_token]
    self.eos_id = self._default_eos() if eos_id is None else int(eos_id)
    if not 0 <= self.eos_id < self.vocab_size:
      raise ValueError(f"eos_token_id={self.eos_id} is outside the vocabulary of "
                       f"{self.vocab_size}; the config.json beside tokenizer.json is not its own")
    self.side_files = dict(side_files or {})

  def _default_eos(self) -> int:
    for name in _EOS_NAMES:
      if name in self._vocab:
        return self._vocab[name]
    raise ValueError(f"tokenizer.json has none of the usual end-of-text tokens {_EOS_NAMES}; "
                     "set eos_token_id in the config.json beside it")

  def encode(self, text: str) -> np.ndarray:
    """The ids with the tokenizer's own template (Llama's BOS, BERT's [CLS]) less an EOS the
    template appends: the pipeline ends every document with one."""
    encoding = self._tokenizer.encode(text)
    ids = encoding.ids
    if ids and ids[-1] == self.eos_id and encoding.special_tokens_mask[-1]:
      ids = ids[:-1]
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def identity(self) -> str:
    digest = hashlib.sha256(f"{self.json_text}|{self.vocab_size}|{self.eos_id}".encode())
    return "hf-" + digest.hexdigest()[:16]

  def files(self) -> dict[str, bytes]:
    settings = {"vocab_size": self.vocab_size, "eos_id": self.eos_id}
    return {self.FILE: self.json_text.encode("utf-8"),
            self.SETTINGS_FILE: (json.dumps(settings, indent=2) + "\n").encode("utf-8"),
            **self.side_files}


# End-of-text tokens by the names the common checkpoints give them (T5 and Llama 2, GPT-2,
# Llama 3, Gemma, BERT's separator), tried in this order when nothing names the EOS id.
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]", "[EOS]")


def _read_json(directory: str, name: str) -> dict:
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    payload = json.load(f)
  return payload if isinstance(payload, dict) else {}


def _tokenizer_file(path: str) -> str:
  candidates = [path] if os.path.isfile(path) else [
      os.path.join(path, HfTokenizer.FILE), os.path.join(path, "tokenizer", HfTokenizer.FILE)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise ValueError(f"{path} holds no tokenizer.json; name a tokenizer.json, a Hugging Face "
                   "checkpoint directory, or an isoflop run converted from one")


def _first(value):
  return value[0] if isinstance(value, list) and value else value


def load_hf(path: str, vocab_size: int | None = None) -> HfTokenizer:
  """The tokenizer at ``path``: a tokenizer.json, or a directory holding one (a Hugging Face
  checkpoint, a converted run, a run's ``tokenizer/``). ``vocab_size`` (the model's, if
  larger than the tokenizer's) and the EOS id come from, in turn: the argument, the settings
  isoflop saved beside it, the checkpoint's config.json (``vocab_size``, ``eos_token_id``),
  tokenizer_config.json's ``eos_token``, the usual end-of-text names."""
  file = _tokenizer_file(path)
  directory = os.path.dirname(file)
  settings = _read_json(directory, HfTokenizer.SETTINGS_FILE)
  model_config = _read_json(directory, "config.json")
  if "model_type" not in model_config:
    model_config = {}  # a run's config.json, not a checkpoint's
  with open(file, encoding="utf-8") as f:
    json_text = f.read()
  side_files = {}
  for name in HfTokenizer.SIDE_FILES:
    if os.path.isfile(os.path.join(directory, name)):
      with open(os.path.join(directory, name), "rb") as f:
        side_files[name] = f.read()
  eos_token = _first(_read_json(directory, "tokenizer_config.json").get("eos_token"))
  if isinstance(eos_token, dict):  # an AddedToken written out
    eos_token = eos_token.get("content")
  return HfTokenizer(
      json_text, vocab_size=vocab_size or settings.get("vocab_size") or model_config.get(
          "vocab_size"), eos_id=settings.get("eos_id", _first(model_config.get("eos_token_id"))),
      eos_token=eos_token, side_files=side_files)


def train_sentencepiece(documents: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
  """Trains on the documents' lines, single-threaded so the model is reproducible."""
  import sentencepiece

  def lines():
    for document in documents:
      for line in document.splitlines():
        if line.strip():
          yield line

  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=-1,
        eos_id=1, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=2_000_000, max_sentence_length=16384, minloglevel=2,
        hard_vocab_limit=False)  # a small corpus may give fewer pieces; the model follows
  except RuntimeError as e:
    reason = " ".join(str(e).split()).rsplit("] ", 1)[-1].split(" Increase")[0]
    raise ValueError(f"sentencepiece cannot make a vocabulary of data.vocab_size={vocab_size} "
                     f"for this corpus ({reason}); raise data.vocab_size") from None
  return SentencePieceTokenizer(model.getvalue())


def load_saved(directory: str) -> Tokenizer | None:
  """The tokenizer a run saved (``<workdir>/tokenizer/``, written by ``save_tokenizer``), or
  None where the directory holds none (a run on synthetic tokens)."""
  if os.path.exists(os.path.join(directory, HfTokenizer.FILE)):
    return load_hf(directory)
  if os.path.exists(os.path.join(directory, SentencePieceTokenizer.MODEL_FILE)):
    with open(os.path.join(directory, SentencePieceTokenizer.MODEL_FILE), "rb") as f:
      return SentencePieceTokenizer(f.read())
  if os.path.exists(os.path.join(directory, "tokenizer.txt")):
    return BytesTokenizer()
  return None
