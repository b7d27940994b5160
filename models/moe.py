"""A routed mixture-of-experts feed-forward layer (Shazeer et al. 2017; GShard; Switch).

Each token's router picks ``k`` of ``E`` experts (softmax over experts in float32, top-k, the k
weights renormalized to sum to one). Each expert takes at most C tokens of a sequence,
C = ceil(capacity_factor * k * L / E); a token's choices beyond an expert's capacity are
dropped (its residual passes through), first choices taking priority over second ones, then
earlier tokens over later ones. capacity_factor = 0 means no capacity limit (C = L, no drops).
Capacity is per sequence, so which tokens are dropped does not depend on how the batch is
sharded: a run on one device and on an (data, expert, tensor) mesh compute the same thing.

Dispatch and combine are one-hot einsums into expert-major buffers ``[E, B, C, D]`` whose
expert axis carries the logical name ``expert``: with ``mesh.expert > 1`` the experts' weights
are sharded and XLA moves tokens to them (all-to-all). The einsums cost 2 * E * C * D FLOPs per
token each way, about 2 * capacity_factor * k * L * D: small against the experts' matmuls while
L is not much larger than the expert width.

Losses (sown into ``families.AUX_LOSS``, already multiplied by their coefficient):
  router_balance  Switch Transformer's load balancing, E * sum_e f_e * P_e, f_e the fraction of
                  the (token, choice) assignments routed to e, P_e its mean router probability
                  (1 at perfect balance, E when one expert takes everything)
  router_z        ST-MoE's z-loss, mean over tokens of logsumexp(router logits)^2
Metrics (``families.AUX_METRICS``, averaged over MoE layers): ``router_balance_loss`` and
``router_z_loss`` before their coefficients, and ``dropped_fraction`` of assignments dropped.

Shared experts (DeepSeekMoE) are ``shared_experts`` more experts of the same width that every
token uses, computed as one dense MLP of width shared_experts * d_ff.
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from isoflop.models import families, logical
from isoflop.models import mlp as mlp_lib


def capacity(capacity_factor: float, experts_per_token: int, seq_len: int,
             num_experts: int) -> int:
  """Tokens each expert takes from one sequence (at most the sequence's length)."""
  if capacity_factor <= 0:
    return seq_len
  return min(seq_len, math.ceil(capacity_factor * experts_per_token * seq_len / num_experts))


def route(logits_BLE: jax.Array, experts_per_token: int, capacity_per_sequence: int):
  """(dispatch_BLEC, combine_BLEC, stats) of router logits (float32).

  dispatch is 1 where token (b, l) takes slot c of expert e; combine is that times the
  token's renormalized router weight for e."""
  num_experts = logits_BLE.shape[-1]
  probs_BLE = jax.nn.softmax(logits_BLE, axis=-1)
  top_p_BLK, top_e_BLK = jax.lax.top_k(probs_BLE, experts_per_token)
  weights_BLK = top_p_BLK / jnp.sum(top_p_BLK, axis=-1, keepdims=True)
  chosen_BLKE = jax.nn.one_hot(top_e_BLK, num_experts, dtype=jnp.int32)
  # Slot of each assignment within its expert: count earlier assignments, all first choices
  # of the sequence ahead of all second choices.
  B, L, K, E = chosen_BLKE.shape
  chosen_BNE = jnp.transpose(chosen_BLKE, (0, 2, 1, 3)).reshape(B, K * L, E)
  slot_BNE = jnp.cumsum(chosen_BNE, axis=1) - chosen_BNE
  slot_BLKE = jnp.transpose(slot_BNE.reshape(B, K, L, E), (0, 2, 1, 3))
  kept_BLKE = chosen_BLKE * (slot_BLKE < capacity_per_sequence)
  slot_BLK = jnp.sum(slot_BLKE * chosen_BLKE, axis=-1)
  slot_onehot_BLKC = jax.nn.one_hot(slot_BLK, capacity_per_sequence, dtype=jnp.float32)
  kept_BLKE = kept_BLKE.astype(jnp.float32)
  dispatch_BLEC = jnp.einsum("blke,blkc->blec", kept_BLKE, slot_onehot_BLKC)
  combine_BLEC = jnp.einsum("blke,blk,blkc->blec", kept_BLKE, weights_BLK, slot_onehot_BLKC)

  assigned_E = jnp.mean(jnp.sum(chosen_BLKE, axis=2).astype(jnp.float32), axis=(0, 1))
  fraction_E = assigned_E / experts_per_token
  mean_prob_E = jnp.mean(probs_BLE, axis=(0, 1))
  stats = {
      "router_balance_loss": num_experts * jnp.sum(fraction_E * mean_prob_E),
      "router_z_loss": jnp.mean(jax.nn.logsumexp(logits_BLE, axis=-1) ** 2),
      "dropped_fraction": 1.0 - jnp.sum(kept_BLKE) / (B * L * K),
  }
  return dispatch_BLEC, combine_BLEC, stats


class MoeMlp(nn.Module):
  """x_BLD -> x_BLD through ``num_experts`` expert MLPs of width ``d_ff``, k per token."""

  num_experts: int
  experts_per_token: int
  d_ff: int
  activation: str
  use_bias: bool
  capacity_factor: float
  shared_experts: int
  router_aux_loss: float
  router_z_loss: float
  kernel_init: Callable
  out_kernel_init: Callable
  router_init: Callable
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  def _param(self, name, init, names, shape):
    return self.param(name, nn.with_logical_partitioning(init, names), shape, self.param_dtype)

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    B, L, D = x_BLD.shape
    E, F = self.num_experts, self.d_ff
    router_DE = self._param("router", self.router_init, ("embed", "expert"), (D, E))
    logits_BLE = jnp.einsum("bld,de->ble", x_BLD.astype(jnp.float32),
                            router_DE.astype(jnp.float32))
    C = capacity(self.capacity_factor, self.experts_per_token, L, E)
    dispatch_BLEC, combine_BLEC, stats = route(logits_BLE, self.experts_per_token, C)
    for name, value in stats.items():
      self.sow(families.AUX_METRICS, name, value)
    if self.router_aux_loss:
      self.sow(families.AUX_LOSS, "router_balance",
               self.router_aux_loss * stats["router_balance_loss"])
    if self.router_z_loss:
      self.sow(families.AUX_LOSS, "router_z", self.router_z_loss * stats["router_z_loss"])

    x_EBCD = jnp.einsum("blec,bld->ebcd", dispatch_BLEC.astype(self.dtype),
                        x_BLD.astype(self.dtype))
    x_EBCD = logical.constrain(x_EBCD, ("expert", "batch", None, "embed"))

    def expert_dense(name, names, shape, init, h, spec):
      kernel = self._param(name, init, names, shape).astype(self.dtype)
      h = jnp.einsum(spec, h, kernel)
      if self.use_bias:
        bias = self._param(f"{name}_bias", nn.initializers.zeros, (names[0], names[2]),
                           (shape[0], shape[2]))
        h = h + bias.astype(self.dtype)[:, None, None, :]
      return h

    wi = ("expert", "embed", "mlp")
    if mlp_lib.is_gated(self.activation):
      act = mlp_lib.ACTIVATIONS[mlp_lib.GATED_ACTIVATIONS[self.activation]]
      gate_EBCF = expert_dense("wi_gate", wi, (E, D, F), self.kernel_init, x_EBCD,
                               "ebcd,edf->ebcf")
      up_EBCF = expert_dense("wi_up", wi, (E, D, F), self.kernel_init, x_EBCD, "ebcd,edf->ebcf")
      h_EBCF = act(gate_EBCF) * up_EBCF
    else:
      h_EBCF = mlp_lib.ACTIVATIONS[self.activation](
          expert_dense("wi", wi, (E, D, F), self.kernel_init, x_EBCD, "ebcd,edf->ebcf"))
    h_EBCF = logical.constrain(h_EBCF, ("expert", "batch", None, "mlp"))
    y_EBCD = expert_dense("wo", ("expert", "mlp", "embed"), (E, F, D), self.out_kernel_init,
                          h_EBCF, "ebcf,efd->ebcd")
    y_EBCD = logical.constrain(y_EBCD, ("expert", "batch", None, "embed"))
    y_BLD = jnp.einsum("blec,ebcd->bld", combine_BLEC.astype(self.dtype), y_EBCD)
    y_BLD = logical.constrain(y_BLD, ("batch", "length", "embed"))

    if self.shared_experts:
      y_BLD = y_BLD + mlp_lib.Mlp(
          d_ff=self.shared_experts * F, activation=self.activation, use_bias=self.use_bias,
          kernel_init=self.kernel_init, out_kernel_init=self.out_kernel_init, dtype=self.dtype,
          param_dtype=self.param_dtype, name="shared")(x_BLD)
    return y_BLD
