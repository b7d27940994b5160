"""The feed-forward block, with its activation chosen by name (plain or gated)."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import logical

# Plain activations: y = W_out act(W_in x).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
# Gated (GLU-family, Shazeer 2020): y = W_out (act(W_gate x) * W_up x).
GATED_ACTIVATIONS: dict[str, str] = {
    "swiglu": "silu",
    "geglu": "gelu",
    "reglu": "relu",
    "tanhglu": "tanh",
    "glu": "sigmoid",
}


def is_gated(activation: str) -> bool:
  return activation in GATED_ACTIVATIONS


def check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS and activation not in GATED_ACTIVATIONS:
    known = sorted(ACTIVATIONS) + sorted(GATED_ACTIVATIONS)
    raise ValueError(f"unknown activation {activation!r}; choose one of {known}")


class Mlp(nn.Module):
  """x_BLD -> x_BLD through a hidden width d_ff (logical axis ``mlp``)."""

  d_ff: int
  activation: str
  use_bias: bool
  kernel_init: Callable
  out_kernel_init: Callable
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  def _dense(self, features, names, init, name):
    return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    kernel_init=nn.with_logical_partitioning(init, names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                    name=name)

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    d_model = x_BLD.shape[-1]
    if is_gated(self.activation):
      act = ACTIVATIONS[GATED_ACTIVATIONS[self.activation]]
      gate_BLF = self._dense(self.d_ff, ("embed", "mlp"), self.kernel_init, "wi_gate")(x_BLD)
      up_BLF = self._dense(self.d_ff, ("embed", "mlp"), self.kernel_init, "wi_up")(x_BLD)
      h_BLF = act(gate_BLF) * up_BLF
    else:
      h_BLF = ACTIVATIONS[self.activation](
          self._dense(self.d_ff, ("embed", "mlp"), self.kernel_init, "wi")(x_BLD))
    h_BLF = logical.constrain(h_BLF, ("batch", "length", "mlp"))
    return self._dense(d_model, ("mlp", "embed"), self.out_kernel_init, "wo")(h_BLF)
