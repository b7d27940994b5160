"""Tokenize once: the token streams of a (documents, tokenizer) pair, cached as ``.npy`` files.

An entry is written into a temporary directory and renamed into place when complete, so an
interrupted run never leaves an entry that a later run would use.
"""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable

import numpy as np


def default_cache_dir() -> str:
  return os.environ.get("ISOFLOP_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "isoflop")


def key(*parts: str) -> str:
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def entry_dir(cache_dir: str, kind: str, entry_key: str) -> str:
  return os.path.join(cache_dir, kind, entry_key)


def load(path: str) -> dict[str, np.ndarray] | None:
  """The arrays of a complete entry (memory-mapped), or None."""
  if not os.path.exists(os.path.join(path, "meta.json")):
    return None
  with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
    meta = json.load(f)
  return {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
          for name in meta["arrays"]}


def store(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
  """Writes all arrays and meta.json into a temporary sibling, then renames it to ``path``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(path))
  try:
    for name, array in arrays.items():
      np.save(os.path.join(tmp, f"{name}.npy"), array)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump({**meta, "arrays": sorted(arrays)}, f, indent=2)
    try:
      os.rename(tmp, path)
    except OSError:  # another process finished the same entry first; theirs is as good
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def concatenate(token_arrays: Iterable[np.ndarray], eos_id: int, vocab_size: int) -> np.ndarray:
  """One stream: each document's tokens followed by EOS, in the smallest fitting dtype."""
  dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
  pieces = []
  eos = np.array([eos_id], dtype)
  for tokens in token_arrays:
    pieces.append(tokens.astype(dtype))
    pieces.append(eos)
  return np.concatenate(pieces) if pieces else np.zeros(0, dtype)
