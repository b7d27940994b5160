"""Normalization layers chosen by name."""

import flax.linen as nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, *, eps: float, use_bias: bool, dtype, param_dtype, name: str) -> nn.Module:
  """LayerNorm (GPT-2: scale and, with use_bias, a bias) or RMSNorm (Llama: scale only).

  The scale carries the logical axis name ``embed``; statistics are computed in float32.
  ``eps`` must match the checkpoint a model is loaded from (Llama-2 and -3: RMSNorm 1e-5;
  GPT-2: LayerNorm 1e-5).
  """
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if kind == "layernorm":
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    # Two-pass variance, E[(x - E[x])^2]: the fast E[x^2] - E[x]^2 cancels catastrophically
    # when activations share an offset large against their spread.
    return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                        scale_init=scale_init, bias_init=bias_init, use_fast_variance=False,
                        name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
                      name=name)
  raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def norm_param_count(kind: str, d_model: int, use_bias: bool) -> int:
  """Parameters of one norm layer of width d_model."""
  return d_model * (2 if kind == "layernorm" and use_bias else 1)

