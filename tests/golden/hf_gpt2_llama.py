"""Golden files for the decoder: tiny random-weight GPT-2 and Llama, run by transformers itself.

Called by ``make_golden.py`` (see there for the environment); writes ``gpt2.npz`` and
``llama.npz``. Both models are built from a config (nothing is downloaded), every parameter is
redrawn at a scale that keeps activations of order one (transformers' init, std 0.02, leaves
logits so small that a wrong mapping would hide under the tolerance), and the models run in
float32 with eager attention. Llama uses grouped-query attention (4 query heads, 2 kv heads)
and an untied readout; GPT-2 ties its readout to the token table.

Each file holds: ``hf_module`` and ``family`` (what the test maps and builds with),
``config_json`` (``config.to_dict()``), ``weight/<state_dict name>`` (parameters only; the
tied ``lm_head.weight`` and buffers such as ``rotary_emb.inv_freq`` are left out),
``call/tokens_BL`` (int32, the Decoder's keyword argument) and ``logits`` (float32, B x L x V).
This module must not import isoflop or jax: it runs where only torch and transformers are.
"""

import json
import pathlib

import numpy as np
import torch
import transformers

HF_MODULE = "isoflop.models.decoder_hf"
BATCH, LENGTH = 2, 16  # LENGTH = n_positions, so every learned position row is exercised
SHAPE = dict(vocab=99, d_model=32, layers=2, heads=4, positions=16)


def _gpt2_config() -> transformers.GPT2Config:
  return transformers.GPT2Config(
      vocab_size=SHAPE["vocab"], n_embd=SHAPE["d_model"], n_layer=SHAPE["layers"],
      n_head=SHAPE["heads"], n_positions=SHAPE["positions"], activation_function="gelu_new",
      bos_token_id=0, eos_token_id=0, attn_implementation="eager")


def _llama_config() -> transformers.LlamaConfig:
  return transformers.LlamaConfig(
      vocab_size=SHAPE["vocab"], hidden_size=SHAPE["d_model"],
      num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=SHAPE["positions"],
      rms_norm_eps=1e-6, rope_theta=10_000.0, tie_word_embeddings=False, bos_token_id=0,
      eos_token_id=0, attn_implementation="eager")


def _redraw(model: torch.nn.Module, fan_in_axis: int, generator: torch.Generator) -> None:
  """Every parameter drawn afresh: norm scales 1 + 0.1 N, biases 0.1 N, token and position
  tables N, matrices N / sqrt(fan in) (GPT-2's Conv1D is (in, out): axis 0; Linear axis 1)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
      if p.ndim == 1:
        p.copy_(0.1 * noise if name.endswith("bias") else 1.0 + 0.1 * noise)
      elif name.endswith(("wte.weight", "wpe.weight", "embed_tokens.weight")):
        p.copy_(noise)
      else:
        axis = 1 if name.startswith("lm_head") else fan_in_axis
        p.copy_(noise / p.shape[axis] ** 0.5)


def _write_one(path: pathlib.Path, model_class, config, fan_in_axis: int, seed: int):
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = model_class(config).to(torch.float32).eval()
  _redraw(model, fan_in_axis, generator)
  tokens_BL = torch.randint(0, config.vocab_size, (BATCH, LENGTH), generator=generator)
  with torch.no_grad():
    logits_BLV = model(input_ids=tokens_BL).logits
  arrays = {
      "hf_module": np.array(HF_MODULE),
      "family": np.array("decoder"),
      "config_json": np.array(json.dumps(config.to_dict())),
      "call/tokens_BL": tokens_BL.numpy().astype(np.int32),
      "logits": logits_BLV.numpy().astype(np.float32),
  }
  # named_parameters drops the tied lm_head.weight (a duplicate) and every buffer.
  for name, p in model.named_parameters():
    arrays[f"weight/{name}"] = p.detach().numpy().astype(np.float32)
  np.savez(path, **arrays)
  return path


def write(out_dir: pathlib.Path) -> list[pathlib.Path]:
  return [
      _write_one(out_dir / "gpt2.npz", transformers.GPT2LMHeadModel, _gpt2_config(),
                 fan_in_axis=0, seed=0),
      _write_one(out_dir / "llama.npz", transformers.LlamaForCausalLM, _llama_config(),
                 fan_in_axis=1, seed=1),
  ]
