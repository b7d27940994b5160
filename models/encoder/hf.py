"""Hugging Face ``BertForMaskedLM`` weights and config as the encoder's (no torch needed).

``config_from_hf`` reads a ``BertConfig.to_dict()``; ``params_from_hf`` maps a state dict of
NumPy arrays (Hugging Face names) to the unboxed parameter tree of ``Encoder``, layers stacked
on a leading axis as the scan keeps them. torch ``Linear`` weights are (out, in); ours are
(in, out), with attention's split into heads (D, H, K) and (H, K, D).
"""

from typing import Any

import numpy as np

from isoflop.models.encoder.model import EncoderConfig

_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "relu": "relu", "silu": "silu"}


def config_from_hf(hf: dict[str, Any]) -> EncoderConfig:
  if hf.get("model_type") != "bert":
    raise ValueError(f"model_type {hf.get('model_type')!r} is not BERT; the encoder maps "
                     "BertForMaskedLM checkpoints")
  if hf.get("hidden_act") not in _ACTIVATIONS:
    raise ValueError(f"BERT hidden_act {hf.get('hidden_act')!r} has no counterpart; one of "
                     f"{sorted(_ACTIVATIONS)}")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("only BERT's absolute (learned) positions map to the encoder")
  return EncoderConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
      n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
      max_len=hf["max_position_embeddings"], positions="learned",
      type_vocab_size=hf["type_vocab_size"], norm="layernorm", norm_eps=hf["layer_norm_eps"],
      norm_position="post", activation=_ACTIVATIONS[hf["hidden_act"]], use_bias=True,
      mlm_transform=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
      readout_bias=True, dropout=0.0)


class _Weights:
  """Reads named arrays, checking each exists and has the shape the encoder needs."""

  def __init__(self, weights: dict[str, np.ndarray]):
    self.weights = weights

  def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.weights:
      raise ValueError(f"the checkpoint has no weight {name!r}; is it a BertForMaskedLM?")
    array = np.asarray(self.weights[name], np.float32)
    if array.shape != tuple(shape):
      raise ValueError(f"weight {name} has shape {array.shape}, the config needs {shape}")
    return array


def _norm(get, prefix: str, d: int) -> dict[str, np.ndarray]:
  return {"scale": get(f"{prefix}.weight", (d,)), "bias": get(f"{prefix}.bias", (d,))}


def _layer(get, i: int, cfg: EncoderConfig) -> dict[str, Any]:
  d, h, k, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.ff_dim
  p = f"bert.encoder.layer.{i}"
  attention = {}
  for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
    attention[f"{ours}_kernel"] = get(f"{p}.attention.self.{theirs}.weight",
                                      (h * k, d)).T.reshape(d, h, k)
    attention[f"{ours}_bias"] = get(f"{p}.attention.self.{theirs}.bias", (h * k,)).reshape(h, k)
  attention["out_kernel"] = get(f"{p}.attention.output.dense.weight", (d, h * k)).T.reshape(h, k, d)
  attention["out_bias"] = get(f"{p}.attention.output.dense.bias", (d,))
  mlp = {"wi": {"kernel": get(f"{p}.intermediate.dense.weight", (f, d)).T,
                "bias": get(f"{p}.intermediate.dense.bias", (f,))},
         "wo": {"kernel": get(f"{p}.output.dense.weight", (d, f)).T,
                "bias": get(f"{p}.output.dense.bias", (d,))}}
  return {"attention": attention, "attention_norm": _norm(get, f"{p}.attention.output.LayerNorm", d),
          "mlp": mlp, "mlp_norm": _norm(get, f"{p}.output.LayerNorm", d)}


def params_from_hf(weights: dict[str, np.ndarray], cfg: EncoderConfig) -> dict[str, Any]:
  """The encoder's parameters (plain float32 arrays) from a BertForMaskedLM state dict."""
  get = _Weights(weights)
  d, v = cfg.d_model, cfg.vocab_size
  if cfg.padded_vocab != v:
    raise ValueError("map Hugging Face weights into a config without vocab_pad_multiple")
  e = "bert.embeddings"
  layers = [_layer(get, i, cfg) for i in range(cfg.n_layers)]
  stacked = _stack(layers)
  params = {
      "embed": {"embedding": get(f"{e}.word_embeddings.weight", (v, d))},
      "position_embed": {"embedding": get(f"{e}.position_embeddings.weight", (cfg.max_len, d))},
      "type_embed": {"embedding": get(f"{e}.token_type_embeddings.weight",
                                      (cfg.type_vocab_size, d))},
      "embedding_norm": _norm(get, f"{e}.LayerNorm", d),
      "layers": stacked,
      "head_transform": {"kernel": get("cls.predictions.transform.dense.weight", (d, d)).T,
                         "bias": get("cls.predictions.transform.dense.bias", (d,))},
      "head_norm": _norm(get, "cls.predictions.transform.LayerNorm", d),
      "readout_bias": get("cls.predictions.bias", (v,)),
  }
  if not cfg.tie_embeddings:
    params["head"] = {"kernel": get("cls.predictions.decoder.weight", (v, d)).T}
  return params


def _stack(trees: list[Any]) -> Any:
  if isinstance(trees[0], dict):
    return {key: _stack([t[key] for t in trees]) for key in trees[0]}
  return np.stack(trees)
