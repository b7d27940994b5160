"""`isoflop convert`: Hugging Face checkpoints into runs and back (train/hf_convert.py).

Each golden file (tests/golden/*.npz: a random-weight transformers model, its config and its
logits) is written as a checkpoint directory, config.json + model.safetensors, and converted
into a run. The run's parameters must give the golden logits within 1e-4; the way back must
give the golden weights bit for bit, and reading those back the run's parameters bit for bit.
Nothing here imports torch: tests/golden/check_to_hf.py checks, by hand, that transformers
loads what --to_hf writes.
"""

import contextlib
import io
import json
import pathlib
import types

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from isoflop.experiments import cli, compress
from isoflop.models import families
from isoflop.train import hf_convert
from isoflop.train.data import tokenizers
from test_hf_parity import ATOL, FILES, _load, _prefixed

STEMS = [p.stem for p in FILES]
WITH_TOKENIZER = ("gpt2", "bert")  # the others convert without one
LINES = ["the king spoke to the queen", "a queen and a king walked home",
         "the home of the king was old", "old words spoke to a young queen"] * 5


def _convert(*args) -> int:
  return cli.main(["isoflop", "convert", *map(str, args)])


def _tiny_tokenizer(path: pathlib.Path) -> None:
  """A word-level tokenizer.json trained on LINES: 20-odd ids, inside the golden vocabulary."""
  import tokenizers as hf_tokenizers
  from tokenizers import models, pre_tokenizers, trainers
  tokenizer = hf_tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(LINES, trainers.WordLevelTrainer(special_tokens=["</s>",
                                                                                 "[UNK]"]))
  tokenizer.save(str(path))


def _checkpoint_dir(golden: dict, directory: pathlib.Path, weights=None) -> pathlib.Path:
  directory.mkdir(parents=True)
  weights = _prefixed(golden, "weight/") if weights is None else weights
  safetensors_np.save_file({n: np.ascontiguousarray(a) for n, a in weights.items()},
                           str(directory / "model.safetensors"))
  (directory / "config.json").write_text(str(golden["config_json"]))
  return directory


def _run_model(workdir: pathlib.Path):
  """(family, model config, params) of a run, read back as any later command reads it."""
  record = json.loads((workdir / "config.json").read_text())
  config = compress.run_config(record["config"])
  return config.model.family, families.model_config(config), hf_convert.run_params(
      str(workdir), 0)


@pytest.fixture(scope="module", params=STEMS)
def converted(request, tmp_path_factory):
  """A golden file converted HF -> run -> HF, with each command's output."""
  stem = request.param
  golden = _load(next(p for p in FILES if p.stem == stem))
  root = tmp_path_factory.mktemp(stem)
  hf_dir = _checkpoint_dir(golden, root / "hf")
  if stem in WITH_TOKENIZER:
    _tiny_tokenizer(hf_dir / "tokenizer.json")
  outputs = []
  for args in ([f"--from_hf={hf_dir}", f"--workdir={root / 'run'}"],
               [f"--workdir={root / 'run'}", f"--to_hf={root / 'back'}"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
      assert _convert(*args) == 0, args
    outputs.append(out.getvalue())
  return types.SimpleNamespace(stem=stem, golden=golden, root=root, hf_dir=hf_dir,
                               outputs=outputs)


def test_converted_weights_give_the_golden_logits(converted):
  family, model_config, params = _run_model(converted.root / "run")
  assert family == str(converted.golden["family"])
  call = {n: jnp.asarray(a) for n, a in _prefixed(converted.golden, "call/").items()}
  logits = np.asarray(families.get(family).make_model(model_config).apply({"params": params},
                                                                          **call))
  reference = converted.golden["logits"]
  np.testing.assert_allclose(logits[..., :reference.shape[-1]], reference, atol=ATOL, rtol=0)


def test_round_trip_is_bitwise(converted):
  """run -> HF files: the golden state dict exactly; HF files -> run: the same parameters."""
  written = safetensors_np.load_file(str(converted.root / "back" / "model.safetensors"))
  golden = _prefixed(converted.golden, "weight/")
  assert sorted(written) == sorted(golden)
  for name, array in golden.items():
    assert written[name].dtype == array.dtype and np.array_equal(written[name], array), name
  family, model_config, params = _run_model(converted.root / "run")
  # What --from_hf reads from the written directory (it then only stores it).
  checkpoint = hf_convert.read_checkpoint(str(converted.root / "back"))
  assert (checkpoint.family, checkpoint.model_config) == (family, model_config)
  flat_first, flat_second = _flat(params), _flat(hf_convert.read_params(checkpoint))
  assert sorted(flat_first) == sorted(flat_second)
  for name, array in flat_first.items():
    assert array.dtype == flat_second[name].dtype and np.array_equal(array, flat_second[name])
  hf_config = json.loads((converted.root / "back" / "config.json").read_text())
  original = json.loads(str(converted.golden["config_json"]))
  assert hf_config["model_type"] == original["model_type"] and hf_config["architectures"]


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
  return {prefix: np.asarray(tree)}


def test_a_tokenizer_is_kept_and_tokenizes_as_the_original(converted):
  """tokenizer.json goes into the run (and back out with --to_hf); the run's tokenizer, and
  the data pipeline's with data.tokenizer=hf, give the original's ids. A checkpoint without one
  converts too, and the output says prompts are then token ids."""
  if converted.stem not in WITH_TOKENIZER:
    assert not (converted.root / "run" / "tokenizer").exists()
    assert "prompts only as token ids" in converted.outputs[0]
    return
  import tokenizers as hf_tokenizers
  original = hf_tokenizers.Tokenizer.from_file(str(converted.hf_dir / "tokenizer.json"))
  saved = tokenizers.load_saved(str(converted.root / "run" / "tokenizer"))
  assert isinstance(saved, tokenizers.HfTokenizer) and "tokenizer.json kept" in (
      converted.outputs[0])
  text = "the young king spoke to an old queen"  # "an" is unknown: [UNK]
  assert saved.encode(text).tolist() == original.encode(text).ids
  assert saved.decode(saved.encode(text)) == original.decode(original.encode(text).ids)
  # GPT-2's config names eos_token_id=0; BERT's names none, so the token called </s> is EOS.
  assert saved.eos_id == original.token_to_id("</s>") == 0
  assert (converted.root / "back" / "tokenizer.json").read_bytes() == (
      converted.hf_dir / "tokenizer.json").read_bytes()
  from isoflop.train import data as data_lib
  record = json.loads((converted.root / "run" / "config.json").read_text())
  config = compress.run_config(record["config"])
  corpus = converted.root / "corpus.txt"
  corpus.write_text("\n".join(LINES) + "\n")
  with config.ignore_type():
    config.data.source = f"files:{corpus}"
    config.data.one_document_per_line = True
    config.data.cache_dir = str(converted.root / "cache")
  source = data_lib.make_source(config)  # no workdir: read from data.tokenizer_path
  pipeline = getattr(source, "base", source).tokenizer  # masked LM wraps the token source
  assert pipeline.identity() == saved.identity()


@pytest.mark.parametrize("converted", ["gpt2"], indirect=True)
def test_a_converted_run_fine_tunes_with_its_tokenizer(converted, tmp_path):
  """`isoflop train --config=<run>/train_config.py --config.init_from=<run>` on the user's text,
  tokenized by the checkpoint's tokenizer: every parameter loaded, none fresh."""
  run, corpus = converted.root / "run", tmp_path / "corpus.txt"
  corpus.write_text("\n".join(LINES * 4) + "\n")
  tuned = tmp_path / "tuned"
  with contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(["isoflop", "train", f"--config={run / 'train_config.py'}",
                     f"--config.init_from={run}", f"--config.data.source=files:{corpus}",
                     "--config.data.one_document_per_line=True", "--config.steps=2",
                     "--config.log_every=1", "--config.optimizer.warmup_steps=1",
                     f"--config.data.cache_dir={tmp_path / 'cache'}",
                     f"--workdir={tuned}"]) == 0
  record = json.loads((tuned / "config.json").read_text())
  assert record["initialized_from"]["fresh"] == [] and record["initialized_from"]["loaded"]
  assert tokenizers.load_saved(str(tuned / "tokenizer")).identity() == tokenizers.load_saved(
      str(run / "tokenizer")).identity()


def _fake_run(directory: pathlib.Path, family: str | None = None, **model) -> pathlib.Path:
  """A run directory whose config.json names a model (and an empty checkpoint): enough for
  --to_hf to judge the model before reading any weight."""
  from isoflop.experiments.configs import base
  config = base.get_config()
  if family is not None:
    config.model = base.family_model_block(family, families.get(family).config_class)
  for key, value in model.items():
    config.model[key] = value
  (directory / "checkpoints" / "0").mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps({"config": config.to_dict()}))
  return directory


def _bad_case(case: str, tmp_path: pathlib.Path) -> tuple[list[str], pathlib.Path, str]:
  """(arguments, the path that must stay as it was, what the line must say) of one case."""
  golden = _load(next(p for p in FILES if p.stem == "gpt2"))
  hf_dir, workdir, out = tmp_path / "hf", tmp_path / "run", tmp_path / "out"
  from_hf = [f"--from_hf={hf_dir}", f"--workdir={workdir}"]
  if case in ("workdir_not_empty", "missing_workdir", "both_directions", "misshaped",
              "unsupported"):
    weights = _prefixed(golden, "weight/")
    if case == "misshaped":
      weights["transformer.h.0.attn.c_attn.weight"] = weights[
          "transformer.h.0.attn.c_attn.weight"][:, :-1]
    _checkpoint_dir(golden, hf_dir, weights)
  if case == "no_config":
    hf_dir.mkdir()
    safetensors_np.save_file({"wte.weight": np.zeros((2, 2), np.float32)},
                             str(hf_dir / "model.safetensors"))
    return from_hf, workdir, "has no config.json"
  if case in ("no_weights", "torch_weights"):
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(str(golden["config_json"]))
    if case == "torch_weights":
      (hf_dir / "pytorch_model.bin").write_bytes(b"")
      return from_hf, workdir, "pytorch_model.bin but no *.safetensors"
    return from_hf, workdir, "holds no *.safetensors"
  if case == "unsupported":
    (hf_dir / "config.json").write_text(json.dumps(
        {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    return from_hf, workdir, "'mistral' (MistralForCausalLM) is not supported; isoflop convert " \
        "supports GPT-2 and Llama"
  if case == "misshaped":
    return from_hf, workdir, "has shape"
  if case == "workdir_not_empty":
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    return from_hf, workdir, "is not empty"
  if case == "missing_workdir":
    return from_hf[:1], workdir, "missing --workdir"
  if case == "both_directions":
    return from_hf + [f"--to_hf={out}"], out, "exactly one of --from_hf and --to_hf"
  if case == "not_a_run":
    workdir.mkdir()
    return [f"--workdir={workdir}", f"--to_hf={out}"], out, "has no config.json"
  if case == "to_hf_not_empty":
    _fake_run(workdir)
    out.mkdir()
    (out / "config.json").write_text("{}")
    return [f"--workdir={workdir}", f"--to_hf={out}"], out, "is not empty"
  if case == "lstm_run":
    _fake_run(workdir, "lstm")
    return [f"--workdir={workdir}", f"--to_hf={out}"], out, \
        "model.family='lstm' has no Hugging Face counterpart here; isoflop convert supports"
  assert case == "moe_run"
  _fake_run(workdir, num_experts=4)
  return [f"--workdir={workdir}", f"--to_hf={out}"], out, \
      "model.num_experts=4 (a mixture of experts) has no counterpart in GPT-2 or Llama; " \
      "isoflop convert supports"


@pytest.mark.parametrize("case", [
    "no_config", "no_weights", "torch_weights", "unsupported", "misshaped", "workdir_not_empty",
    "missing_workdir", "both_directions", "not_a_run", "to_hf_not_empty", "lstm_run",
    "moe_run"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
  args, untouched, message = _bad_case(case, tmp_path)
  before = sorted(p.name for p in untouched.iterdir()) if untouched.exists() else None
  siblings = sorted(p.name for p in tmp_path.iterdir())
  assert _convert(*args) == cli.EXIT_BAD_INPUT
  out, err = capsys.readouterr()
  assert out == "" and err.count("\n") == 1 and err.startswith("isoflop convert: error: "), err
  assert message in err, err
  after = sorted(p.name for p in untouched.iterdir()) if untouched.exists() else None
  assert after == before and sorted(p.name for p in tmp_path.iterdir()) == siblings
