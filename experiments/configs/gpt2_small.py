"""GPT-2 small (Radford et al. 2019): 124M parameters, T = 1024, tied embeddings."""

from isoflop.experiments.configs import base


def get_config():
  c = base.get_config()
  c.steps = 5000
  c.batch_size = 32
  c.seq_len = 1024
  c.log_every = 50
  m = c.model
  m.vocab_size = 50257
  m.d_model = 768
  m.n_layers = 12
  m.n_heads = 12
  m.positions = "learned"
  # GPT-2's 1,024 learned positions, fixed: a longer seq_len is refused rather than silently
  # growing the position table (which would no longer be GPT-2's shape or 124M parameters).
  m.max_len = 1024
  m.norm = "layernorm"
  m.activation = "gelu"
  m.use_bias = True
  m.tie_embeddings = True
  m.dtype = "bfloat16"
  c.optimizer.lr = 6e-4
  c.optimizer.warmup_steps = 200
  return c
