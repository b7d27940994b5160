"""Hugging Face T5 (``T5ForConditionalGeneration``: t5-small .. t5-11b, T5.1.1, mT5) to the
encoder-decoder family, without torch: a config from ``T5Config.to_dict()`` and parameters from
a state dict of NumPy arrays (``{name: tensor.numpy()}`` or a safetensors file's arrays).

The mapping, per layer i (stacked along axis 0 for the scan):
  shared.weight                                   embed/embedding (rows padded to padded_vocab)
  encoder.block.i.layer.0.SelfAttention.{q,k,v}   encoder/layers/attention/{query,key,value}_kernel
  encoder.block.i.layer.0.SelfAttention.o         encoder/layers/attention/out_kernel
  encoder.block.i.layer.0.layer_norm              encoder/layers/attention_norm/scale
  encoder.block.i.layer.1.DenseReluDense.{wi|wi_0,wi_1,wo}  encoder/layers/mlp/{wi|wi_gate,wi_up,wo}
  encoder.block.i.layer.1.layer_norm              encoder/layers/mlp_norm/scale
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias   encoder/relative_bias
  decoder.block.i.layer.{0,1,2}                   decoder/layers/{self_attention, cross_attention
                                                  (EncDecAttention), mlp} and their norms
  {encoder,decoder}.final_layer_norm              {encoder,decoder}/final_norm/scale
  lm_head.weight (untied)                         head/kernel
A torch Linear stores (out, in); our kernels are (in, heads, head_dim) and (heads, head_dim,
out), so each is transposed and split.

Which readout: T5 (v1.0) ties it to the token table and scales the decoder output by
d_model**-0.5; T5.1.1 and mT5 read out through a separate ``lm_head`` without the scale. A
config from transformers before 5 says so as ``tie_word_embeddings``; from 5 on that key is
always True and ``scale_decoder_outputs`` carries the distinction, so it is read first.
``config_to_hf`` and ``params_to_hf`` go the other way, writing both keys.
"""

from typing import Any

import numpy as np

from isoflop.models import mlp as mlp_lib
from isoflop.models.encdec.model import EncDecConfig

MODEL_TYPES = ("t5", "mt5")
# Hugging Face's dense_act_fn -> ours: gelu_new is the tanh approximation, gelu the exact one.
PLAIN = {"relu": "relu", "gelu_new": "gelu", "gelu": "gelu_exact", "silu": "silu",
         "swish": "silu", "tanh": "tanh", "sigmoid": "sigmoid"}
GATED = {"relu": "reglu", "gelu_new": "geglu", "silu": "swiglu", "swish": "swiglu",
         "tanh": "tanhglu", "sigmoid": "glu"}


def _activation(hf_config: dict[str, Any]) -> str:
  projection = hf_config.get("feed_forward_proj", "relu")
  gated, _, name = projection.rpartition("-")
  if projection == "gated-gelu":  # Hugging Face reads T5.1.1's "gated-gelu" as gelu_new
    name = "gelu_new"
  table = GATED if gated == "gated" else PLAIN
  if gated not in ("", "gated") or name not in table:
    raise ValueError(f"feed_forward_proj={projection!r} has no counterpart here; known: "
                     f"{sorted(PLAIN)} and gated-{{{', '.join(sorted(GATED))}}}")
  return table[name]


def config_from_hf(hf_config: dict[str, Any], **changes) -> EncDecConfig:
  """The EncDecConfig of a ``T5Config.to_dict()``; ``changes`` override fields (dtype, remat)."""
  model_type = hf_config.get("model_type", "t5")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not a T5 layout this mapping knows "
                     f"({MODEL_TYPES}); umT5's per-layer relative bias has no counterpart here")
  tied = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
  layers = hf_config.get("num_layers", 6)
  fields = dict(
      vocab_size=hf_config["vocab_size"], d_model=hf_config["d_model"],
      d_head=hf_config["d_kv"], d_ff=hf_config["d_ff"], n_encoder_layers=layers,
      n_decoder_layers=hf_config.get("num_decoder_layers") or layers,
      n_heads=hf_config["num_heads"], positions="relative",
      relative_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf_config.get("relative_attention_max_distance", 128),
      norm="rmsnorm", norm_eps=hf_config.get("layer_norm_epsilon", 1e-6),
      activation=_activation(hf_config), use_bias=False, tie_embeddings=bool(tied),
      attention_scale=1.0, dropout=float(hf_config.get("dropout_rate", 0.0)))
  fields.update(changes)
  return EncDecConfig(**fields)


class _Weights:
  """The state dict, read by name with shape checks and one-line errors."""

  def __init__(self, weights: dict[str, np.ndarray]):
    self.weights = weights
    self.used: set[str] = set()

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    self.used.add(name)
    if name not in self.weights:
      raise ValueError(f"the T5 state dict has no {name!r}; is it a T5ForConditionalGeneration "
                       "checkpoint of the config it was loaded with?")
    array = np.asarray(self.weights[name], np.float32)
    if array.shape != shape:
      raise ValueError(f"{name} has shape {array.shape}, the config expects {shape}; load the "
                       "config that came with these weights")
    return array


def _attention(w: _Weights, prefix: str, cfg: EncDecConfig) -> dict[str, np.ndarray]:
  d, h, k = cfg.d_model, cfg.n_heads, cfg.head_dim
  kernels = {f"{ours}_kernel": w.get(f"{prefix}.{theirs}.weight", (h * k, d)).T.reshape(d, h, k)
             for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"))}
  kernels["out_kernel"] = w.get(f"{prefix}.o.weight", (d, h * k)).T.reshape(h, k, d)
  return kernels


def _mlp(w: _Weights, prefix: str, cfg: EncDecConfig) -> dict[str, Any]:
  d, f = cfg.d_model, cfg.ff_dim
  names = (("wi_gate", "wi_0"), ("wi_up", "wi_1")) if mlp_lib.is_gated(cfg.activation) else (
      ("wi", "wi"),)
  mlp = {ours: {"kernel": w.get(f"{prefix}.{theirs}.weight", (f, d)).T} for ours, theirs in names}
  mlp["wo"] = {"kernel": w.get(f"{prefix}.wo.weight", (d, f)).T}
  return mlp


def _norm(w: _Weights, name: str, cfg: EncDecConfig) -> dict[str, np.ndarray]:
  return {"scale": w.get(name, (cfg.d_model,))}


def _stack(layers: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-layer trees -> one tree with every leaf stacked along a leading layer axis."""
  if isinstance(layers[0], dict):
    return {key: _stack([layer[key] for layer in layers]) for key in layers[0]}
  return np.stack(layers)


def _encoder_layer(w: _Weights, i: int, cfg: EncDecConfig) -> dict[str, Any]:
  p = f"encoder.block.{i}.layer"
  return {"attention": _attention(w, f"{p}.0.SelfAttention", cfg),
          "attention_norm": _norm(w, f"{p}.0.layer_norm.weight", cfg),
          "mlp": _mlp(w, f"{p}.1.DenseReluDense", cfg),
          "mlp_norm": _norm(w, f"{p}.1.layer_norm.weight", cfg)}


def _decoder_layer(w: _Weights, i: int, cfg: EncDecConfig) -> dict[str, Any]:
  p = f"decoder.block.{i}.layer"
  return {"self_attention": _attention(w, f"{p}.0.SelfAttention", cfg),
          "self_attention_norm": _norm(w, f"{p}.0.layer_norm.weight", cfg),
          "cross_attention": _attention(w, f"{p}.1.EncDecAttention", cfg),
          "cross_attention_norm": _norm(w, f"{p}.1.layer_norm.weight", cfg),
          "mlp": _mlp(w, f"{p}.2.DenseReluDense", cfg),
          "mlp_norm": _norm(w, f"{p}.2.layer_norm.weight", cfg)}


def _pad_rows(table_VD: np.ndarray, rows: int) -> np.ndarray:
  """Zero rows up to padded_vocab: padded ids are never looked up and their logits masked."""
  return np.pad(table_VD, ((0, rows - table_VD.shape[0]), (0, 0)))


def params_from_hf(weights: dict[str, np.ndarray], cfg: EncDecConfig) -> dict[str, Any]:
  """Our parameter tree (plain nested dicts of float32 arrays, shaped as ``EncoderDecoder(cfg)``
  initializes them, unboxed) from a T5 state dict."""
  if cfg.positions != "relative" or cfg.use_bias or cfg.norm != "rmsnorm":
    raise ValueError("a T5 checkpoint needs positions='relative', use_bias=False and "
                     "norm='rmsnorm'; build the config with hf.config_from_hf")
  w = _Weights(weights)
  d, v = cfg.d_model, cfg.vocab_size
  shared = "shared.weight" if "shared.weight" in weights else "encoder.embed_tokens.weight"
  stacks = {}
  for stack, n_layers, layer in (("encoder", cfg.n_encoder_layers, _encoder_layer),
                                 ("decoder", cfg.n_decoder_layers, _decoder_layer)):
    stacks[stack] = {
        "relative_bias": w.get(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias"
                               ".weight", (cfg.relative_buckets, cfg.n_heads)),
        "layers": _stack([layer(w, i, cfg) for i in range(n_layers)]),
        "final_norm": _norm(w, f"{stack}.final_layer_norm.weight", cfg)}
  params = {"embed": {"embedding": _pad_rows(w.get(shared, (v, d)), cfg.padded_vocab)},
            **stacks}
  if not cfg.tie_embeddings:  # transformers 5 may tie lm_head anyway: then it is the table
    head = "lm_head.weight" if "lm_head.weight" in weights else shared
    params["head"] = {"kernel": _pad_rows(w.get(head, (v, d)), cfg.padded_vocab).T}
  # Copies of the shared table (and, tied, the readout that is that table).
  copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "shared.weight",
            *(("lm_head.weight",) if cfg.tie_embeddings else ())}
  left_over = sorted(set(weights) - w.used - copies)
  if left_over:
    raise ValueError(f"{len(left_over)} weights have no place in the encoder-decoder, e.g. "
                     f"{left_over[:3]}; is this a T5 checkpoint of a layout this mapping knows "
                     "(umT5 has a relative bias in every layer, T5 only in the first)?")
  return params


# The way back: the encoder-decoder as a T5ForConditionalGeneration config and state dict.
_HF_PLAIN = {"relu": "relu", "gelu": "gelu_new", "gelu_exact": "gelu", "silu": "silu",
             "tanh": "tanh", "sigmoid": "sigmoid"}
_HF_GATED = {ours: f"gated-{theirs}" for theirs, ours in GATED.items()
             if theirs not in ("swish", "gelu_new")} | {"geglu": "gated-gelu"}


def config_to_hf(cfg: EncDecConfig) -> dict[str, Any]:
  """The ``T5Config`` fields of ``cfg``, or a one-line ValueError naming what T5 lacks. Tied
  (T5 v1.0) scales the decoder output by d_model**-0.5; untied (T5.1.1) reads out through
  ``lm_head`` unscaled: ``tie_word_embeddings`` says which to transformers 4, and
  ``scale_decoder_outputs`` to transformers 5."""
  if cfg.positions != "relative" or cfg.norm != "rmsnorm" or cfg.use_bias:
    raise ValueError(f"T5 needs positions='relative', norm='rmsnorm', use_bias=False (this "
                     f"model has positions={cfg.positions!r}, norm={cfg.norm!r}, use_bias="
                     f"{cfg.use_bias})")
  projection = _HF_GATED.get(cfg.activation, _HF_PLAIN.get(cfg.activation))
  if projection is None:
    raise ValueError(f"activation={cfg.activation!r} has no T5 feed_forward_proj; use one of "
                     f"{sorted(_HF_PLAIN) + sorted(_HF_GATED)}")
  return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
          "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim,
          "d_ff": cfg.ff_dim, "num_layers": cfg.n_encoder_layers,
          "num_decoder_layers": cfg.n_decoder_layers, "num_heads": cfg.n_heads,
          "relative_attention_num_buckets": cfg.relative_buckets,
          "relative_attention_max_distance": cfg.relative_max_distance,
          "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps,
          "feed_forward_proj": projection, "tie_word_embeddings": cfg.tie_embeddings,
          "scale_decoder_outputs": cfg.tie_embeddings, "is_encoder_decoder": True,
          "initializer_factor": 1.0}


def _attention_to_hf(attention: dict, i: int, prefix: str, cfg: EncDecConfig,
                     query_scale: float) -> dict[str, np.ndarray]:
  d, h, k = cfg.d_model, cfg.n_heads, cfg.head_dim
  out = {}
  for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
    kernel_DHK = np.asarray(attention[f"{ours}_kernel"][i])
    if ours == "query" and query_scale != 1.0:  # T5 never scales q.k: ours goes into W_q
      kernel_DHK = kernel_DHK * np.asarray(query_scale, kernel_DHK.dtype)
    out[f"{prefix}.{theirs}.weight"] = kernel_DHK.reshape(d, h * k).T
  out[f"{prefix}.o.weight"] = np.asarray(attention["out_kernel"][i]).reshape(h * k, d).T
  return out


def _mlp_to_hf(mlp: dict, i: int, prefix: str, cfg: EncDecConfig) -> dict[str, np.ndarray]:
  names = (("wi_gate", "wi_0"), ("wi_up", "wi_1")) if mlp_lib.is_gated(cfg.activation) else (
      ("wi", "wi"),)
  return {f"{prefix}.{theirs}.weight": np.asarray(mlp[ours]["kernel"][i]).T
          for ours, theirs in names + (("wo", "wo"),)}


def params_to_hf(params: dict[str, Any], cfg: EncDecConfig) -> dict[str, np.ndarray]:
  """The ``T5ForConditionalGeneration`` state dict of our unboxed params, in their dtype;
  ``params_from_hf`` maps it back bit for bit when ``attention_scale=1.0`` (T5's). Another
  attention scale is folded into the query kernels, the one change of values here. Padded
  vocabulary rows are dropped; the copies of the token table are left to transformers."""
  config_to_hf(cfg)  # refuses what T5 cannot express
  v = cfg.vocab_size
  out = {"shared.weight": np.asarray(params["embed"]["embedding"])[:v]}
  for stack, n_layers in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
    tree = params[stack]
    layers = tree["layers"]
    out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = np.asarray(
        tree["relative_bias"])
    out[f"{stack}.final_layer_norm.weight"] = np.asarray(tree["final_norm"]["scale"])
    for i in range(n_layers):
      p = f"{stack}.block.{i}.layer"
      if stack == "encoder":
        parts = (("attention", "0.SelfAttention", "attention_norm"),)
        mlp_part, mlp_norm = "1", "mlp_norm"
      else:
        parts = (("self_attention", "0.SelfAttention", "self_attention_norm"),
                 ("cross_attention", "1.EncDecAttention", "cross_attention_norm"))
        mlp_part, mlp_norm = "2", "mlp_norm"
      for ours, theirs, norm in parts:
        out.update(_attention_to_hf(layers[ours], i, f"{p}.{theirs}", cfg, cfg.scale))
        out[f"{p}.{theirs.split('.')[0]}.layer_norm.weight"] = np.asarray(
            layers[norm]["scale"][i])
      out.update(_mlp_to_hf(layers["mlp"], i, f"{p}.{mlp_part}.DenseReluDense", cfg))
      out[f"{p}.{mlp_part}.layer_norm.weight"] = np.asarray(layers[mlp_norm]["scale"][i])
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.asarray(params["head"]["kernel"])[:, :v].T
  return out
