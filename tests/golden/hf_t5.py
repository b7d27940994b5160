"""Golden files for the encoder-decoder: tiny random-weight ``T5ForConditionalGeneration``
models (no download).

Writes ``t5.npz`` (T5 v1.0's layout: ReLU MLP, readout tied to the token table and scaled by
d_model**-0.5) and ``t5_v1_1.npz`` (T5.1.1's: gated-GELU MLP, a separate unscaled ``lm_head``):
the Hugging Face config, every weight under its state-dict name, the inputs as the keyword
arguments of ``isoflop.models.encdec.EncoderDecoder`` (one padded encoder position) and the
float32 logits. Sequences of 20 encoder and 18 decoder tokens reach past the 16-token maximum
distance of the 8 relative-position buckets, so every kind of bucket (exact, logarithmic,
clipped) is used. Run through ``make_golden.py``; needs torch and transformers, never isoflop
or jax.
"""

import json
import pathlib

import numpy as np

ENCODER_LEN, DECODER_LEN = 20, 18


def _one(name: str, feed_forward_proj: str, tied: bool, seed: int, out_dir: pathlib.Path
         ) -> pathlib.Path:
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
      dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj=feed_forward_proj,
      tie_word_embeddings=tied, attn_implementation="eager")
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for param_name, tensor in model.named_parameters():  # random norms: their mapping counts
      if "layer_norm" in param_name:
        tensor.copy_(1.0 + 0.1 * torch.randn_like(tensor))
    if not tied:
      # transformers 5 ties lm_head to the table even for T5.1.1 (it only drops the scale);
      # a head of its own checks that the untied readout is mapped from lm_head.
      model.lm_head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
      torch.nn.init.normal_(model.lm_head.weight, std=config.d_model ** -0.5)
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, config.vocab_size, (2, ENCODER_LEN)).astype(np.int64)
  decoder_inputs = rng.integers(0, config.vocab_size, (2, DECODER_LEN)).astype(np.int64)
  mask = np.ones_like(inputs)
  mask[1, -1] = 0  # the second row's last input is padding
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(inputs), attention_mask=torch.from_numpy(mask),
                   decoder_input_ids=torch.from_numpy(decoder_inputs)).logits.numpy()
  arrays = {"hf_module": np.array("isoflop.models.encdec.hf"), "family": np.array("encdec"),
            "config_json": np.array(json.dumps(config.to_dict())),
            "call/inputs_BL": inputs.astype(np.int32),
            "call/decoder_inputs_BT": decoder_inputs.astype(np.int32),
            "call/input_mask_BL": mask.astype(np.int32), "logits": logits.astype(np.float32)}
  duplicates = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}  # = shared
  if tied:
    duplicates.add("lm_head.weight")
  for param_name, tensor in model.state_dict().items():
    if param_name not in duplicates:
      arrays[f"weight/{param_name}"] = tensor.numpy().astype(np.float32)
  path = out_dir / name
  np.savez_compressed(path, **arrays)
  return path


def write(out_dir: pathlib.Path) -> list[pathlib.Path]:
  return [_one("t5.npz", "relu", tied=True, seed=0, out_dir=out_dir),
          _one("t5_v1_1.npz", "gated-gelu", tied=False, seed=1, out_dir=out_dir)]
