"""Data sources, tokenizers, the token cache, packing, splits and the data budget."""

import collections
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from isoflop.experiments.configs import tiny
from isoflop.sharding import mesh as mesh_lib
from isoflop.sharding import rules as rules_lib
from isoflop.train import data as data_lib
from isoflop.train import build, loop
from isoflop.train.data import synthetic, text, token_cache, tokenizers


def _config(**data):
  c = tiny.get_config()
  c.steps, c.batch_size, c.seq_len, c.log_every = 6, 8, 32, 2
  c.optimizer.warmup_steps = 2
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Five small text files: a corpus a run repeats for several epochs."""
  directory = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  words = "to be or not that is the question whether tis nobler in mind".split()
  for i in range(5):
    lines = [" ".join(rng.choice(words, size=8)) for _ in range(40)]
    (directory / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
  return directory


@pytest.mark.parametrize("task", ["masked_lm", "span_corruption"])
def test_text_feeds_the_example_objectives_with_special_tokens_after_the_pieces(corpus, task):
  c = _config(source=f"files:{corpus}/*.txt", tokenizer="sentencepiece", vocab_size=320,
              eval_fraction=0.2)
  c.task = task
  c.span_corruption.num_sentinels = 8
  source = data_lib.make_source(c)
  pieces = source.tokenizer.base.vocab_size
  specials = source.objective.special_tokens
  assert source.vocab_size == pieces + len(specials)
  assert [source.special_ids[name] for name in specials] == list(range(pieces, source.vocab_size))
  assert source.special_ids["<eos>"] == source.tokenizer.eos_id < pieces
  batch = source.batch(np.arange(4))
  assert set(batch) == set(source.objective.required_keys)
  assert batch["inputs"].shape == (4, 32) and batch["inputs"].max() < source.vocab_size
  first_special = pieces + 1  # <mask>, or the first sentinel
  assert (batch["inputs"] == first_special).any()
  assert source.tokenizer.decode([first_special]) == specials[1]
  for key, value in source.batch(np.arange(4)).items():  # deterministic by example index
    np.testing.assert_array_equal(value, batch[key])
  assert not np.array_equal(source.eval_batch(np.arange(4))["inputs"], batch["inputs"])


def test_ngram_source_has_the_entropy_it_claims():
  source = synthetic.NgramSource(64, 64, seed=0, branching=4, zipf=1.0, max_order=3)
  p = 1 / np.arange(1, 5)
  p /= p.sum()
  assert source.entropy_nats == pytest.approx(-(p * np.log(p)).sum())
  tokens = source.examples(range(2000))
  successors = collections.defaultdict(set)
  for row in tokens:  # the last 3 tokens determine the next token's distribution
    for t in range(3, tokens.shape[1] - 1):
      successors[tuple(row[t - 3:t + 1])].add(row[t + 1])
  assert max(len(s) for s in successors.values()) <= 4


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_synthetic_order_depends_on_the_seed_alone(kind):
  c = _config(source=f"synthetic:{kind}")
  source = data_lib.make_source(c)
  big = source.batch(np.arange(16))["inputs"]
  small = np.concatenate([source.batch(np.arange(s * 4, (s + 1) * 4))["inputs"]
                          for s in range(4)])
  np.testing.assert_array_equal(big, small)
  assert not np.array_equal(source.eval_batch(np.arange(4))["inputs"], big[:4])


def test_text_order_depends_on_the_seed_alone_and_changes_each_epoch(corpus):
  source = data_lib.make_source(_config(source=f"files:{corpus}/*.txt", eval_fraction=0.2))
  n = source.num_train_examples
  big = source.batch(np.arange(16))["inputs"]
  small = np.concatenate([source.batch(np.arange(s * 4, (s + 1) * 4))["inputs"]
                          for s in range(4)])
  np.testing.assert_array_equal(big, small)
  first_epoch = [source._order[i] for i in range(n)]
  second_epoch = [source._order[i] for i in range(n, 2 * n)]
  assert sorted(first_epoch) == sorted(second_epoch) == list(range(n))
  assert first_epoch != second_epoch


def test_eval_documents_never_reach_training(corpus):
  documents = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
  train_ids, eval_ids = text.split_documents(documents, 0.2)
  assert eval_ids and not set(train_ids) & set(eval_ids)
  assert sorted(train_ids + eval_ids) == list(range(len(documents)))
  source = data_lib.make_source(_config(source=f"files:{corpus}/*.txt", eval_fraction=0.2))
  decode = source.tokenizer.decode
  train_text = decode(source.train_tokens)
  for i in eval_ids:
    assert documents[i].strip() not in train_text
    assert documents[i].strip() in decode(source.eval_tokens)


def test_segments_and_positions_restart_after_each_eos():
  inputs = np.array([[5, 6, 0, 7, 8, 0, 9, 9]])
  out = text.segments_and_positions(inputs, eos_id=0)
  np.testing.assert_array_equal(out["segment_ids"], [[0, 0, 0, 1, 1, 1, 2, 2]])
  np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 0, 1, 2, 0, 1]])


def test_document_masking_keeps_attention_within_documents():
  from isoflop.models import transformer
  cfg = transformer.TransformerConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4,
                                      positions="rope")
  model = transformer.Decoder(cfg)
  a = np.array([[3, 4, 0, 7, 8, 9]])
  b = np.array([[5, 6, 0, 7, 8, 9]])  # another first document, same second one
  params = model.init(jax.random.key(0), a)["params"]
  masked = [model.apply({"params": params}, x, **{
      k + "_BL": v for k, v in text.segments_and_positions(x, 0).items()}) for x in (a, b)]
  np.testing.assert_allclose(masked[0][:, 3:], masked[1][:, 3:], atol=1e-6)
  plain = [model.apply({"params": params}, x) for x in (a, b)]
  assert not np.allclose(plain[0][:, 3:], plain[1][:, 3:])


def test_sentencepiece_on_files_learns_and_is_kept_in_the_workdir(corpus, tmp_path):
  c = _config(source=f"files:{corpus}/*.txt", tokenizer="sentencepiece", vocab_size=320,
              eval_fraction=0.2)
  c.steps, c.eval_every = 30, 10
  c.optimizer.warmup_steps = 5
  result = loop.train(c, str(tmp_path), progress=False)
  losses = [r["loss"] for r in result.rows if "loss" in r]
  assert losses[-1] < losses[0] - 0.5
  assert [r["step"] for r in result.rows if "eval_loss" in r] == [10, 20, 30]
  record = json.loads((tmp_path / "config.json").read_text())
  vocab = record["data"]["vocab_size"]  # up to 320: a corpus this small yields fewer pieces
  assert 256 < vocab <= 320 and record["data"]["tokenizer"] == "sentencepiece"
  assert record["config"]["model"]["vocab_size"] == vocab  # the model follows the tokenizer
  model = (tmp_path / "tokenizer" / "spm.model").read_bytes()
  reloaded = data_lib.make_source(c, workdir=str(tmp_path))
  assert reloaded.tokenizer.model == model


def test_resume_across_an_epoch_sees_the_same_batches(corpus, tmp_path):
  c = _config(source=f"files:{corpus}/*.txt", eval_fraction=0.2)
  c.seq_len, c.batch_size, c.checkpoint_every = 16, 16, 20
  c.optimizer.schedule = "constant"
  source = data_lib.make_source(c)
  c.steps = 2 * source.num_train_examples // c.batch_size  # about two epochs
  whole = loop.train(c, str(tmp_path / "whole"), progress=False)
  steps = c.steps
  c.steps = 20 * (steps // 40)  # stop mid-epoch, at a checkpoint
  loop.train(c, str(tmp_path / "split"), progress=False)
  c.steps = steps
  resumed = loop.train(c, str(tmp_path / "split"), progress=False)
  assert resumed.resumed_from == 20 * (steps // 40)
  for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_processes_read_disjoint_rows_that_make_up_the_batch():
  mesh = mesh_lib.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharding = rules_lib.batch_sharding(mesh, rules_lib.get_rules("fsdp_tensor"), ndim=2)
  devices = list(mesh.devices.flat)
  halves = [loop.process_rows(sharding, 16, devices[:4]), loop.process_rows(sharding, 16,
                                                                           devices[4:])]
  assert not set(halves[0]) & set(halves[1])
  assert sorted(np.concatenate(halves)) == list(range(16))
  source = data_lib.make_source(_config(source="shakespeare"))
  whole = source.batch(np.arange(16))["inputs"]
  for rows in halves:
    np.testing.assert_array_equal(source.batch(rows)["inputs"], whole[rows])


def test_ngram_source_trains(tmp_path):
  result = loop.train(_config(source="synthetic:ngram"), str(tmp_path), progress=False)
  assert result.rows[-1]["loss"] < result.rows[0]["loss"]
  assert result.record["data"]["entropy_nats"] == pytest.approx(1.8158, abs=1e-4)


def test_shakespeare_trains_and_evaluates(tmp_path):
  c = _config(source="shakespeare")
  c.eval_every = 3
  result = loop.train(c, str(tmp_path), progress=False)
  assert result.record["data"]["train_tokens"] > 4_000_000
  assert any("eval_loss" in r for r in result.rows)


def test_tfds_text_and_images_from_a_locally_built_dataset(tmp_path):
  from isoflop.train.data import tfds_builders
  for builder in (tfds_builders.IsoflopTinyText, tfds_builders.IsoflopTinyImages):
    builder(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  c = _config(source="tfds:isoflop_tiny_text", tfds_data_dir=str(tmp_path / "tfds"))
  result = loop.train(c, str(tmp_path / "run"), progress=False)
  assert result.rows[-1]["loss"] < result.rows[0]["loss"]
  images = data_lib.make_source(_config(source="tfds:isoflop_tiny_images",
                                        tfds_data_dir=str(tmp_path / "tfds")))
  batch = images.batch(np.arange(8))
  assert batch["image"].shape == (8, 8, 8, 1) and batch["label"].shape == (8,)
  assert images.describe()["num_classes"] == 4
  # Read on demand (how imagenet2012 is read): the same batches as in memory, augmented too.
  c = _config(source="tfds:isoflop_tiny_images", tfds_data_dir=str(tmp_path / "tfds"),
              normalize=True)
  c.data.augment.update(flip=True, mixup_alpha=0.4)
  c.model.image_size = 8
  in_memory = data_lib.make_source(c)
  c.data.stream_images = True
  streamed = data_lib.make_source(c)
  assert streamed.describe()["streamed"] and streamed.describe()["image_shape"] == [8, 8, 1]
  for method in ("batch", "eval_batch"):
    for key, value in getattr(in_memory, method)(np.arange(16)).items():
      np.testing.assert_array_equal(getattr(streamed, method)(np.arange(16))[key], value)
  c.model.image_size = 4  # fitted: the shorter side resized, then a square crop
  assert data_lib.make_source(c).batch(np.arange(4))["image"].shape == (4, 4, 4, 1)


def test_digits_images():
  source = data_lib.make_source(_config(source="digits", eval_fraction=0.1))
  batch = source.batch(np.arange(32))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].max() <= 1.0
  assert source.num_train_examples + source.num_eval_examples == 1797


def test_image_held_out_split_does_not_depend_on_the_seed():
  c = _config(source="digits", eval_fraction=0.1)
  c.seed = 1
  sources = [data_lib.make_source(_config(source="digits", eval_fraction=0.1)),
             data_lib.make_source(c)]
  held_out = [s.eval_batch(np.arange(s.num_eval_examples)) for s in sources]
  np.testing.assert_array_equal(held_out[0]["image"], held_out[1]["image"])
  np.testing.assert_array_equal(held_out[0]["label"], held_out[1]["label"])
  assert not np.array_equal(sources[0].batch(np.arange(32))["image"],  # the order still does
                            sources[1].batch(np.arange(32))["image"])
  assert sources[0].digest() == sources[1].digest()  # the data, not the seed


def test_resume_refuses_changed_data_but_not_a_touched_corpus(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(3):
    (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "to be or not to be, " * 40)
  c = _config(source=f"files:{corpus}/*.txt", eval_fraction=0.2)
  c.steps, c.checkpoint_every = 2, 2
  workdir = tmp_path / "run"
  loop.train(c, str(workdir), progress=False)
  digest = json.loads((workdir / "config.json").read_text())["data_digest"]
  assert set(digest) == {"tokenizer", "train_tokens", "eval_tokens"}
  # The same text with another modification time: a new token-cache entry, the same tokens.
  for path in corpus.iterdir():
    os.utime(path, ns=(0, 0))
  c.steps = 4
  assert loop.train(c, str(workdir), progress=False).resumed_from == 2
  for path in corpus.iterdir():
    path.write_text(path.read_text().replace("be", "go"))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  c.steps = 6
  with pytest.raises(ValueError, match=r"^the data changed since the checkpointed run: "
                     r"eval_tokens \(\w+ -> \w+\); train_tokens \(\w+ -> \w+\); use the "
                     r"original data or a new --workdir$"):
    loop.train(c, str(workdir), progress=False)
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
  # A workdir from before data digests were recorded: nothing to compare, it resumes.
  record = json.loads((workdir / "config.json").read_text())
  del record["data_digest"]
  (workdir / "config.json").write_text(json.dumps(record))
  assert loop.train(c, str(workdir), progress=False).resumed_from == 4


def test_interrupted_cache_writes_are_never_used(tmp_path, monkeypatch):
  entry = str(tmp_path / "tokens" / "abc")
  calls = []

  def failing_save(path, array):
    calls.append(path)
    if len(calls) == 2:
      raise KeyboardInterrupt  # as if the run were stopped half way through the entry
    np.lib.format.write_array(open(path, "wb"), array)

  monkeypatch.setattr(np, "save", failing_save)
  with pytest.raises(KeyboardInterrupt):
    token_cache.store(entry, {"train": np.arange(5), "eval": np.arange(3)}, {})
  assert token_cache.load(entry) is None
  assert os.listdir(tmp_path / "tokens") == []


def test_data_budget_refuses_too_many_epochs(corpus):
  c = _config(source=f"files:{corpus}/*.txt", max_epochs=1.0)
  c.steps = 10_000
  with pytest.raises(ValueError, match=r"epochs of the .* data.max_epochs=1.0"):
    build.prepare(c, devices=jax.devices()[:1])


def test_bytes_tokenizer_round_trips():
  tokenizer = tokenizers.BytesTokenizer()
  assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"


BAD_DATA = {
    "unknown_source": (["--config.data.source=wikipedia"], "unknown data.source 'wikipedia'"),
    "unknown_tokenizer": (["--config.data.source=shakespeare", "--config.data.tokenizer=bpe"],
                          "unknown data.tokenizer 'bpe'"),
    "vocab_too_small": (["--config.data.source=shakespeare",
                         "--config.data.tokenizer=sentencepiece", "--config.data.vocab_size=100"],
                        "sentencepiece cannot make a vocabulary"),
    "bytes_vocab": (["--config.data.source=shakespeare", "--config.data.vocab_size=100"],
                    "does not fit the bytes tokenizer"),
    "not_prepared": (["--config.data.source=tfds:lm1b", "--config.data.tfds_data_dir=/nonexistent"],
                     "is not prepared as array_record"),
    "empty_glob": (["--config.data.source=files:/nonexistent/*.txt"], "matched no files"),
    "binary_file": ([f"--config.data.source=files:{sys.executable}"], "is not UTF-8 text"),
    "too_long_for_positions": (["--config.data.source=shakespeare", "--config.model.max_len=16"],
                               "longer than model.max_len"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_input_is_one_line_and_writes_nothing(name, tmp_path):
  args, expected = BAD_DATA[name]
  out = subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", "train",
                        "--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/run",
                        *args], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], out.stderr
  assert not (tmp_path / "run").exists()


def test_one_document_is_one_document_in_the_split_message():
  from isoflop.train.data import text
  with pytest.raises(ValueError, match=r"only 1 document: too few"):
    text.split_documents(["a single play"], 0.1)
