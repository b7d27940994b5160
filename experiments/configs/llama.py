"""Llama-shaped decoders (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, no biases, untied.

Shared by the size files ``llama_150m.py``, ``llama_400m.py`` and ``llama_1b.py``.
"""

from isoflop.experiments.configs import base


def llama_config(*, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, d_ff: int,
                 seq_len: int = 2048, vocab_size: int = 32_000):
  c = base.get_config()
  c.steps = 10_000
  c.batch_size = 64
  c.seq_len = seq_len
  c.log_every = 50
  m = c.model
  m.vocab_size = vocab_size
  m.d_model = d_model
  m.n_layers = n_layers
  m.n_heads = n_heads
  m.n_kv_heads = n_kv_heads
  m.d_ff = d_ff
  m.positions = "rope"
  m.norm = "rmsnorm"
  m.norm_eps = 1e-6
  m.activation = "swiglu"
  m.use_bias = False
  m.tie_embeddings = False
  m.dtype = "bfloat16"
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 500
  return c
