"""Every family's logits match Hugging Face's on the same random weights (tests/golden/*.npz).

Each golden file names the module that maps a transformers config and state dict onto ours
(``config_from_hf``, ``params_from_hf``) and the family that builds the model; the logits must
agree within 1e-4 in float32. The files come from ``tests/golden/make_golden.py``, run by hand
where torch is installed: this suite reads only NumPy arrays and never imports torch.
"""

import importlib
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.models import decoder_hf, families

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
FILES = sorted(GOLDEN.glob("*.npz"))
MAX_BYTES = 500 * 1024
ATOL = 1e-4
# The fields of LlamaConfig.to_dict() the mapping reads, for the config tests.
_LLAMA_CONFIG = {"model_type": "llama", "vocab_size": 99, "hidden_size": 32,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 64, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                 "tie_word_embeddings": False}


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as z:  # strings are stored as unicode arrays: no pickle needed
    return {name: z[name] for name in z.files}


def _prefixed(golden: dict, prefix: str) -> dict[str, np.ndarray]:
  return {k.removeprefix(prefix): v for k, v in golden.items() if k.startswith(prefix)}


def _mapping(golden: dict):
  """(the module that maps the checkpoint, our config) of a golden file."""
  mapping = importlib.import_module(str(golden["hf_module"]))
  return mapping, mapping.config_from_hf(json.loads(str(golden["config_json"])))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_logits_match_hugging_face(path):
  golden = _load(path)
  mapping, cfg = _mapping(golden)
  params = mapping.params_from_hf(_prefixed(golden, "weight/"), cfg)
  model = families.get(str(golden["family"])).make_model(cfg)
  call = {name: jnp.asarray(a) for name, a in _prefixed(golden, "call/").items()}

  # The mapped tree is exactly the one init builds: same keys, shapes, float32 leaves.
  expected = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), **call)["params"]))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert got.shape == want.shape and got.dtype == np.float32

  logits = np.asarray(model.apply({"params": params}, **call))
  reference = golden["logits"]
  vocab = reference.shape[-1]  # a padded vocabulary adds columns beyond the real ones
  assert logits.shape[:-1] == reference.shape[:-1] and logits.shape[-1] >= vocab
  np.testing.assert_allclose(logits[..., :vocab], reference, atol=ATOL, rtol=0)


def _misshape(weights, name):
  weights[name] = weights[name][..., :-1]


def _drop(weights, name):
  del weights[name]


def _add(weights, name):
  weights[name] = np.zeros(weights[name.replace(".bias", ".weight")].shape[:1], np.float32)


@pytest.mark.parametrize("stem, name, change, message", [
    ("gpt2", "transformer.h.0.attn.c_attn.weight", _misshape, "has shape"),
    ("llama", "model.layers.1.self_attn.k_proj.weight", _drop, "missing weight"),
    ("llama", "model.layers.0.self_attn.q_proj.bias", _add, "no place in the decoder"),
], ids=["gpt2-misshaped", "llama-missing", "llama-left-over"])
def test_a_wrong_weight_is_refused_in_one_line(stem, name, change, message):
  path = GOLDEN / f"{stem}.npz"
  if not path.exists():
    pytest.skip(f"{path.name} not generated")
  golden = _load(path)
  mapping, cfg = _mapping(golden)
  weights = _prefixed(golden, "weight/")
  change(weights, name)
  with pytest.raises(ValueError, match=message) as error:
    mapping.params_from_hf(weights, cfg)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "not mapped onto the decoder"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "no frequency scaling"),
    ({"hidden_act": "gelu"}, "no counterpart"),
    ({"attention_bias": True}, "sets both"),
], ids=["model-type", "rope-scaling", "exact-gelu-gate", "biases"])
def test_a_config_the_decoder_cannot_express_is_refused(change, message):
  with pytest.raises(ValueError, match=message) as error:
    decoder_hf.config_from_hf({**_LLAMA_CONFIG, **change})
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("rope", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},  # transformers 5
    {"rope_scaling": {"rope_type": "default", "rope_theta": 5e5}},
    {"rope_theta": 5e5, "rope_scaling": None},  # transformers 4
], ids=["rope_parameters", "rope_scaling", "top-level"])
def test_rope_theta_is_found_where_each_transformers_version_keeps_it(rope):
  assert decoder_hf.config_from_hf({**_LLAMA_CONFIG, **rope}).rope_theta == 5e5


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_files_stay_small(path):
  assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
