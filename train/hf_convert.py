"""Hugging Face checkpoints in and out of isoflop runs (what ``isoflop convert`` does).

In: a directory with ``config.json`` and safetensors weights (``model.safetensors``, the
sharded ``model.safetensors.index.json`` form, or any ``*.safetensors``), optionally
``tokenizer.json``, becomes a run holding those parameters at step 0: ``config.json`` (the
record ``isoflop train`` writes, plus ``converted_from``), ``checkpoints/0`` (the whole train
state, so the run loads as ``init_from``, in ``isoflop compress`` and ``isoflop sample``) and
``tokenizer/``. Out: a run's checkpoint becomes ``config.json`` + ``model.safetensors`` (+ the
run's ``tokenizer.json``) that transformers' ``from_pretrained`` loads.

The layouts are the families' own mappings (``models/decoder_hf.py``, ``models/encoder/hf.py``,
``models/encdec/hf.py``); this module reads and writes files around them. Safetensors go
through the package's NumPy API: nothing here imports torch. Every output is built under a
temporary name beside its target and renamed when complete.
"""

import contextlib
import dataclasses
import glob
import json
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from isoflop.models import decoder_hf
from isoflop.models.encdec import hf as encdec_hf
from isoflop.models.encoder import hf as encoder_hf
from isoflop.train import build, checkpointing, init_from, run_record
from isoflop.train import state as state_lib
from isoflop.train.data import TOKENIZER_DIR, tokenizers

# model_type -> the family that holds it and the module that maps it.
MODEL_TYPES = {"gpt2": ("decoder", decoder_hf), "llama": ("decoder", decoder_hf),
               "bert": ("encoder", encoder_hf), "t5": ("encdec", encdec_hf),
               "mt5": ("encdec", encdec_hf)}
MAPPINGS = {"decoder": decoder_hf, "encoder": encoder_hf, "encdec": encdec_hf}
SUPPORTED = ("GPT-2 and Llama (model.family=decoder), BERT (encoder), T5 and mT5 (encdec)")
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# config.json keys naming special token ids, kept from the original checkpoint on the way back.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                 "sep_token_id")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A Hugging Face checkpoint directory, its config read and mapped (weights not yet read)."""
  directory: str
  hf_config: dict[str, Any]
  family: str
  model_config: Any  # the family's config dataclass
  weight_files: tuple[str, ...]
  tokenizer: Any  # tokenizers.HfTokenizer, or None where the directory has no tokenizer.json


def _weight_files(directory: str) -> tuple[str, ...]:
  index = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      names = sorted(set(json.load(f).get("weight_map", {}).values()))
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing or not names:
      raise ValueError(f"{INDEX_FILE} in {directory} names shards that are not there "
                       f"({', '.join(missing[:3]) or 'none named'}); download every shard")
    return tuple(os.path.join(directory, n) for n in names)
  if os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
    return (os.path.join(directory, WEIGHTS_FILE),)
  found = tuple(sorted(glob.glob(os.path.join(directory, "*.safetensors"))))
  if found:
    return found
  torch_files = glob.glob(os.path.join(directory, "*.bin")) + glob.glob(
      os.path.join(directory, "*.pt"))
  if torch_files:
    raise ValueError(f"{directory} holds {os.path.basename(torch_files[0])} but no "
                     "*.safetensors; re-save it with model.save_pretrained(dir, "
                     "safe_serialization=True) where torch is installed")
  raise ValueError(f"{directory} holds no *.safetensors weights; download the checkpoint's "
                   "model.safetensors next to its config.json")


def read_checkpoint(directory: str) -> Checkpoint:
  """The checkpoint's config mapped onto a family config, its weight files and tokenizer; a
  one-line ValueError for a missing config or weights, or an architecture not supported."""
  if not os.path.isdir(directory):
    raise ValueError(f"--from_hf={directory} is not a directory; point it at a Hugging Face "
                     "checkpoint (config.json + *.safetensors)")
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"--from_hf={directory} has no config.json; point it at a Hugging Face "
                     "checkpoint directory (config.json + *.safetensors)")
  with open(path, encoding="utf-8") as f:
    hf_config = json.load(f)
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    architectures = ", ".join(hf_config.get("architectures") or []) or "no architectures"
    raise ValueError(f"model_type={model_type!r} ({architectures}) is not supported; isoflop "
                     f"convert supports {SUPPORTED}")
  family, mapping = MODEL_TYPES[model_type]
  model_config = mapping.config_from_hf(hf_config)
  weight_files = _weight_files(directory)
  tokenizer = None
  if os.path.isfile(os.path.join(directory, tokenizers.HfTokenizer.FILE)):
    tokenizer = tokenizers.load_hf(directory, vocab_size=model_config.vocab_size)
  return Checkpoint(directory, hf_config, family, model_config, weight_files, tokenizer)


def _renamed(name: str) -> str:
  """Names as transformers reads them: early BERT checkpoints call LayerNorm's weight and bias
  gamma and beta."""
  for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
    if name.endswith("LayerNorm" + old):
      return name[:-len(old)] + new
  return name


def read_params(checkpoint: Checkpoint) -> dict[str, Any]:
  """The family's parameter tree (float32 NumPy arrays) from the checkpoint's safetensors."""
  from safetensors import numpy as safetensors_np
  weights = {}
  for file in checkpoint.weight_files:
    try:
      arrays = safetensors_np.load_file(file)
    except Exception as e:  # safetensors raises its own error types for a damaged file
      raise ValueError(f"{file} does not read as safetensors ({' '.join(str(e).split())}); "
                       "download it again") from None
    weights.update({_renamed(n): a for n, a in arrays.items()})
  return MAPPINGS[checkpoint.family].params_from_hf(weights, checkpoint.model_config)


@contextlib.contextmanager
def staged(out: str):
  """A scratch directory beside ``out`` that becomes ``out`` (empty or absent) when the block
  completes; removed, with ``out`` untouched, when it raises."""
  staging = f"{os.path.abspath(out).rstrip('/')}.tmp-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    yield staging
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked before): replaced by the complete output
    os.rename(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _write_files(directory: str, files: dict[str, bytes]) -> None:
  os.makedirs(directory, exist_ok=True)
  for name, payload in files.items():
    with open(os.path.join(directory, name), "wb") as f:
      f.write(payload)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def write_run(config, params: dict[str, Any], out: str, converted_from: dict[str, Any],
              tokenizer=None, extra_files: dict[str, bytes] | None = None) -> dict[str, Any]:
  """``out`` as a run of ``config`` holding ``params`` at step 0, as ``isoflop compress``
  writes its runs: the record of ``build.prepare`` (compiled on one device) with
  ``converted_from``, a fresh train state with these parameters, the tokenizer's files.
  Returns the record."""
  prepared = build.prepare(config, devices=jax.devices()[:1])
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(
        prepared.task, prepared.tx, prepared.batch_shapes, state_lib.seed_keys(config.seed),
        jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
  expected, got = _shapes(state.params), _shapes(params)
  if expected != got:  # the mapped tree must be exactly the one init builds
    wrong = sorted(set(expected.items()) ^ set(got.items()))[0][0]
    raise ValueError(f"the mapped parameter {wrong} does not fit the model; the checkpoint "
                     "and its config.json disagree")
  state = state.replace(params=jax.tree.map(
      lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding), params,
      state.params))
  with staged(out) as staging:
    checkpoints = checkpointing.Checkpoints(staging, keep=None)
    checkpoints.save(0, state, {"next_index": 0, "interval_losses": []})
    checkpoints.close()
    if tokenizer is not None:
      _write_files(os.path.join(staging, TOKENIZER_DIR), tokenizer.files())
    _write_files(staging, extra_files or {})
    record = {**prepared.record, "converted_from": converted_from}
    run_record.write_json_atomically(os.path.join(staging, "config.json"), record)
  return record


def run_params(workdir: str, step: int) -> dict[str, Any]:
  """A run's saved parameters at ``step`` as a tree of NumPy arrays (their saved dtypes), read
  onto the host alone: nothing else of the train state is read."""
  from isoflop.train import init_from
  saved = checkpointing.saved_tree(workdir, step)["params"]
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  wanted = {}
  for path, meta in jax.tree_util.tree_leaves_with_path(
      saved, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")):
    name = "params/" + jax.tree_util.keystr(path, simple=True, separator="/")
    wanted[name] = jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=host)
  arrays = init_from.read_arrays(workdir, step, wanted)
  return init_from.nest({name: np.asarray(a) for name, a in arrays.items()})["params"]


def hf_config_of(family: str, model_config, special_ids: dict[str, int],
                 dtype: str) -> dict[str, Any]:
  """The transformers config.json of a family config; a one-line ValueError naming what none
  of the supported architectures can express."""
  if family not in MAPPINGS:
    raise ValueError(f"model.family={family!r} has no Hugging Face counterpart here; isoflop "
                     f"convert supports {SUPPORTED}")
  try:
    fields = MAPPINGS[family].config_to_hf(model_config)
  except ValueError as e:
    raise ValueError(f"{e}; isoflop convert supports {SUPPORTED}") from None
  # transformers 4 reads torch_dtype, 5 reads dtype.
  return {**fields, **special_ids, "dtype": dtype, "torch_dtype": dtype, "use_cache": True}


def write_hf(out: str, family: str, model_config, params: dict[str, Any],
             special_ids: dict[str, int], tokenizer_dir: str | None) -> dict[str, Any]:
  """``out`` as a transformers checkpoint: config.json, model.safetensors and, when the run
  has one, its tokenizer.json (with Hugging Face's side files it was converted with)."""
  from safetensors import numpy as safetensors_np
  dtypes = {np.asarray(a).dtype for a in jax.tree.leaves(params)}
  dtype = "bfloat16" if any(d.name == "bfloat16" for d in dtypes) else "float32"
  hf_config = hf_config_of(family, model_config, special_ids, dtype)
  state_dict = MAPPINGS[family].params_to_hf(params, model_config)
  with staged(out) as staging:
    # safetensors writes each array's memory as it lies: transposed views must be copied.
    weights = os.path.join(staging, WEIGHTS_FILE)
    safetensors_np.save_file({n: np.ascontiguousarray(a) for n, a in state_dict.items()},
                             weights, metadata={"format": "pt"})  # transformers wants "pt"
    os.chmod(weights, 0o644)  # safetensors creates it owner-only; a checkpoint is for sharing
    run_record.write_json_atomically(os.path.join(staging, "config.json"), hf_config)
    if tokenizer_dir is not None:
      for name in (tokenizers.HfTokenizer.FILE,) + tokenizers.HfTokenizer.SIDE_FILES:
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
          shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(staging, name))
  return hf_config
