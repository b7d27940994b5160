"""Golden file for the encoder: a tiny random-weight ``BertForMaskedLM`` (no download).

Writes ``bert.npz``: the Hugging Face config, every weight under its state-dict name, the
inputs as the keyword arguments of ``isoflop.models.encoder.Encoder`` (one row padded, both
token types used) and the float32 logits. Run through ``make_golden.py``; needs torch and
transformers, never isoflop or jax.
"""

import json
import pathlib

import numpy as np


def write(out_dir: pathlib.Path) -> list[pathlib.Path]:
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.BertForMaskedLM(config).eval()
  # Every parameter redrawn so activations are of order one (transformers' std-0.02 init gives
  # logits so small that a wrong mapping could pass under the tolerance): norm scales 1 + 0.1 N,
  # biases 0.1 N, tables N, matrices N / sqrt(fan-in).
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      noise = torch.randn_like(tensor)
      if "LayerNorm" in name and name.endswith("weight"):
        tensor.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        tensor.copy_(0.1 * noise)
      elif "embeddings" in name:
        tensor.copy_(noise)
      else:
        tensor.copy_(noise / tensor.shape[1] ** 0.5)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (2, 12)).astype(np.int64)
  types = np.zeros_like(tokens)
  types[:, 6:] = 1
  mask = np.ones_like(tokens)
  mask[1, 9:] = 0  # padding at the end of the second row
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(tokens), token_type_ids=torch.from_numpy(types),
                   attention_mask=torch.from_numpy(mask)).logits.numpy()
  arrays = {"hf_module": np.array("isoflop.models.encoder.hf"), "family": np.array("encoder"),
            "config_json": np.array(json.dumps(config.to_dict())),
            "call/tokens_BL": tokens.astype(np.int32),
            "call/token_types_BL": types.astype(np.int32),
            "call/key_mask_BL": mask.astype(np.int32), "logits": logits.astype(np.float32)}
  for name, tensor in model.state_dict().items():
    if name != "cls.predictions.decoder.weight" and not name.endswith("position_ids") \
        and not name.endswith("token_type_ids"):  # tied to the token table; buffers
      arrays[f"weight/{name}"] = tensor.numpy().astype(np.float32)
  path = out_dir / "bert.npz"
  np.savez_compressed(path, **arrays)
  return [path]
