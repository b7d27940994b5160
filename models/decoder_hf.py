"""Hugging Face GPT-2 and Llama checkpoints as decoder configs and parameters.

``config_from_hf`` reads ``GPT2Config.to_dict()`` or ``LlamaConfig.to_dict()`` (``model_type``
"gpt2" or "llama") into a ``TransformerConfig``; ``params_from_hf`` maps a state dict (names to
NumPy arrays, e.g. ``{k: v.numpy() for k, v in model.state_dict().items()}``) onto the
Decoder's parameter tree, as ``flax.linen.meta.unbox(Decoder(cfg).init(...)["params"])`` has
it: layers stacked on axis 0 under ``layers`` because the decoder scans them. Nothing here
imports torch, so a conversion needs only the arrays; ``tests/test_hf_parity.py`` checks the
logits against transformers' own on golden files. The way back, ``config_to_hf`` and
``params_to_hf`` (used by ``isoflop convert --to_hf``), writes a decoder that either
architecture expresses and refuses the rest (experts, muP, a layout of neither).

Conventions bridged here:
- GPT-2's Conv1D stores a weight as (in, out), like a Flax kernel; torch's Linear (Llama)
  stores (out, in) and is transposed.
- A projection's output features are heads-major (transformers views them as (..., H, K)), so
  a (D, H*K) kernel reshapes to our (D, H, K) and an (H*K, D) one to (H, K, D).
- RoPE is rotate-half in both (README's RoPE note): no permutation of query and key rows.
- Options the decoder does not have (RoPE frequency scaling, attention scaled per layer,
  cross-attention) are refused, never approximated.
"""

from typing import Any

import numpy as np

from isoflop.models import mlp as mlp_lib
from isoflop.models import transformer

MODEL_TYPES = ("gpt2", "llama")

# transformers' activation names -> ours. GPT-2's "gelu_new" is the tanh approximation; its
# plain "gelu" is the exact erf form.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                     "gelu": "gelu_exact", "relu": "relu", "silu": "silu", "swish": "silu",
                     "tanh": "tanh", "sigmoid": "sigmoid"}
# Llama's hidden_act gates its MLP: act(gate) * up.
_LLAMA_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_new": "geglu",
                      "gelu_pytorch_tanh": "geglu", "gelu_fast": "geglu", "relu": "reglu",
                      "tanh": "tanhglu", "sigmoid": "glu"}
# Buffers some transformers versions keep in the state dict: derived, not parameters.
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq",
            ".rotary_emb.original_inv_freq")


def _require(hf: dict, key: str, default: Any, expected: Any, why: str) -> None:
  value = hf.get(key, default)
  if value != expected:
    raise ValueError(f"{hf['model_type']} {key}={value!r} is not supported: {why}")


def _activation(hf: dict, key: str, default: str, table: dict[str, str]) -> str:
  name = hf.get(key, default)
  if name not in table:
    raise ValueError(f"{hf['model_type']} {key}={name!r} has no counterpart in the decoder; "
                     f"supported: {sorted(table)}")
  return table[name]


def _gpt2_config(hf: dict) -> transformer.TransformerConfig:
  _require(hf, "scale_attn_weights", True, True, "the decoder always scales by 1/sqrt(d_head)")
  _require(hf, "scale_attn_by_inverse_layer_idx", False, False,
           "the decoder scales every layer's attention alike")
  _require(hf, "add_cross_attention", False, False, "the decoder has no cross-attention")
  return transformer.TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=hf["n_embd"], n_layers=hf["n_layer"],
      n_heads=hf["n_head"], d_ff=hf.get("n_inner"), max_len=hf["n_positions"],
      positions="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      activation=_activation(hf, "activation_function", "gelu_new", _GPT2_ACTIVATIONS),
      use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True))


def _rope_theta(hf: dict) -> float:
  """rope_theta from wherever this transformers version put it: ``rope_parameters`` (5.x),
  ``rope_scaling`` (some 4.x), or the top level (older 4.x)."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = (params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
               or "default")
  if rope_type != "default":
    raise ValueError(f"llama rope_type={rope_type!r} is not supported: the decoder's RoPE has "
                     "no frequency scaling")
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(f"llama partial_rotary_factor={params['partial_rotary_factor']} is not "
                     "supported: the decoder rotates the whole head")
  for source in (params, scaling, hf):
    if source.get("rope_theta") is not None:
      return float(source["rope_theta"])
  return 10_000.0  # transformers' default when a config names none


def _llama_config(hf: dict) -> transformer.TransformerConfig:
  attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
  if attention_bias != mlp_bias:
    raise ValueError(f"llama attention_bias={attention_bias} with mlp_bias={mlp_bias} is not "
                     "supported: the decoder's use_bias sets both")
  d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d_model // n_heads
  return transformer.TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=d_model, n_layers=hf["num_hidden_layers"],
      n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
      d_head=None if head_dim * n_heads == d_model else head_dim,
      d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
      positions="rope", rope_theta=_rope_theta(hf), norm="rmsnorm",
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      activation=_activation(hf, "hidden_act", "silu", _LLAMA_ACTIVATIONS),
      use_bias=bool(attention_bias), tie_embeddings=hf.get("tie_word_embeddings", False))


def config_from_hf(hf_config: dict) -> transformer.TransformerConfig:
  """The decoder config of a transformers config dict (``PretrainedConfig.to_dict()``)."""
  model_type = hf_config.get("model_type")
  if model_type == "gpt2":
    return _gpt2_config(hf_config)
  if model_type == "llama":
    return _llama_config(hf_config)
  raise ValueError(f"model_type={model_type!r} is not mapped onto the decoder; choose one of "
                   f"{MODEL_TYPES}")


class _StateDict:
  """The checkpoint's arrays by name without the model prefix (``transformer.``, ``model.``),
  handed out once each with their shape checked; what is never taken is an error."""

  def __init__(self, weights: dict[str, np.ndarray], prefix: str):
    self.original = {name.removeprefix(prefix): name for name in weights}
    self.arrays = {name.removeprefix(prefix): np.asarray(a) for name, a in weights.items()}
    self.taken: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.arrays:
      raise ValueError(f"missing weight {name!r}; the checkpoint does not match its config")
    array = self.arrays[name]
    if array.shape != tuple(shape):
      raise ValueError(f"weight {self.original[name]!r} has shape {array.shape}, expected "
                       f"{tuple(shape)} for this config")
    self.taken.add(name)
    return array.astype(np.float32)

  def check_all_taken(self) -> None:
    left = sorted(n for n in self.arrays
                  if n not in self.taken and not ("." + n).endswith(_BUFFERS))
    if left:
      shown = ", ".join(self.original[n] for n in left[:4]) + (", ..." if len(left) > 4 else "")
      raise ValueError(f"{len(left)} weights have no place in the decoder ({shown}); the "
                       "config does not describe this checkpoint")


def _pad_rows(table_VD: np.ndarray, rows: int) -> np.ndarray:
  """Zero rows up to the padded vocabulary (their logits are masked anyway)."""
  return np.pad(table_VD, ((0, rows - table_VD.shape[0]), (0, 0)))


def _tied_or_head(sd: _StateDict, cfg, embedding_VD: np.ndarray) -> dict:
  """The readout: nothing when tied (an lm_head.weight copy must equal the table), else the
  head kernel (D, padded V) from torch's (V, D)."""
  shape = (cfg.vocab_size, cfg.d_model)
  if cfg.tie_embeddings:
    if "lm_head.weight" in sd.arrays:
      head_VD = sd.take("lm_head.weight", shape)
      if not np.array_equal(head_VD, embedding_VD[:cfg.vocab_size]):
        raise ValueError("lm_head.weight differs from the token embedding but the config ties "
                         "them; set tie_word_embeddings=False")
    return {}
  head_VD = sd.take("lm_head.weight", shape)
  return {"head": {"kernel": _pad_rows(head_VD, cfg.padded_vocab).T}}


def _gpt2_layer(sd: _StateDict, cfg, i: int) -> dict:
  d, h, k, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.ff_dim
  p = f"h.{i}."
  qkv_DC = sd.take(p + "attn.c_attn.weight", (d, 3 * h * k))  # Conv1D: (in, out)
  qkv_C = sd.take(p + "attn.c_attn.bias", (3 * h * k,))
  q_DF, k_DF, v_DF = np.split(qkv_DC, 3, axis=1)
  q_F, k_F, v_F = np.split(qkv_C, 3)
  attention = {
      "query_kernel": q_DF.reshape(d, h, k), "key_kernel": k_DF.reshape(d, h, k),
      "value_kernel": v_DF.reshape(d, h, k), "query_bias": q_F.reshape(h, k),
      "key_bias": k_F.reshape(h, k), "value_bias": v_F.reshape(h, k),
      "out_kernel": sd.take(p + "attn.c_proj.weight", (h * k, d)).reshape(h, k, d),
      "out_bias": sd.take(p + "attn.c_proj.bias", (d,)),
  }

  def norm(name):
    return {"scale": sd.take(p + name + ".weight", (d,)), "bias": sd.take(p + name + ".bias", (d,))}

  return {
      "attention_norm": norm("ln_1"), "attention": attention, "mlp_norm": norm("ln_2"),
      "mlp": {"wi": {"kernel": sd.take(p + "mlp.c_fc.weight", (d, f)),
                     "bias": sd.take(p + "mlp.c_fc.bias", (f,))},
              "wo": {"kernel": sd.take(p + "mlp.c_proj.weight", (f, d)),
                     "bias": sd.take(p + "mlp.c_proj.bias", (d,))}},
  }


def _gpt2_params(sd: _StateDict, cfg) -> dict:
  d = cfg.d_model
  embedding_VD = _pad_rows(sd.take("wte.weight", (cfg.vocab_size, d)), cfg.padded_vocab)
  return {
      "embed": {"embedding": embedding_VD},
      "position_embed": {"embedding": sd.take("wpe.weight", (cfg.max_len, d))},
      "layers": _stack([_gpt2_layer(sd, cfg, i) for i in range(cfg.n_layers)]),
      "final_norm": {"scale": sd.take("ln_f.weight", (d,)), "bias": sd.take("ln_f.bias", (d,))},
      **_tied_or_head(sd, cfg, embedding_VD),
  }


def _llama_layer(sd: _StateDict, cfg, i: int) -> dict:
  d, h, g, k, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim
  p = f"layers.{i}."

  def linear(name, n_out, n_in):  # torch Linear: (out, in) -> kernel (in, out)
    return sd.take(p + name + ".weight", (n_out, n_in)).T

  def bias(name, n_out):
    return sd.take(p + name + ".bias", (n_out,))

  attention = {
      "query_kernel": linear("self_attn.q_proj", h * k, d).reshape(d, h, k),
      "key_kernel": linear("self_attn.k_proj", g * k, d).reshape(d, g, k),
      "value_kernel": linear("self_attn.v_proj", g * k, d).reshape(d, g, k),
      "out_kernel": linear("self_attn.o_proj", d, h * k).reshape(h, k, d),
  }
  mlp = {"wi_gate": {"kernel": linear("mlp.gate_proj", f, d)},
         "wi_up": {"kernel": linear("mlp.up_proj", f, d)},
         "wo": {"kernel": linear("mlp.down_proj", d, f)}}
  if cfg.use_bias:
    attention.update(query_bias=bias("self_attn.q_proj", h * k).reshape(h, k),
                     key_bias=bias("self_attn.k_proj", g * k).reshape(g, k),
                     value_bias=bias("self_attn.v_proj", g * k).reshape(g, k),
                     out_bias=bias("self_attn.o_proj", d))
    for ours, theirs, n_out in (("wi_gate", "gate_proj", f), ("wi_up", "up_proj", f),
                                ("wo", "down_proj", d)):
      mlp[ours]["bias"] = bias("mlp." + theirs, n_out)
  return {
      "attention_norm": {"scale": sd.take(p + "input_layernorm.weight", (d,))},
      "attention": attention,
      "mlp_norm": {"scale": sd.take(p + "post_attention_layernorm.weight", (d,))},
      "mlp": mlp,
  }


def _llama_params(sd: _StateDict, cfg) -> dict:
  d = cfg.d_model
  embedding_VD = _pad_rows(sd.take("embed_tokens.weight", (cfg.vocab_size, d)),
                           cfg.padded_vocab)
  return {
      "embed": {"embedding": embedding_VD},
      "layers": _stack([_llama_layer(sd, cfg, i) for i in range(cfg.n_layers)]),
      "final_norm": {"scale": sd.take("norm.weight", (d,))},
      **_tied_or_head(sd, cfg, embedding_VD),
  }


def _stack(layers: list[dict]) -> dict:
  """Per-layer trees -> one tree with every leaf stacked on a leading layer axis (the scan's)."""
  first = layers[0]
  if isinstance(first, dict):
    return {key: _stack([layer[key] for layer in layers]) for key in first}
  return np.stack(layers)


def _layout(weights: dict[str, np.ndarray], cfg) -> str:
  """Which checkpoint the names are, checked against the config the params must fit."""
  names = list(weights)
  if any(n.endswith("wte.weight") for n in names):
    layout, fits = "gpt2", (cfg.positions == "learned" and cfg.norm == "layernorm"
                            and not mlp_lib.is_gated(cfg.activation) and cfg.use_bias)
  elif any(n.endswith("embed_tokens.weight") for n in names):
    layout, fits = "llama", (cfg.positions == "rope" and cfg.norm == "rmsnorm"
                             and mlp_lib.is_gated(cfg.activation))
  else:
    raise ValueError("the weights are neither GPT-2's (wte.weight) nor Llama's "
                     "(embed_tokens.weight); pass a GPT2 or Llama state dict")
  if not fits or cfg.num_experts:
    raise ValueError(f"the config (positions={cfg.positions!r}, norm={cfg.norm!r}, activation="
                     f"{cfg.activation!r}, num_experts={cfg.num_experts}) does not describe a "
                     f"{layout} checkpoint; build it with config_from_hf")
  return layout


def params_from_hf(weights: dict[str, np.ndarray], cfg: transformer.TransformerConfig) -> dict:
  """The Decoder's params (nested dict of float32 NumPy arrays) from a GPT-2 or Llama state
  dict. Missing, misshaped or left-over weights raise a one-line ValueError; a padded
  vocabulary (``cfg.vocab_pad_multiple``) gets zero rows, masked in the logits."""
  if _layout(weights, cfg) == "gpt2":
    sd = _StateDict(weights, "transformer.")
    params = _gpt2_params(sd, cfg)
  else:
    sd = _StateDict(weights, "model.")
    params = _llama_params(sd, cfg)
  sd.check_all_taken()
  return params


# The way back: a decoder config and parameters as a transformers config dict and state dict.
_GPT2_NAMES = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu",
               "tanh": "tanh", "sigmoid": "sigmoid"}
_LLAMA_NAMES = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "reglu": "relu",
                "tanhglu": "tanh", "glu": "sigmoid"}


def hf_layout(cfg: transformer.TransformerConfig) -> str:
  """"gpt2" or "llama": which transformers model expresses ``cfg``; a one-line ValueError
  naming the option neither has."""
  if cfg.num_experts:
    raise ValueError(f"model.num_experts={cfg.num_experts} (a mixture of experts) has no "
                     "counterpart in GPT-2 or Llama")
  if cfg.parametrization != "sp":
    raise ValueError(f"model.parametrization={cfg.parametrization!r} rescales attention and "
                     "logits in a way GPT-2 and Llama configs cannot state")
  if cfg.positions == "learned" and cfg.norm == "layernorm" and cfg.use_bias and (
      cfg.activation in _GPT2_NAMES):
    if cfg.kv_heads != cfg.n_heads or cfg.head_dim * cfg.n_heads != cfg.d_model:
      raise ValueError(f"GPT-2 has neither grouped-query attention (model.n_kv_heads="
                       f"{cfg.n_kv_heads}) nor a head size other than d_model / n_heads "
                       f"(model.d_head={cfg.d_head})")
    return "gpt2"
  if cfg.positions == "rope" and cfg.norm == "rmsnorm" and cfg.activation in _LLAMA_NAMES:
    return "llama"
  raise ValueError(f"a decoder with positions={cfg.positions!r}, norm={cfg.norm!r}, "
                   f"activation={cfg.activation!r}, use_bias={cfg.use_bias} is neither GPT-2 "
                   "(learned positions, LayerNorm with biases, a plain MLP) nor Llama (RoPE, "
                   "RMSNorm, a gated MLP)")


def config_to_hf(cfg: transformer.TransformerConfig) -> dict[str, Any]:
  """The ``GPT2Config`` or ``LlamaConfig`` fields of ``cfg`` (``config_from_hf`` reads them back
  to the same shapes); special token ids are the caller's. Dropout becomes GPT-2's residual and
  embedding dropout; Llama has none."""
  if hf_layout(cfg) == "gpt2":
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_len,
            "activation_function": _GPT2_NAMES[cfg.activation],
            "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std}
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
          "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.n_layers,
          "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
          "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_len,
          "hidden_act": _LLAMA_NAMES[cfg.activation], "rms_norm_eps": cfg.norm_eps,
          # transformers 5 reads rope_parameters, 4.x the top-level rope_theta: both are written
          "rope_parameters": rope, "rope_theta": cfg.rope_theta,
          "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "attention_dropout": 0.0,
          "pretraining_tp": 1, "tie_word_embeddings": cfg.tie_embeddings,
          "initializer_range": cfg.init_std}


def _head_to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  if cfg.tie_embeddings:
    return {}  # transformers ties lm_head to the token table
  return {"lm_head.weight": np.asarray(params["head"]["kernel"])[:, :cfg.vocab_size].T}


def _gpt2_to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  d, h, k = cfg.d_model, cfg.n_heads, cfg.head_dim
  layers = params["layers"]
  attention, mlp = layers["attention"], layers["mlp"]
  out = {"transformer.wte.weight": params["embed"]["embedding"][:cfg.vocab_size],
         "transformer.wpe.weight": params["position_embed"]["embedding"],
         "transformer.ln_f.weight": params["final_norm"]["scale"],
         "transformer.ln_f.bias": params["final_norm"]["bias"]}
  for i in range(cfg.n_layers):
    p = f"transformer.h.{i}."
    qkv_DC = np.concatenate([attention[f"{n}_kernel"][i].reshape(d, h * k)
                             for n in ("query", "key", "value")], axis=1)  # Conv1D: (in, out)
    qkv_C = np.concatenate([attention[f"{n}_bias"][i].reshape(h * k)
                            for n in ("query", "key", "value")])
    out.update({
        p + "ln_1.weight": layers["attention_norm"]["scale"][i],
        p + "ln_1.bias": layers["attention_norm"]["bias"][i],
        p + "attn.c_attn.weight": qkv_DC, p + "attn.c_attn.bias": qkv_C,
        p + "attn.c_proj.weight": attention["out_kernel"][i].reshape(h * k, d),
        p + "attn.c_proj.bias": attention["out_bias"][i],
        p + "ln_2.weight": layers["mlp_norm"]["scale"][i],
        p + "ln_2.bias": layers["mlp_norm"]["bias"][i],
        p + "mlp.c_fc.weight": mlp["wi"]["kernel"][i], p + "mlp.c_fc.bias": mlp["wi"]["bias"][i],
        p + "mlp.c_proj.weight": mlp["wo"]["kernel"][i],
        p + "mlp.c_proj.bias": mlp["wo"]["bias"][i]})
  return {**out, **_head_to_hf(params, cfg)}


def _llama_to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  d, h, g, k = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
  layers = params["layers"]
  attention, mlp = layers["attention"], layers["mlp"]
  out = {"model.embed_tokens.weight": params["embed"]["embedding"][:cfg.vocab_size],
         "model.norm.weight": params["final_norm"]["scale"]}
  projections = (("q_proj", "query", h), ("k_proj", "key", g), ("v_proj", "value", g))
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    for theirs, ours, heads in projections:  # kernel (D, heads, K) -> torch Linear (out, in)
      out[p + f"self_attn.{theirs}.weight"] = attention[f"{ours}_kernel"][i].reshape(
          d, heads * k).T
      if cfg.use_bias:
        out[p + f"self_attn.{theirs}.bias"] = attention[f"{ours}_bias"][i].reshape(heads * k)
    out[p + "self_attn.o_proj.weight"] = attention["out_kernel"][i].reshape(h * k, d).T
    for theirs, ours in (("gate_proj", "wi_gate"), ("up_proj", "wi_up"), ("down_proj", "wo")):
      out[p + f"mlp.{theirs}.weight"] = mlp[ours]["kernel"][i].T
      if cfg.use_bias:
        out[p + f"mlp.{theirs}.bias"] = mlp[ours]["bias"][i]
    if cfg.use_bias:
      out[p + "self_attn.o_proj.bias"] = attention["out_bias"][i]
    out[p + "input_layernorm.weight"] = layers["attention_norm"]["scale"][i]
    out[p + "post_attention_layernorm.weight"] = layers["mlp_norm"]["scale"][i]
  return {**out, **_head_to_hf(params, cfg)}


def params_to_hf(params: dict, cfg: transformer.TransformerConfig) -> dict[str, np.ndarray]:
  """The ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` state dict (names to NumPy arrays, in the
  parameters' dtype) of the Decoder's unboxed params; ``params_from_hf`` maps it back to the
  same arrays bit for bit. The padded vocabulary rows are dropped; a tied readout is left to
  transformers to tie."""
  params = _numpy(params)
  if hf_layout(cfg) == "gpt2":
    return _gpt2_to_hf(params, cfg)
  return _llama_to_hf(params, cfg)


def _numpy(tree):
  if isinstance(tree, dict):
    return {key: _numpy(value) for key, value in tree.items()}
  return np.asarray(tree)
