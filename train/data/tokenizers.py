"""Tokenizers by name: ``bytes`` (UTF-8 bytes, vocabulary 256) and ``sentencepiece`` (trained
on the run's own documents to ``data.vocab_size``). Both end each document with an EOS id."""

import hashlib
import io
from typing import Iterable, Protocol

import numpy as np

TOKENIZERS = ("bytes", "sentencepiece")


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
