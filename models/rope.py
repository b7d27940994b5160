"""Rotary position embeddings (Su et al. 2021), rotate-half layout as in GPT-NeoX and Llama."""

import jax
import jax.numpy as jnp


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
  """Rotates pairs (i, i + K/2) of each head vector by position * theta^(-2i/K).

  Computed in float32 and cast back, so bf16 runs keep exact angles at long positions.
  """
  head_dim = x_BLHK.shape[-1]
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
  half = head_dim // 2
  inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BLF = positions_BL.astype(jnp.float32)[..., None] * inv_freq_F
  sin_BL1F = jnp.sin(angles_BLF)[:, :, None, :]
  cos_BL1F = jnp.cos(angles_BLF)[:, :, None, :]
  x = x_BLHK.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([x1 * cos_BL1F - x2 * sin_BL1F, x2 * cos_BL1F + x1 * sin_BL1F], -1)
  return rotated.astype(x_BLHK.dtype)
