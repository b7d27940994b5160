"""Hugging Face ``BertForMaskedLM`` weights and config as the encoder's (no torch needed).

``config_from_hf`` reads a ``BertConfig.to_dict()``; ``params_from_hf`` maps a state dict of
NumPy arrays (Hugging Face names) to the unboxed parameter tree of ``Encoder``, layers stacked
on a leading axis as the scan keeps them. torch ``Linear`` weights are (out, in); ours are
(in, out), with attention's split into heads (D, H, K) and (H, K, D). ``config_to_hf`` and
``params_to_hf`` go the other way for an encoder BERT can express.
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


# The way back: the encoder as a BertForMaskedLM config dict and state dict.
_HF_NAMES = {ours: theirs for theirs, ours in _ACTIVATIONS.items()}


def config_to_hf(cfg: EncoderConfig) -> dict[str, Any]:
  """The ``BertConfig`` fields of ``cfg``, or a one-line ValueError naming what BERT lacks. An
  encoder without token types gets BERT's one type whose row is zero (adding nothing)."""
  fits = {"positions='learned'": cfg.positions == "learned",
          "norm='layernorm'": cfg.norm == "layernorm",
          "norm_position='post'": cfg.norm_position == "post",
          "mlm_transform=True": cfg.mlm_transform, "use_bias=True": cfg.use_bias,
          "readout_bias=True": cfg.readout_bias,
          "n_kv_heads=n_heads": cfg.kv_heads == cfg.n_heads,
          "d_head=d_model/n_heads": cfg.head_dim * cfg.n_heads == cfg.d_model,
          f"activation one of {sorted(_HF_NAMES)}": cfg.activation in _HF_NAMES}
  missing = [name for name, ok in fits.items() if not ok]
  if missing:
    raise ValueError(f"BERT needs {', '.join(missing)} (this encoder has positions="
                     f"{cfg.positions!r}, norm={cfg.norm!r}, norm_position={cfg.norm_position!r},"
                     f" activation={cfg.activation!r})")
  return {"model_type": "bert", "architectures": ["BertForMaskedLM"],
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
          "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
          "intermediate_size": cfg.ff_dim, "hidden_act": _HF_NAMES[cfg.activation],
          "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": 0.0,
          "max_position_embeddings": cfg.max_len, "type_vocab_size": max(cfg.type_vocab_size, 1),
          "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute",
          "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
          "is_decoder": False, "add_cross_attention": False}


def params_to_hf(params: dict[str, Any], cfg: EncoderConfig) -> dict[str, np.ndarray]:
  """The ``BertForMaskedLM`` state dict of the encoder's unboxed params, in their dtype;
  ``params_from_hf`` maps it back bit for bit. Padded vocabulary rows are dropped."""
  config_to_hf(cfg)  # refuses what BERT cannot express
  d, h, k, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.vocab_size
  get = lambda *path: np.asarray(_at(params, path))  # noqa: E731
  e = "bert.embeddings"
  types_TD = (get("type_embed", "embedding") if cfg.type_vocab_size
              else np.zeros((1, d), get("embed", "embedding").dtype))
  out = {f"{e}.word_embeddings.weight": get("embed", "embedding")[:v],
         f"{e}.position_embeddings.weight": get("position_embed", "embedding"),
         f"{e}.token_type_embeddings.weight": types_TD,
         f"{e}.LayerNorm.weight": get("embedding_norm", "scale"),
         f"{e}.LayerNorm.bias": get("embedding_norm", "bias"),
         "cls.predictions.transform.dense.weight": get("head_transform", "kernel").T,
         "cls.predictions.transform.dense.bias": get("head_transform", "bias"),
         "cls.predictions.transform.LayerNorm.weight": get("head_norm", "scale"),
         "cls.predictions.transform.LayerNorm.bias": get("head_norm", "bias"),
         "cls.predictions.bias": get("readout_bias")[:v],
         "cls.predictions.decoder.bias": get("readout_bias")[:v]}  # transformers ties the two
  if not cfg.tie_embeddings:
    out["cls.predictions.decoder.weight"] = get("head", "kernel")[:, :v].T
  attention = ("layers", "attention")
  for i in range(cfg.n_layers):
    p = f"bert.encoder.layer.{i}"
    for name in ("query", "key", "value"):  # (D, H, K) -> torch Linear (out, in)
      out[f"{p}.attention.self.{name}.weight"] = get(*attention, f"{name}_kernel")[i].reshape(
          d, h * k).T
      out[f"{p}.attention.self.{name}.bias"] = get(*attention, f"{name}_bias")[i].reshape(h * k)
    out[f"{p}.attention.output.dense.weight"] = get(*attention, "out_kernel")[i].reshape(
        h * k, d).T
    out[f"{p}.attention.output.dense.bias"] = get(*attention, "out_bias")[i]
    for theirs, ours in (("attention.output.LayerNorm", "attention_norm"),
                         ("output.LayerNorm", "mlp_norm")):
      out[f"{p}.{theirs}.weight"] = get("layers", ours, "scale")[i]
      out[f"{p}.{theirs}.bias"] = get("layers", ours, "bias")[i]
    for theirs, ours in (("intermediate.dense", "wi"), ("output.dense", "wo")):
      out[f"{p}.{theirs}.weight"] = get("layers", "mlp", ours, "kernel")[i].T
      out[f"{p}.{theirs}.bias"] = get("layers", "mlp", ours, "bias")[i]
  return out


def _at(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree
