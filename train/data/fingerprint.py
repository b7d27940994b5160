"""Content digests of data arrays: what ``config.json`` records of the data a run read, so a
resumed run can tell that the data changed (``data_digest``)."""

import hashlib

import numpy as np


def array_digest(array: np.ndarray) -> str:
  """16 hex digits of SHA-256 over the dtype, shape and bytes: equal exactly when the arrays
  are (reads a memory-mapped array through once, about a second per GB)."""
  array = np.ascontiguousarray(array)
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(memoryview(array).cast("B"))
  return digest.hexdigest()[:16]
